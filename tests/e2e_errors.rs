//! Bad input gets a clear, one-line error that names the problem, never a
//! panic or a hang: broken configs, a missing ONNX Runtime, a model that does
//! not load, a broker that is not there.

mod support;

use std::time::Duration;

use support::*;

fn good_config(dir: &std::path::Path) -> String {
    ball_config("errs", "mqtt://127.0.0.1:1", 10).replace(&ball_model().display().to_string(), &{
        let p = dir.join("ball.onnx");
        std::fs::copy(ball_model(), &p).expect("copy model");
        p.display().to_string()
    })
}

fn assert_one_clear_line(code: i32, stderr: &str, expect: &[&str]) {
    assert_ne!(code, 0, "must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    for e in expect {
        assert!(stderr.contains(e), "{e:?} not in: {stderr}");
    }
}

#[test]
fn check_refuses_five_broken_configs_with_one_line_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = good_config(dir.path());
    let f = write(dir.path(), "good.toml", &good);
    let (code, out, err) = vigil_cmd(&["check", "--config", f.to_str().expect("utf8")], &[]);
    assert_eq!(code, 0, "the good config passes: {err}");
    assert!(out.contains("ok (1 model(s), 1 camera(s))"));

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown-field",
            good.replace("fps = 10\nmodel", "fpss = 10\nmodel"),
            vec!["cameras[0]", "unknown field `fpss`"],
        ),
        ("missing-model", good.replace("ball.onnx", "gone.onnx"), vec!["models[0].path", "does not exist"]),
        (
            "bad-scheme",
            good.replace("test://ball", "foo://ball"),
            vec!["cameras[0].source", "unknown source scheme `foo://`"],
        ),
        (
            "bad-threshold",
            good.replace("confidence = 0.5", "confidence = 1.5"),
            vec!["models[0].confidence = 1.5", "between 0 and 1"],
        ),
    ];
    for (name, text, expect) in &cases {
        let f = write(dir.path(), &format!("{name}.toml"), text);
        let (code, _, err) = vigil_cmd(&["check", "--config", f.to_str().expect("utf8")], &[]);
        assert_eq!(code, 2, "{name}: {err}");
        assert_one_clear_line(code, &err, expect);
    }
    // Unreadable: a directory where the file should be, and bytes that are not text.
    let (code, _, err) = vigil_cmd(&["check", "--config", dir.path().to_str().expect("utf8")], &[]);
    assert_one_clear_line(code, &err, &["cannot read the config file", "directory"]);
    let bin = dir.path().join("binary.toml");
    std::fs::write(&bin, [0x80u8, 0xff, 0x00, 0x12]).expect("write");
    let (code, _, err) = vigil_cmd(&["check", "--config", bin.to_str().expect("utf8")], &[]);
    assert_one_clear_line(code, &err, &["not UTF-8"]);
    let (code, _, err) = vigil_cmd(&["check", "--config", "/nonexistent/vigil.toml"], &[]);
    assert_one_clear_line(code, &err, &["no such file"]);
}

#[test]
fn check_finds_a_launch_string_that_does_not_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = good_config(dir.path())
        .replace("test://ball?width=640&height=480&fps=10", "launch:videotestsrc ! no_such_element_here");
    let f = write(dir.path(), "launch.toml", &text);
    let (code, _, err) = vigil_cmd(&["check", "--config", f.to_str().expect("utf8")], &[]);
    assert_one_clear_line(code, &err, &["cameras[0] (cam1)", "no_such_element_here"]);
}

#[test]
fn check_accepts_the_demo_config() {
    let demo = repo_root().join("deploy/demo.toml");
    let (code, out, err) = vigil_cmd(&["check", "--config", demo.to_str().expect("utf8")], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"));
}

#[test]
fn a_missing_onnx_runtime_library_says_how_to_install_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "v.toml", &good_config(dir.path()));
    let env = [("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")];
    for cmd in ["check", "run"] {
        let (code, _, err) = vigil_cmd(&[cmd, "--config", f.to_str().expect("utf8")], &env);
        assert_ne!(code, 0, "{cmd} must fail");
        assert!(!err.contains("panicked"), "{cmd}: no panic: {err}");
        assert!(
            err.contains("ONNX Runtime library was not found at /nonexistent/libonnxruntime.so")
                && err.contains("deploy/bootstrap.sh"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn a_model_that_fails_to_load_is_named_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = good_config(dir.path());
    std::fs::write(dir.path().join("ball.onnx"), b"PK\x03\x04 definitely not protobuf").expect("write");
    let f = write(dir.path(), "v.toml", &text);
    let (code, _, err) = vigil_cmd(&["check", "--config", f.to_str().expect("utf8")], &[]);
    assert_one_clear_line(code, &err, &["models[0] (ball)", "could not be loaded by ONNX Runtime"]);
    let (code, _, err) = vigil_cmd(&["run", "--config", f.to_str().expect("utf8")], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("model \"ball\"") && err.contains("could not be loaded") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn an_unreachable_broker_is_retried_reported_and_then_used_when_it_appears() {
    let port = free_port();
    let mut vigil = Vigil::start(&ball_config("nobroker", &format!("mqtt://127.0.0.1:{port}"), 10));

    // The line keeps running while the broker is away, and health says why.
    wait_until(Duration::from_secs(30), "frames processed without a broker", || {
        vigil.health()["cameras"][0]["frames_processed"].as_u64().unwrap_or(0) >= 5
    });
    let h = vigil.health();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["mqtt"]["state"], "connecting", "{h}");
    let last_error = h["mqtt"]["last_error"].as_str().unwrap_or("");
    assert!(last_error.contains("connection refused") && last_error.contains("broker running"), "{h}");
    assert!(vigil.stderr().contains("MQTT broker unreachable; retrying"), "logged");
    assert!(vigil.is_running());

    // The broker appears: Vigil connects by itself and events flow.
    let broker = Mosquitto::start_on(port);
    let sub = Subscriber::connect(broker.port, "vigil/nobroker/#");
    wait_until(Duration::from_secs(60), "MQTT connected", || vigil.health()["mqtt"]["state"] == "connected");
    let ev: serde_json::Value =
        serde_json::from_slice(&sub.next_on("vigil/nobroker/events", Duration::from_secs(30))).expect("json");
    assert_eq!(ev["device"], "nobroker");
}
