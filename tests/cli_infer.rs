//! `vigil infer` end to end on the inputs operators give it, and the model
//! options that change what it reports.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn infers_every_frame_of_a_video_and_writes_annotated_pictures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("ball.mp4");
    // A real H.264 MP4 of the moving ball, made by GStreamer itself.
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "pattern=ball", "num-buffers=12", "!"])
        .args(["video/x-raw,width=320,height=240,framerate=10/1", "!", "videoconvert", "!"])
        .args(["x264enc", "speed-preset=ultrafast", "!", "mp4mux", "!", "filesink"])
        .arg(format!("location={}", clip.display()))
        .status()
        .expect("gst-launch-1.0 (deploy/bootstrap.sh installs it)");
    assert!(status.success());
    let out_dir = dir.path().join("out");
    let model = ball_model();
    let (code, out, err) = vigil_cmd(
        &[
            "infer",
            "--json",
            "--conf",
            "0.5",
            "--model",
            model.to_str().expect("utf8"),
            clip.to_str().expect("utf8"),
            "--out",
            out_dir.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let frames = lines(&out);
    assert_eq!(frames.len(), 12, "one line per frame, none dropped");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["frame"], i as u64);
        assert_eq!((f["width"].as_u64(), f["height"].as_u64()), (Some(320), Some(240)));
        assert_eq!(f["detections"].as_array().map(Vec::len), Some(1), "frame {i}: {f}");
    }
    let jpegs = std::fs::read_dir(&out_dir).expect("out dir").count();
    assert_eq!(jpegs, 12, "an annotated JPEG per frame");
}

#[test]
fn a_directory_gives_one_line_per_image_in_name_order() {
    let photos = repo_root().join("tests/data/photos");
    let model = repo_root().join("models/fixtures/yolov8_multiclass.onnx");
    let (code, out, err) = vigil_cmd(
        &["infer", "--json", "--model", model.to_str().expect("utf8"), photos.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let names: Vec<String> = lines(&out)
        .iter()
        .map(|l| l["image"].as_str().expect("image").rsplit('/').next().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["astronaut.png", "chelsea.png", "coffee.png", "rocket.png"]);
}

#[test]
fn per_class_thresholds_from_a_manifest_apply_to_their_class_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("m.onnx");
    std::fs::copy(repo_root().join("models/fixtures/yolov8_multiclass.onnx"), &model).expect("copy");
    let photo = repo_root().join("tests/data/photos/astronaut.png");
    let run = || {
        let (code, out, err) = vigil_cmd(
            &["infer", "--json", "--model", model.to_str().expect("utf8"), photo.to_str().expect("utf8")],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        lines(&out).remove(0)["detections"].as_array().expect("dets").clone()
    };
    let before = run();
    let label_of = |d: &Value| d["label"].as_str().expect("label").to_owned();
    // The most frequent label gets a high bar; every other label is untouched.
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for d in &before {
        *counts.entry(label_of(d)).or_default() += 1;
    }
    let (busy, _) = counts.iter().max_by_key(|(_, n)| **n).expect("some detections");
    std::fs::write(dir.path().join("m.manifest.toml"), format!("[class_confidence]\n{busy:?} = 0.6\n"))
        .expect("manifest");
    let after = run();
    let high = |v: &[Value], l: &str| {
        v.iter().filter(|d| label_of(d) == l && d["score"].as_f64().expect("s") > 0.6).count()
    };
    assert!(after.iter().filter(|d| label_of(d) == *busy).all(|d| d["score"].as_f64().expect("s") > 0.6));
    assert_eq!(after.iter().filter(|d| label_of(d) == *busy).count(), high(&before, busy));
    for (label, n) in &counts {
        if label != busy {
            assert_eq!(after.iter().filter(|d| label_of(d) == *label).count(), *n, "{label} unchanged");
        }
    }
    assert!(after.len() < before.len(), "the bar removed something ({} -> {})", before.len(), after.len());
}

#[test]
fn an_unavailable_execution_provider_is_refused_loudly() {
    let photo = repo_root().join("tests/data/photos/chelsea.png");
    let model = ball_model();
    let (code, out, err) = vigil_cmd(
        &[
            "infer",
            "--json",
            "--provider",
            "cuda",
            "--model",
            model.to_str().expect("utf8"),
            photo.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_ne!(code, 0, "no silent fallback: {out}");
    assert!(
        err.contains("CUDAExecutionProvider could not be registered") && err.contains("PyPI CPU wheel"),
        "{err}"
    );
}

#[test]
fn a_provider_fallback_allowed_in_config_is_reported_in_health() {
    let broker = Mosquitto::start();
    let config = ball_config("fallback", &broker.url(), 5)
        .replace("iou = 0.45", "iou = 0.45\nprovider = \"cuda\"\nallow_cpu_fallback = true");
    let vigil = Vigil::start(&config);
    let h = vigil.health();
    let p = &h["models"][0]["provider"];
    assert_eq!(p["requested"], "CUDAExecutionProvider", "{h}");
    assert_eq!(p["active"], "CPUExecutionProvider");
    assert!(p["fallback_reason"].as_str().unwrap_or("").contains("could not be registered"), "{p}");
    assert!(vigil.stderr().contains("RUNNING ON CPU INSTEAD"), "logged loudly");
}

/// `--json` for a classifier: the classes, best first, each exactly
/// `{"label", "class_id", "score"}` with the model's score as it came (the
/// class type the MQTT `detections` message shares, which rounds it there).
#[test]
fn a_classifier_prints_its_classes_as_label_class_id_and_raw_score() {
    let photo = repo_root().join("tests/data/photos/chelsea.png");
    let model = repo_root().join("models/fixtures/classify.onnx");
    let (code, out, err) = vigil_cmd(
        &["infer", "--json", "--model", model.to_str().expect("utf8"), photo.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| !l.trim().is_empty()).expect("a line");
    let v: Value = serde_json::from_str(line).expect("JSON");
    let classes = v["classes"].as_array().expect("classes");
    assert!(!classes.is_empty(), "{line}");
    for c in classes {
        let raw = format!(
            "{{\"label\":{},\"class_id\":{},\"score\":{}}}",
            c["label"],
            c["class_id"],
            serde_json::to_string(&(c["score"].as_f64().expect("score") as f32)).expect("f32")
        );
        assert!(line.contains(&raw), "{raw} not in {line}");
    }
    let scores: Vec<f64> = classes.iter().map(|c| c["score"].as_f64().expect("score")).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    // Not rounded to 4 places as in the MQTT message.
    assert!(scores.iter().any(|s| (s * 1e4).fract().abs() > 1e-3), "raw scores: {scores:?}");
}
