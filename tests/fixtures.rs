//! Every committed fixture model is exactly what its committed script makes:
//! nobody has to trust a binary blob in the repository.

mod support;

use std::process::Command;

use support::repo_root;

#[test]
fn the_ball_model_is_rebuilt_byte_for_byte_by_its_script() {
    let root = repo_root();
    let python = root.join(".deps/venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run deploy/bootstrap.sh",
        python.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("ball.onnx");
    let status = Command::new(&python)
        .arg(root.join("models/ball/make_ball_model.py"))
        .arg(&out)
        .status()
        .expect("run the fixture script");
    assert!(status.success(), "the script's own self-test failed");
    let rebuilt = std::fs::read(&out).expect("rebuilt");
    let committed = std::fs::read(root.join("models/ball/ball.onnx")).expect("committed");
    assert!(
        rebuilt == committed,
        "models/ball/ball.onnx differs from what make_ball_model.py builds; re-run it"
    );
}
