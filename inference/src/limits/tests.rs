use std::path::Path;

use super::*;
use crate::plan::{ModelFacts, Overrides, plan};

fn t(name: &str, dtype: &str, shape: &[i64]) -> TensorInfo {
    TensorInfo { name: name.into(), dtype: dtype.into(), shape: shape.to_vec() }
}

fn yolo(input: &[i64], dtype: &str) -> (ModelPlan, Vec<TensorInfo>) {
    let outputs = vec![t("output0", "float32", &[1, 84, 8400])];
    let facts = ModelFacts {
        inputs: vec![t("images", dtype, input)],
        outputs: outputs.clone(),
        metadata: Default::default(),
        manifest: None,
        labels_txt: None,
    };
    (plan(&facts, &Overrides::default()).expect("plan"), outputs)
}

const ONE: Loading = Loading { weights: 12 << 20, copies: 1, batch: 1, cpu: true };

fn gib(n: u64) -> Available {
    Available { bytes: n << 30, how: "test".into() }
}

#[test]
fn refuses_a_huge_input_naming_its_size_the_limit_and_the_fix() {
    let (p, outs) = yolo(&[1, 3, 40000, 40000], "float32");
    let e = check(&p, &outs, ONE, &ModelLimits::default(), Some(&gib(1 << 10))).unwrap_err();
    for part in
        ["images is 40000x40000", "4800000000 values", "17.9 GiB a frame as float32", "16384 pixels a side"]
    {
        assert!(e.contains(part), "{part:?} not in: {e}");
    }
    assert!(e.contains("imgsz=640") && e.contains("max_input_side"), "says what to do: {e}");
    // Refused on the limits alone: no memory figure needed.
    assert!(check(&p, &outs, ONE, &ModelLimits::default(), None).is_err());
}

#[test]
fn takes_an_8k_frame_whole_but_not_a_larger_area() {
    let (p, outs) = yolo(&[1, 3, 4320, 7680], "uint8");
    assert_eq!(check(&p, &outs, ONE, &ModelLimits::default(), None), Ok(()));
    let (p, outs) = yolo(&[1, 3, 12000, 12000], "uint8");
    let e = check(&p, &outs, ONE, &ModelLimits::default(), None).unwrap_err();
    assert!(e.contains("12000x12000") && e.contains("67.1 megapixels"), "{e}");
    let raised = ModelLimits { max_input_pixels: 12000 * 12000, ..ModelLimits::default() };
    assert_eq!(check(&p, &outs, ONE, &raised, None), Ok(()));
}

#[test]
fn refuses_a_fixed_batch_beyond_the_limit() {
    assert_eq!(check_fixed_batch("images", 32, &ModelLimits::default()), Ok(()));
    let e = check_fixed_batch("images", 1000, &ModelLimits::default()).unwrap_err();
    assert!(e.contains("fixed batch of 1000") && e.contains("at most 32") && e.contains("batch=1"), "{e}");
}

#[test]
fn refuses_a_model_whose_estimate_does_not_fit_the_memory_left() {
    let (p, outs) = yolo(&[1, 3, 640, 640], "float32");
    // 640x640 float32: 4.7 MiB a frame, ~37.5 MiB of working memory, 12 MiB
    // of weights, 2 x 2.7 MiB of outputs: about 60 MiB for one copy.
    let tight = Available { bytes: 60 << 20, how: "MemAvailable 60.0 MiB".into() };
    let e = check(&p, &outs, ONE, &ModelLimits::default(), Some(&tight)).unwrap_err();
    for part in
        ["needs about 5", "weights 12.0 MiB x 1", "input 4.7 MiB a frame", "60.0 MiB available", "80 %"]
    {
        assert!(e.contains(part), "{part:?} not in: {e}");
    }
    assert_eq!(check(&p, &outs, ONE, &ModelLimits::default(), Some(&gib(1))), Ok(()));
    // Copies and batches multiply it; a GPU keeps the working memory.
    let four = Loading { copies: 4, batch: 8, ..ONE };
    assert!(check(&p, &outs, four, &ModelLimits::default(), Some(&gib(1))).is_err());
    let gpu = Loading { cpu: false, ..ONE };
    let roomy_for_gpu = Available { bytes: 40 << 20, how: "test".into() };
    assert_eq!(check(&p, &outs, gpu, &ModelLimits::default(), Some(&roomy_for_gpu)), Ok(()));
    let off = ModelLimits { memory_share: 0.0, ..ModelLimits::default() };
    assert_eq!(check(&p, &outs, four, &off, Some(&tight)), Ok(()));
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

const MEMINFO: &str = "MemTotal:       24683784 kB\nMemFree:   100 kB\nMemAvailable:    4194304 kB\n";

#[test]
fn available_memory_is_memavailable_without_a_cgroup_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "proc/meminfo", MEMINFO);
    write(dir.path(), "proc/self/cgroup", "0::/\n");
    write(dir.path(), "sys/fs/cgroup/memory.max", "max\n");
    let a = available_memory(dir.path()).expect("read");
    assert_eq!(a.bytes, 4 << 30);
    assert_eq!(a.how, "MemAvailable 4.0 GiB");
}

#[test]
fn a_cgroup_v2_limit_below_memavailable_wins_and_page_cache_is_not_counted_as_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "proc/meminfo", MEMINFO);
    write(dir.path(), "proc/self/cgroup", "0::/system.slice/vigil.service\n");
    write(dir.path(), "sys/fs/cgroup/system.slice/vigil.service/memory.max", &format!("{}\n", 1u64 << 30));
    write(
        dir.path(),
        "sys/fs/cgroup/system.slice/vigil.service/memory.current",
        &format!("{}\n", 600u64 << 20),
    );
    write(
        dir.path(),
        "sys/fs/cgroup/system.slice/vigil.service/memory.stat",
        &format!("anon 1\ninactive_file {}\nactive_file 5\n", 100u64 << 20),
    );
    let a = available_memory(dir.path()).expect("read");
    assert_eq!(a.bytes, (1 << 30) - (500 << 20));
    assert!(a.how.contains("cgroup's limit 1.0 GiB") && a.how.contains("MemAvailable 4.0 GiB"), "{}", a.how);
}

#[test]
fn a_cgroup_v1_parent_limit_counts_and_no_limit_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "proc/meminfo", MEMINFO);
    write(dir.path(), "proc/self/cgroup", "5:cpu:/\n4:memory:/docker/abc\n");
    let base = "sys/fs/cgroup/memory";
    write(dir.path(), &format!("{base}/docker/abc/memory.limit_in_bytes"), "9223372036854771712\n");
    write(dir.path(), &format!("{base}/docker/abc/memory.usage_in_bytes"), "1000\n");
    write(dir.path(), &format!("{base}/docker/memory.limit_in_bytes"), &format!("{}\n", 2u64 << 30));
    write(dir.path(), &format!("{base}/docker/memory.usage_in_bytes"), &format!("{}\n", 1u64 << 30));
    write(dir.path(), &format!("{base}/docker/memory.stat"), "cache 5\ntotal_inactive_file 0\n");
    let a = available_memory(dir.path()).expect("read");
    assert_eq!(a.bytes, 1 << 30);
    // A container sees only its own levels: the host's path is not there.
    write(dir.path(), "proc/self/cgroup", "4:memory:/kubepods/pod1/ctr\n");
    write(dir.path(), &format!("{base}/memory.limit_in_bytes"), &format!("{}\n", 3u64 << 30));
    write(dir.path(), &format!("{base}/memory.usage_in_bytes"), &format!("{}\n", 1u64 << 30));
    assert_eq!(available_memory(dir.path()).expect("read").bytes, 2 << 30);
}

#[test]
fn nothing_readable_means_no_memory_figure() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(available_memory(dir.path()), None);
}

#[test]
fn sizes_read_as_people_write_them() {
    assert_eq!(human(512), "512 B");
    assert_eq!(human(19_200_000_000), "17.9 GiB");
    assert_eq!(human(12 << 20), "12.0 MiB");
}
