//! A model that declares a 40000x40000 input is refused at load, and the
//! process never holds anything of that size (issue #20, item 3). Its own
//! test binary: the peak resident memory it checks is the whole process's.

use std::path::PathBuf;
use std::time::Instant;

use vigil_inference::{Detector, InferenceError, ModelOptions};

/// The process's peak resident memory so far (Linux `VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    kb * 1024
}

/// Caps the address space, so that if the guard regresses the 17.9 GiB
/// allocation fails in this process instead of the kernel's OOM killer
/// taking something on the machine that runs the tests.
#[allow(unsafe_code)] // setrlimit: no safe wrapper in the dependencies
fn cap_address_space(bytes: u64) {
    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct it is given and changes only this
    // process's limit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    assert_eq!(rc, 0, "setrlimit");
}

#[test]
fn a_model_declaring_a_40000x40000_input_is_refused_and_memory_stays_low() {
    cap_address_space(8 << 30);
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/misbehaving/huge_input.onnx");
    let t0 = Instant::now();
    let err = Detector::load("huge", &model, ModelOptions::default()).expect_err("must be refused");
    let took = t0.elapsed();
    assert!(matches!(err, InferenceError::TooLarge { .. }), "{err}");
    let msg = err.to_string();
    for part in [
        "huge_input.onnx asks for more than this box allows",
        "its input images is 40000x40000 pixels",
        "17.9 GiB a frame as float32",
        "at most 16384 pixels a side and 67.1 megapixels a frame",
        "imgsz=640",
    ] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    let peak = peak_rss();
    eprintln!("refused in {took:?}; peak RSS {} MiB", peak >> 20);
    assert!(peak < 256 << 20, "peak RSS {} MiB: something of the input's size was made", peak >> 20);
}
