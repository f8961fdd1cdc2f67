//! `vigil.example.toml` at the repository root is the annotated config
//! reference (docs/configuration.md points at it). These tests keep it true:
//! the real `vigil check` must accept it, must refuse a broken copy of it,
//! and every field Vigil reads must appear in it, set or commented out.
//!
//!   cargo test -p vigil --test example_config

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example() -> PathBuf {
    root().join("vigil.example.toml")
}

fn vigil_check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .output()
        .expect("run vigil check")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_example_config_passes_vigil_check() {
    let out = vigil_check(&example());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vigil check refused vigil.example.toml ({}):\n{stderr}", out.status);
    assert!(stdout.contains(": ok ("), "vigil check did not say ok:\n{stdout}\n{stderr}");
}

/// A copy of the example with one field misspelt: `vigil check` must name it
/// and exit 2, so the test above really reads the file it is given.
#[test]
fn a_misspelt_field_in_the_example_config_fails_vigil_check() {
    let good = std::fs::read_to_string(example()).expect("read vigil.example.toml");
    assert!(good.contains("\nkeep_alive_s = 15\n"), "the example no longer sets mqtt.keep_alive_s = 15");
    let broken = good.replace("\nkeep_alive_s = 15\n", "\nkeep_alive_sec = 15\n");
    // The model path made absolute, so the misspelling is the only problem.
    let model = root().join("models/ball/ball.onnx");
    let broken = broken.replace("\"models/ball/ball.onnx\"", &format!("{:?}", model.display().to_string()));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let copy = dir.path().join("vigil.example.toml");
    std::fs::write(&copy, broken).expect("write the broken copy");
    let out = vigil_check(&copy);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit 2 for a config problem:\n{stderr}");
    assert!(stderr.contains("mqtt") && stderr.contains("unknown field `keep_alive_sec`"), "{stderr}");
}

/// Every key of a value, at any depth (array elements included).
fn keys(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                out.insert(k.clone());
                keys(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

/// The config as Vigil parsed it, serialised, names every field it has
/// (unset ones as null), nested ones included: each must appear in the
/// example as `field =` (set or behind a `#`) or as a `[section]`. A new config field fails this
/// until it is documented there. (Secrets are never serialised; they are
/// documented beside their `_file` and `_env` forms.)
#[test]
fn the_example_config_mentions_every_field_vigil_reads() {
    let loaded = vigil_pipeline::LoadedConfig::load(&example()).expect("the example loads");
    let value = serde_json::to_value(&loaded.config).expect("the config serialises");
    let mut fields = BTreeSet::new();
    keys(&value, &mut fields);
    // Keys that are data, not fields: class_confidence's labels.
    fields.remove("ball");
    assert!(fields.len() > 60, "fewer fields than expected: {fields:?}");
    let example = std::fs::read_to_string(example()).expect("read vigil.example.toml");
    let mentioned = |f: &str| {
        example.match_indices(f).any(|(i, _)| {
            let before = example[..i].chars().next_back();
            let after = example[i + f.len()..].trim_start_matches(' ');
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_') && after.starts_with('=')
        }) || example.contains(&format!("[{f}]"))
    };
    let missing: Vec<&String> = fields.iter().filter(|f| !mentioned(f)).collect();
    assert!(missing.is_empty(), "vigil.example.toml does not mention these fields: {missing:?}");
}
