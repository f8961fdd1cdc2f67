//! The model store under faults (issue #20 items 7-11), against the real
//! `vigil`: a model that never finishes its self-test, activations longer
//! than the request timeout, rollbacks racing deletes and uploads, a damaged
//! store at start, version numbers and pruning, and a slow or abandoned
//! upload. Real GStreamer test source, real ONNX Runtime, real Mosquitto,
//! real HTTP.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

/// One camera showing `pattern` on the ball model, no rules (so any model
/// with a fitting decoder may be uploaded), `model_extra` under the model and
/// `http_extra` under `[http]`.
fn config(mqtt_url: &str, pattern: &str, model_extra: &str, http_extra: &str) -> String {
    format!(
        r#"device_id = "store"
[mqtt]
url = "{mqtt_url}"
keep_alive_s = 5
[http]
listen = "127.0.0.1:0"
{http_extra}
[[models]]
name = "ball"
path = "{model}"
confidence = 0.5
{model_extra}
[[cameras]]
name = "cam1"
source = "test://{pattern}?width=320&height=240&fps=10"
model = "ball"
"#,
        model = ball_model().display()
    )
}

fn wait_streaming(v: &Vigil) {
    wait_until(Duration::from_secs(30), "cam1 streaming", || {
        camera_health(v, "cam1")["state"] == "streaming"
    });
}

fn slot_dir(v: &Vigil) -> PathBuf {
    v.dir.path().join("vigil-data/models/ball")
}

fn slot(v: &Vigil) -> serde_json::Value {
    let (status, body) = v.json("GET", "/api/v1/models/ball", None);
    assert_eq!(status, 200, "{body}");
    body
}

/// (status, body as JSON, how long it took).
fn call(v: &Vigil, method: &str, path: &str, body: Option<&[u8]>) -> (u16, serde_json::Value, Duration) {
    let t0 = Instant::now();
    let (status, json) = v.json(method, path, body);
    (status, json, t0.elapsed())
}

fn upload(v: &Vigil, bytes: &[u8]) -> u64 {
    let (status, body, _) = call(v, "POST", "/api/v1/models/ball/versions", Some(bytes));
    assert_eq!(status, 201, "{body}");
    body["version"]["version"].as_u64().expect("version")
}

fn activate(v: &Vigil, version: u64) {
    let (status, body, _) =
        call(v, "POST", &format!("/api/v1/models/ball/versions/{version}/activate"), None);
    assert_eq!(status, 200, "{body}");
}

/// Starts activating `version` on its own thread: (status, body, time taken)
/// arrive on the receiver when it answers.
fn activate_in_background(v: &Vigil, version: u64) -> mpsc::Receiver<(u16, String, Duration)> {
    let (tx, rx) = mpsc::channel();
    let (web, token) = (v.web.clone(), v.token.clone());
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let (status, _, body) = http_request(
            "POST",
            &format!("{web}/api/v1/models/ball/versions/{version}/activate"),
            token.as_deref(),
            &[],
            None,
        );
        let _ = tx.send((status, String::from_utf8_lossy(&body).into_owned(), t0.elapsed()));
    });
    rx
}

fn endless_when_bright() -> Vec<u8> {
    std::fs::read(repo_root().join("models/fixtures/misbehaving/endless_when_bright.onnx")).expect("fixture")
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn numbers(slot: &serde_json::Value) -> Vec<u64> {
    slot["versions"].as_array().expect("versions").iter().map(|v| v["version"].as_u64().expect("n")).collect()
}

/// Item 7: a model that loads (its test run on a blank frame is dark and
/// ends) but loops for ever on what the camera shows is stopped at
/// `test_run_s`, and while it is being prepared the slot's rollback, delete
/// and a second activation all answer at once.
#[test]
fn a_model_that_never_finishes_its_self_test_is_stopped_and_blocks_nothing_meanwhile() {
    let broker = Mosquitto::start();
    let v = Vigil::start(&config(&broker.url(), "white", "test_run_s = 8", ""));
    wait_streaming(&v);
    let good = upload(&v, &ball_model_variant("store: good"));
    activate(&v, good);
    let endless = upload(&v, &endless_when_bright());
    let spare = upload(&v, &ball_model_variant("store: spare"));

    let rx = activate_in_background(&v, endless);
    wait_until(Duration::from_secs(10), "the endless model being prepared", || {
        slot(&v)["activating"] == endless
    });

    // Each answers while the endless self-test still runs (`activating`
    // says so after each): none waited for it.
    let (status, body, took) = call(&v, "POST", "/api/v1/models/ball/rollback", None);
    println!("rollback during the endless self-test: {status} in {took:?}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(slot(&v)["activating"], endless, "the rollback waited for the self-test");
    let (status, body, took) = call(&v, "DELETE", &format!("/api/v1/models/ball/versions/{spare}"), None);
    println!("delete during the endless self-test: {status} in {took:?}");
    assert_eq!(status, 204, "{body}");
    assert_eq!(slot(&v)["activating"], endless, "the delete waited for the self-test");
    let (status, body, _) = call(&v, "POST", &format!("/api/v1/models/ball/versions/{good}/activate"), None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(slot(&v)["activating"], endless);

    let (status, body, took) = rx.recv_timeout(Duration::from_secs(40)).expect("the activation answers");
    println!("endless activation: {status} after {took:?}: {body}");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("did not finish within 8.0s"), "{body}");
    assert!(took < Duration::from_secs(25), "{took:?}");
    let s = slot(&v);
    assert_eq!(s["activating"], serde_json::Value::Null);
    assert_eq!(s["active"], 1, "{s}");
    assert_eq!(v.health()["models"][0]["version"], 1);
    // The camera is still inferred on the version the rollback put back.
    let processed = camera_health(&v, "cam1")["frames_processed"].as_u64().expect("processed");
    wait_until(Duration::from_secs(10), "frames still processed", || {
        camera_health(&v, "cam1")["frames_processed"].as_u64() > Some(processed)
    });
    activate(&v, good);
}

/// Item 8: an activation that takes longer than `http.request_timeout_s`
/// answers with its real outcome (not 408 while it goes on in the
/// background), and a second one for the slot meanwhile is refused with 409
/// and a JSON reason rather than loading a second copy.
#[test]
fn an_activation_longer_than_the_request_timeout_answers_and_a_second_one_gets_409() {
    let broker = Mosquitto::start();
    let v = Vigil::start(&config(&broker.url(), "white", "test_run_s = 4", "request_timeout_s = 1"));
    wait_streaming(&v);
    let endless = upload(&v, &endless_when_bright());
    let good = upload(&v, &ball_model_variant("store: timeout"));

    let rx = activate_in_background(&v, endless);
    wait_until(Duration::from_secs(10), "the activation under way", || slot(&v)["activating"] == endless);
    let (status, ctype, body) =
        v.request("POST", &format!("/api/v1/models/ball/versions/{good}/activate"), &[], None);
    println!("second activation: {status} {}", String::from_utf8_lossy(&body));
    assert_eq!(status, 409);
    let why: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
    assert_eq!(ctype, "application/json");
    assert!(
        why["error"].as_str().is_some_and(|e| e.contains(&format!("already activating version {endless}")))
    );

    let (status, body, took) = rx.recv_timeout(Duration::from_secs(40)).expect("the activation answers");
    println!("long activation: {status} after {took:?}: {body}");
    assert!(took > Duration::from_secs(1), "it ran past the request timeout");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("did not finish within"), "{body}");
    // Over: the slot takes the next activation.
    assert_eq!(slot(&v)["activating"], serde_json::Value::Null);
    activate(&v, good);
    assert_eq!(v.health()["models"][0]["version"], good);
}

/// The store's invariants: the active and previous versions are stored
/// versions with their files, health serves the active one, and state.json
/// on disk says the same.
fn assert_consistent(v: &Vigil) -> u64 {
    let s = slot(v);
    let nums = numbers(&s);
    let active = s["active"].as_u64().expect("active");
    assert!(nums.contains(&active), "active {active} is not stored: {s}");
    if let Some(p) = s["previous"].as_u64() {
        assert!(nums.contains(&p), "previous {p} is not stored: {s}");
        assert_ne!(p, active, "previous is the active version: {s}");
    }
    for rec in s["versions"].as_array().expect("versions") {
        if rec["origin"] == "upload" {
            let file = slot_dir(v).join(format!("v{}.onnx", rec["version"]));
            assert!(file.is_file(), "{} missing: {s}", file.display());
        }
    }
    assert_eq!(v.health()["models"][0]["version"], active);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(slot_dir(v).join("state.json")).expect("state.json"))
            .expect("JSON");
    assert_eq!(state["active"], active);
    let stored: Vec<u64> =
        state["versions"].as_object().expect("map").keys().map(|k| k.parse().expect("n")).collect();
    assert!(stored.contains(&active));
    if let Some(p) = state["previous"].as_u64() {
        assert!(stored.contains(&p), "state.json: previous {p} not stored: {state}");
    }
    active
}

/// Item 9: rollbacks, deletes and uploads of one slot fired at once, round
/// after round: never a deleted version active or previous, in memory or on
/// disk, and the same after a restart.
#[test]
fn concurrent_rollbacks_deletes_and_uploads_never_leave_a_deleted_version_active_or_previous() {
    let broker = Mosquitto::start();
    let cfg = config(&broker.url(), "ball", "", "");
    let v = Vigil::start(&cfg);
    wait_streaming(&v);
    for round in 0..8 {
        let a = upload(&v, &ball_model_variant(&format!("race {round} a")));
        let b = upload(&v, &ball_model_variant(&format!("race {round} b")));
        activate(&v, a);
        activate(&v, b);
        // Now b is active and a is the previous one, in memory: the
        // rollback's fast path.
        let new = ball_model_variant(&format!("race {round} c"));
        let requests: Vec<(&str, String, Option<Vec<u8>>)> = vec![
            ("POST", "/api/v1/models/ball/rollback".into(), None),
            ("DELETE", format!("/api/v1/models/ball/versions/{a}"), None),
            ("POST", "/api/v1/models/ball/rollback".into(), None),
            ("DELETE", format!("/api/v1/models/ball/versions/{b}"), None),
            ("POST", "/api/v1/models/ball/versions".into(), Some(new)),
            ("POST", "/api/v1/models/ball/rollback".into(), None),
        ];
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = requests
                .iter()
                .map(|(method, path, body)| {
                    let v = &v;
                    s.spawn(move || v.request(method, path, &[], body.as_deref()).0)
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("request")).collect()
        });
        println!("round {round}: {statuses:?} -> {}", slot(&v));
        assert!(statuses.iter().all(|s| [200, 201, 204, 404, 409].contains(s)), "{statuses:?}");
        assert_consistent(&v);
    }
    let active = assert_consistent(&v);
    let dir = v.stop_keep_dir();
    let v = Vigil::start_in(dir, &cfg);
    assert_eq!(assert_consistent(&v), active);
    assert!(v.health()["warnings"].as_array().is_some_and(Vec::is_empty), "{}", v.health());
}

/// Item 10: a store damaged while Vigil was down (an active version whose
/// file changed, then one whose file is gone, then an unreadable
/// state.json, a partial upload left behind) never stops it from starting:
/// it falls back, says why in /healthz, and sweeps the leftovers.
#[test]
fn a_damaged_store_does_not_stop_vigil_from_starting_it_falls_back_and_says_why() {
    let broker = Mosquitto::start();
    let cfg = config(&broker.url(), "ball", "", "");
    let v = Vigil::start(&cfg);
    wait_streaming(&v);
    let v2 = upload(&v, &ball_model_variant("damage 2"));
    activate(&v, v2);
    let v3 = upload(&v, &ball_model_variant("damage 3"));
    activate(&v, v3);
    assert!(v.health()["warnings"].as_array().is_some_and(Vec::is_empty));
    let dir = v.stop_keep_dir();
    let store = dir.path().join("vigil-data/models/ball");

    // v3's file changes under Vigil (still a model that loads: only its
    // hash tells), and a partial upload is left behind.
    std::fs::write(store.join(format!("v{v3}.onnx")), ball_model_variant("swapped behind its back"))
        .expect("write");
    std::fs::write(store.join(".upload-0192a1b2-dead-beef"), b"half a model").expect("write");
    let v = Vigil::start_in(dir, &cfg);
    wait_streaming(&v);
    let h = v.health();
    println!("{h}");
    assert_eq!(h["models"][0]["version"], v2, "fell back to the previous version");
    let warning = h["models"][0]["warnings"][0].as_str().expect("a model warning").to_owned();
    assert!(warning.contains(&format!("version {v3}")) && warning.contains("sha256"), "{warning}");
    assert!(
        h["warnings"][0].as_str().is_some_and(|w| w.contains("model ball") && w.contains("sha256")),
        "{h}"
    );
    assert_eq!(slot(&v)["warnings"][0].as_str(), Some(warning.as_str()));
    assert!(
        files_in(&slot_dir(&v)).iter().all(|f| !f.starts_with(".upload-")),
        "{:?}",
        files_in(&slot_dir(&v))
    );
    let dir = v.stop_keep_dir();

    // Now v2's file is gone too: the config's file serves.
    std::fs::remove_file(store.join(format!("v{v2}.onnx"))).expect("rm");
    let v = Vigil::start_in(dir, &cfg);
    wait_streaming(&v);
    let h = v.health();
    println!("{h}");
    assert_eq!(h["models"][0]["version"], 1, "fell back to the config's model");
    assert!(h["models"][0]["warnings"].to_string().contains(&format!("version {v2}")), "{h}");
    let dir = v.stop_keep_dir();

    // An unreadable state.json (a power cut on a filesystem that lied).
    std::fs::write(store.join("state.json"), b"{\"versions\": {\"1\": ").expect("write");
    let v = Vigil::start_in(dir, &cfg);
    wait_streaming(&v);
    let h = v.health();
    println!("{h}");
    assert!(h["warnings"].to_string().contains("state.json"), "{h}");
    // Numbers on disk are not given again.
    let next = upload(&v, &ball_model_variant("after the damage"));
    assert!(next > v3, "{next} reuses a number");
}

/// Item 10: a deleted version's number is never given again (not even after
/// a restart), and a slot keeps at most 10 versions, pruning the oldest
/// that is neither active, previous nor the config's, files included.
#[test]
fn version_numbers_are_never_reused_and_old_versions_are_pruned() {
    let broker = Mosquitto::start();
    let cfg = config(&broker.url(), "ball", "", "");
    let v = Vigil::start(&cfg);
    wait_streaming(&v);
    let v2 = upload(&v, &ball_model_variant("numbers 2"));
    let (status, body, _) = call(&v, "DELETE", &format!("/api/v1/models/ball/versions/{v2}"), None);
    assert_eq!(status, 204, "{body}");
    let v3 = upload(&v, &ball_model_variant("numbers 3"));
    assert_eq!(v3, v2 + 1, "the deleted version's number was given again");
    let (status, body, _) = call(&v, "DELETE", &format!("/api/v1/models/ball/versions/{v3}"), None);
    assert_eq!(status, 204, "{body}");
    let dir = v.stop_keep_dir();
    let v = Vigil::start_in(dir, &cfg);
    wait_streaming(&v);
    let v4 = upload(&v, &ball_model_variant("numbers 4"));
    assert_eq!(v4, v3 + 1, "a number was given again after a restart");

    activate(&v, v4);
    let mut last = v4;
    for i in 0..12 {
        last = upload(&v, &ball_model_variant(&format!("prune {i}")));
    }
    let s = slot(&v);
    let nums = numbers(&s);
    println!("{nums:?}");
    assert_eq!(nums.len(), 10, "{s}");
    assert!(nums.contains(&1) && nums.contains(&v4) && nums.contains(&last), "{nums:?}");
    // The oldest uploads went, with their files.
    let on_disk: Vec<String> = files_in(&slot_dir(&v)).into_iter().filter(|f| f.ends_with(".onnx")).collect();
    assert_eq!(on_disk.len(), 9, "{on_disk:?}");
    for n in &nums[2..] {
        assert!(on_disk.contains(&format!("v{n}.onnx")), "{on_disk:?}");
    }
}

/// Item 11: a client that sends half a model and stalls blocks nothing of
/// the slot (another upload, activation, rollback and delete complete while
/// it is connected), and once it goes away nothing of its upload is left.
#[test]
fn a_stalled_upload_blocks_nothing_and_an_abandoned_one_leaves_no_file() {
    let broker = Mosquitto::start();
    let v = Vigil::start(&config(&broker.url(), "ball", "", ""));
    wait_streaming(&v);
    let half = ball_model_variant("stalled");
    let addr = v.web.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&addr).expect("connect");
    write!(
        slow,
        "POST /api/v1/models/ball/versions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        v.token.as_deref().expect("token"),
        half.len()
    )
    .expect("headers");
    slow.write_all(&half[..half.len() / 2]).expect("half the body");
    slow.flush().expect("flush");
    let partial = || files_in(&slot_dir(&v)).into_iter().filter(|f| f.starts_with(".upload-")).count();
    wait_until(Duration::from_secs(10), "the stalled upload under way", || partial() == 1);

    let (tx, rx) = mpsc::channel();
    let (web, token) = (v.web.clone(), v.token.clone());
    std::thread::spawn(move || {
        let req = |method: &str, path: &str, body: Option<&[u8]>| {
            http_request(method, &format!("{web}{path}"), token.as_deref(), &[], body).0
        };
        let t0 = Instant::now();
        let statuses = vec![
            req("POST", "/api/v1/models/ball/versions?activate=true", Some(&ball_model_variant("meanwhile"))),
            req("POST", "/api/v1/models/ball/rollback", None),
            req("DELETE", "/api/v1/models/ball/versions/2", None),
        ];
        let _ = tx.send((statuses, t0.elapsed()));
    });
    let (statuses, took) =
        rx.recv_timeout(Duration::from_secs(20)).expect("the slot is not blocked by the stalled upload");
    println!("upload+activate, rollback, delete beside a stalled upload: {statuses:?} in {took:?}");
    assert_eq!(statuses, vec![201, 200, 204]);
    assert_eq!(partial(), 1, "the stalled upload was still under way");

    drop(slow);
    wait_until(Duration::from_secs(10), "the abandoned upload swept", || partial() == 0);
    assert_eq!(files_in(&slot_dir(&v)), vec!["state.json".to_owned()]);
    assert_eq!(numbers(&slot(&v)), vec![1]);
}
