//! Parity of Vigil's resize with OpenCV's (the reference Ultralytics uses).
//! Runs cv2 from the project's Python tools (.deps/venv, made by deploy/bootstrap.sh).

use std::path::PathBuf;
use std::process::Command;

use vigil_inference::{ImageView, resize_bilinear_cv};

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = root.join(".deps/venv/bin/python");
    assert!(py.is_file(), "{} missing: run deploy/bootstrap.sh", py.display());
    py
}

#[test]
fn resize_matches_cv2_inter_linear_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cv2_resize_ref.py");
    let status = Command::new(python()).arg(&script).arg(dir.path()).status().expect("run python");
    assert!(status.success(), "reference script failed");
    let cases = std::fs::read_to_string(dir.path().join("cases.txt")).expect("cases");
    let mut checked = 0;
    for (i, line) in cases.lines().enumerate() {
        let n: Vec<usize> = line.split_whitespace().map(|t| t.parse().expect("number")).collect();
        let (sw, sh, dw, dh) = (n[0], n[1], n[2], n[3]);
        let src = std::fs::read(dir.path().join(format!("case_{i}.src"))).expect("src");
        let want = std::fs::read(dir.path().join(format!("case_{i}.dst"))).expect("dst");
        let view = ImageView::new(&src, sw as u32, sh as u32, sw * 3).expect("view");
        let mut got = vec![0u8; dw * dh * 3];
        resize_bilinear_cv(&view, dw, dh, &mut got);
        let diffs: Vec<usize> = (0..got.len()).filter(|&k| got[k] != want[k]).collect();
        assert!(
            diffs.is_empty(),
            "{sw}x{sh} -> {dw}x{dh}: {} of {} bytes differ; first at row {} element {} (vigil {} cv2 {})",
            diffs.len(),
            got.len(),
            diffs[0] / (dw * 3),
            diffs[0] % (dw * 3),
            got[diffs[0]],
            want[diffs[0]]
        );
        checked += 1;
    }
    assert_eq!(checked, 12);
}
