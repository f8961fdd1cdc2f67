//! Every committed fixture model is exactly what its committed script makes:
//! nobody has to trust a binary blob in the repository.

mod support;

use std::process::Command;

use support::{repo_root, venv_python};

#[test]
fn the_ball_model_is_rebuilt_byte_for_byte_by_its_script() {
    let root = repo_root();
    let python = venv_python();
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

#[test]
fn the_family_fixtures_are_rebuilt_byte_for_byte_by_their_script() {
    let root = repo_root();
    let python = venv_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new(&python)
        .arg(root.join("models/fixtures/make_fixtures.py"))
        .arg(dir.path())
        .status()
        .expect("run the fixture script");
    assert!(status.success(), "the script's own self-test failed");
    let mut compared = 0;
    for entry in walk(dir.path()) {
        let rel = entry.strip_prefix(dir.path()).expect("inside");
        let committed = root.join("models/fixtures").join(rel);
        let rebuilt = std::fs::read(&entry).expect("rebuilt");
        let committed_bytes = std::fs::read(&committed)
            .unwrap_or_else(|_| panic!("{} is made by the script but not committed", committed.display()));
        assert!(
            rebuilt == committed_bytes,
            "{} differs from what make_fixtures.py builds; re-run it",
            committed.display()
        );
        compared += 1;
    }
    assert!(compared >= 12, "compared {compared} files");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
