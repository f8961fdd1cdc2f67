//! Bad models get clear errors that say what was found: never a panic, never
//! a model that half-works.

mod support;

use std::path::Path;

use support::*;

fn photo() -> String {
    repo_root().join("tests/data/photos/chelsea.png").display().to_string()
}

/// `vigil infer` on the model: must fail with every `expect` in its one-line message.
fn infer_fails(model: &Path, expect: &[&str]) {
    let (code, out, err) =
        vigil_cmd(&["infer", "--json", "--model", model.to_str().expect("utf8"), &photo()], &[]);
    assert_ne!(code, 0, "{}: must be refused; stdout {out}", model.display());
    assert!(out.trim().is_empty(), "nothing printed as a result: {out}");
    assert!(!err.contains("panicked"), "no panic: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for e in expect {
        assert!(err.contains(e), "{e:?} not in: {err}");
    }
}

#[test]
fn a_file_that_is_not_onnx_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join("photo.onnx");
    std::fs::copy(repo_root().join("tests/data/photos/chelsea.png"), &m).expect("copy");
    infer_fails(&m, &["could not be loaded by ONNX Runtime", "not a .pt file, not truncated"]);
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").expect("write");
    infer_fails(&empty, &["the file is empty"]);
}

#[test]
fn a_truncated_model_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(repo_root().join("models/fixtures/yolov5.onnx")).expect("read");
    let m = dir.path().join("truncated.onnx");
    std::fs::write(&m, &bytes[..bytes.len() * 2 / 3]).expect("write");
    infer_fails(&m, &["could not be loaded by ONNX Runtime"]);
}

#[test]
fn an_output_no_decoder_fits_is_refused_listing_what_was_found() {
    let m = repo_root().join("models/fixtures/bad_output_layout.onnx");
    infer_fails(&m, &["fits no decoder", "found inputs", "outputs", "[1, 7, 7, 7]"]);
    // inspect explains and says how to fix it, with exit status 2.
    let (code, out, _) = vigil_cmd(&["models", "inspect", m.to_str().expect("utf8")], &[]);
    assert_eq!(code, 2);
    assert!(out.contains("cannot decide") && out.contains("bad_output_layout.manifest.toml"), "{out}");
}

#[test]
fn labels_that_do_not_match_the_classes_are_refused() {
    let m = repo_root().join("models/fixtures/bad_label_count.onnx");
    infer_fails(&m, &["2 labels", "3 classes"]);
}

#[test]
fn a_wrong_input_rank_is_refused() {
    let m = repo_root().join("models/fixtures/bad_input_rank.onnx");
    infer_fails(&m, &["wrong input rank", "[1, 3, 640]"]);
}

#[test]
fn inspect_explains_the_choice_for_every_family() {
    let cases = [
        ("models/fixtures/yolov8_multiclass.onnx", "yolov8", "YOLOv8-style"),
        ("models/fixtures/yolov5.onnx", "yolov5", "YOLOv5-style"),
        ("models/fixtures/end2end.onnx", "end2end", "end2end=True"),
        ("models/fixtures/ssd.onnx", "ssd", "detection_boxes"),
        ("models/fixtures/classify.onnx", "classify", "[1, 4]"),
        ("models/fixtures/anomalib.onnx", "anomalib", "manifest"),
        ("models/fixtures/customvision/model.onnx", "customvision", "model_outputs0"),
        ("models/fixtures/customvision-s1/model.onnx", "customvision-s1", "detected_boxes"),
    ];
    for (model, decoder, why) in cases {
        let path = repo_root().join(model);
        let (code, out, err) = vigil_cmd(&["models", "inspect", path.to_str().expect("utf8")], &[]);
        assert_eq!(code, 0, "{model}: {err}");
        let line = out.lines().find(|l| l.starts_with("decoder")).unwrap_or_default();
        assert!(line.contains(&format!("decoder    {decoder} (")) && line.contains(why), "{model}: {line}");
    }
    // JSON for tools.
    let path = repo_root().join("models/fixtures/customvision/model.onnx");
    let (code, out, _) = vigil_cmd(&["models", "inspect", "--json", path.to_str().expect("utf8")], &[]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(j["plan"]["decoder"], "customvision");
    assert_eq!(j["plan"]["input"]["color"], "bgr");
    assert_eq!(j["plan"]["input"]["scale"], "raw");
    assert_eq!(j["plan"]["labels"].as_array().map(Vec::len), Some(2));
}
