//! Deployment manifests checked offline: the Kubernetes manifests against
//! the Kubernetes JSON schemas that kubernetes-validate ships (strict: an
//! unknown or misspelt field fails), and the compose file by docker-compose.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn kubernetes_validate(file: &Path) -> (bool, String) {
    let out = Command::new(repo_root().join(".deps/venv/bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.30"])
        .arg(file)
        .output()
        .expect("kubernetes-validate runs (deploy/bootstrap.sh installs it)");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn kubernetes_manifests_validate_and_a_misspelt_field_does_not() {
    let manifest = repo_root().join("deploy/k8s/vigil.yaml");
    let (ok, log) = kubernetes_validate(&manifest);
    assert!(ok, "{log}");
    for kind in ["namespace/vigil", "configmap/vigil-config", "daemonset/vigil", "service/vigil"] {
        assert!(log.contains(&format!("passed for resource {kind}")), "{kind} not validated:\n{log}");
    }

    // The validator is strict: the same file with one probe misspelt fails.
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = write(dir.path(), "broken.yaml", &text.replacen("livenessProbe:", "livenesProbe:", 1));
    let (ok, log) = kubernetes_validate(&broken);
    assert!(!ok, "a misspelt field passed:\n{log}");
}

#[test]
fn the_compose_file_is_valid() {
    let out = Command::new("docker-compose")
        .args(["-f", "deploy/compose.yaml", "config", "--quiet"])
        .current_dir(repo_root())
        .output()
        .expect("docker-compose runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
