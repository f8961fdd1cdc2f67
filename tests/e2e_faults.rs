//! Faults a box left alone meets, injected for real against the `vigil`
//! binary (issue #20 items 6, 12 and the outbox's lost events): a data
//! directory whose disk fills up (a small tmpfs: the tests run as root), a
//! model whose every run fails (its output shape follows the picture), a
//! model that loops on bright frames. Each must leave the camera running,
//! count what it costs, and say `degraded` with the reason until it is over.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A tmpfs of `mib` MiB mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root (the tests run as root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the file system of `dir` with one file until it is full; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0xa5u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // The last partial pages too.
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.flush();
    path
}

fn chatty_ball_in(device: &str, url: &str, data_dir: &Path) -> String {
    format!(
        "device_id = \"{device}\"\ndata_dir = \"{}\"\n[mqtt]\nurl = \"{url}\"\nkeep_alive_s = 5\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[models]]\nname = \"ball\"\npath = \"{}\"\nconfidence = 0.5\niou = 0.45\n\
         [[cameras]]\nname = \"cam1\"\nsource = \"test://ball?width=320&height=240&fps=10\"\nfps = 10\nmodel = \"ball\"\n\
         [events]\nupdate_interval_s = 0.0\nupdate_min_move = 0.0\nsnapshots = false\n",
        data_dir.display(),
        ball_model().display()
    )
}

fn reasons(h: &Value) -> Vec<String> {
    h["reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn metric(vigil: &Vigil, line_start: &str) -> Option<f64> {
    let (code, _, body) = vigil.get("/metrics");
    assert_eq!(code, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits until every event produced is accounted for: none held in
/// memory, none lost, and `emitted` equal to `written` (the few on their
/// way to the writer make the two differ only for an instant).
fn assert_every_event_accounted_for(vigil: &Vigil) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = vigil.health();
        let o = &h["outbox"];
        let (emitted, written, pending, lost) = (
            o["emitted"].as_u64().expect("outbox.emitted"),
            o["written"].as_u64().expect("outbox.written"),
            o["pending"].as_u64().expect("outbox.pending"),
            o["lost"].as_u64().expect("outbox.lost"),
        );
        assert_eq!(lost, 0, "events lost before they were stored: {o}");
        if pending == 0 && emitted == written {
            return written;
        }
        assert!(std::time::Instant::now() < deadline, "events unaccounted for: {o}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_disk_degrades_health_and_the_events_made_meanwhile_are_delivered_once_it_frees() {
    let disk = Tmpfs::mount(24);
    let data = disk.path().join("data");
    let mut broker = Mosquitto::start();
    let sub = Subscriber::connect_persistent(broker.port, "vigil/disk/events");
    let vigil = Vigil::start(&chatty_ball_in("disk", &broker.url(), &data));
    let mut events = collect_events(&sub, "vigil/disk/events", Duration::from_secs(30), |v| v.len() >= 5);
    wait_until(Duration::from_secs(30), "health ok", || vigil.health()["status"] == "ok");

    // With the broker away the outbox must grow (while events are delivered
    // at once, redb reuses the pages it has and a full disk goes unnoticed).
    broker.stop_gracefully();
    let filler = fill(disk.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let degraded = loop {
        let degraded = vigil.health();
        if degraded["status"] == "degraded"
            && reasons(&degraded).iter().any(|r| r.contains("outbox cannot store"))
        {
            break degraded;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health never said the outbox cannot write: {degraded}\n{}",
            vigil.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(degraded["outbox"]["writable"], false, "{degraded}");
    // The camera goes on, its events held in memory.
    wait_until(Duration::from_secs(30), "events held in memory", || {
        vigil.health()["outbox"]["pending"].as_u64().unwrap_or(0) >= 20
    });
    let (code, _, ready) = vigil.get("/readyz");
    let ready: Value = serde_json::from_slice(&ready).expect("readyz JSON");
    assert_eq!((code, &ready["status"]), (200, &Value::from("degraded")), "{ready}");
    assert!(reasons(&ready).iter().any(|r| r.contains("outbox")), "{ready}");
    assert_eq!(metric(&vigil, "vigil_health_degraded{reason=\"outbox\"}"), Some(1.0));
    assert!(metric(&vigil, "vigil_events_pending").unwrap_or(0.0) >= 20.0);

    std::fs::remove_file(&filler).expect("free the space");
    broker.restart();
    wait_until(Duration::from_secs(60), "health ok again", || {
        let h = vigil.health();
        h["status"] == "ok" && h["outbox"]["pending"] == 0
    });
    assert_eq!(metric(&vigil, "vigil_health_degraded{reason=\"outbox\"}"), Some(0.0));
    let written = assert_every_event_accounted_for(&vigil);
    // And every one of them, those made while the disk was full included, is delivered.
    let h = vigil.health();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let seqs: BTreeSet<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
        let missing: Vec<u64> = (1..=written).filter(|s| !seqs.contains(s)).collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing;
        }
        if let Some(p) = sub.try_next_on("vigil/disk/events", Duration::from_secs(5)) {
            let v: Value = serde_json::from_slice(&p).expect("event JSON");
            assert_valid_event(&v);
            events.push(v);
        }
    };
    assert!(missing.is_empty(), "not delivered: {missing:?}; {}", vigil.health()["outbox"]);
    eprintln!(
        "{written} events, {} write errors while the disk was full, all delivered",
        h["outbox"]["write_errors"]
    );
    drop(vigil);
}

fn fixture(name: &str) -> PathBuf {
    repo_root().join("models/fixtures/misbehaving").join(name)
}

fn one_camera(device: &str, model: &Path, pattern: &str, model_extra: &str) -> String {
    // The broker is up, so that the model's trouble is the only reason.
    format!(
        "device_id = \"{device}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{{PORT}}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[models]]\nname = \"m\"\npath = \"{}\"\n{model_extra}\n\
         [[cameras]]\nname = \"cam1\"\nsource = \"test://{pattern}?width=64&height=64&fps=10\"\nfps = 10\nmodel = \"m\"\n",
        model.display()
    )
}

fn model_health(vigil: &Vigil) -> Value {
    vigil.health()["models"][0].clone()
}

#[test]
fn a_model_whose_every_run_fails_degrades_health_and_the_camera_keeps_streaming() {
    // A red picture: the output has 3 rows, fewer than a box needs.
    let broker = Mosquitto::start();
    let config = one_camera("failing", &fixture("data_dependent_v8.onnx"), "red", "")
        .replace("{PORT}", &broker.port.to_string());
    let vigil = Vigil::start(&config);
    let mut h = Value::Null;
    wait_until(Duration::from_secs(30), "health to say the model fails, the camera streaming", || {
        h = vigil.health();
        h["cameras"][0]["state"] == "streaming"
            && reasons(&h).iter().any(|r| r.starts_with("model m: every run has failed"))
    });
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["cameras"][0]["state"], "streaming", "{h}");
    let m = &h["models"][0];
    assert!(m["output_errors"].as_u64().unwrap_or(0) >= 1, "{m}");
    assert!(m["last_error"].as_str().unwrap_or("").contains("does not fit its decoder"), "{m}");
    assert_eq!(metric(&vigil, "vigil_health_degraded{reason=\"model_failing\"}"), Some(1.0));
    // It goes on failing, counted, while the camera streams.
    let before = model_health(&vigil)["output_errors"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(30), "more failed runs", || {
        model_health(&vigil)["output_errors"].as_u64().unwrap_or(0) >= before + 5
    });
    assert!(
        metric(&vigil, "vigil_model_runs_failed_total{slot=\"m\",reason=\"output\"}").unwrap_or(0.0) >= 5.0
    );
}

#[test]
fn a_run_past_its_timeout_is_stopped_and_counted_and_the_camera_goes_on() {
    // A white picture: the model loops 10^12 times; each run is stopped at 300 ms.
    let broker = Mosquitto::start();
    let config = one_camera("looping", &fixture("endless_when_bright.onnx"), "white", "run_timeout_ms = 300")
        .replace("{PORT}", &broker.port.to_string());
    let vigil = Vigil::start(&config);
    let mut h = Value::Null;
    wait_until(Duration::from_secs(30), "three runs stopped, the camera streaming", || {
        h = vigil.health();
        h["models"][0]["runs_stopped"].as_u64().unwrap_or(0) >= 3 && h["cameras"][0]["state"] == "streaming"
    });
    assert!(reasons(&h).iter().any(|r| r.starts_with("model m: every run has failed")), "{h}");
    assert!(h["models"][0]["last_error"].as_str().unwrap_or("").contains("stopped"), "{h}");
    assert_eq!(h["cameras"][0]["state"], "streaming", "{h}");
    // The runner is not stuck: runs keep being made and stopped.
    let stopped = h["models"][0]["runs_stopped"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(30), "more runs stopped", || {
        model_health(&vigil)["runs_stopped"].as_u64().unwrap_or(0) >= stopped + 3
    });
    // And the process still stops on time.
    let (exit, took, _) = vigil.terminate_within(Duration::from_secs(15));
    assert!(exit.is_some_and(|e| e.success()) && took < Duration::from_secs(5), "{exit:?} after {took:?}");
}
