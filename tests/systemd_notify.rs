//! Vigil under systemd's notify protocol (the Debian package's
//! `Type=notify` unit with `WatchdogSec=`), driven over a `NOTIFY_SOCKET` of
//! the test's own: READY=1 once up, WATCHDOG=1 at half the watchdog timeout
//! while frames get answers, no more pings once the model is wedged (so
//! systemd would restart Vigil), STOPPING=1 on SIGTERM.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::*;

/// The notify socket, as systemd would hold it.
struct Systemd {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Systemd {
    fn new() -> Systemd {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Systemd { socket, path, _dir: dir }
    }

    /// The next message, or `None` after `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).expect("timeout");
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn env(&self, watchdog: Duration) -> Vec<(&'static str, String)> {
        vec![
            ("NOTIFY_SOCKET", self.path.display().to_string()),
            ("WATCHDOG_USEC", watchdog.as_micros().to_string()),
        ]
    }
}

fn start(config: &str, systemd: &Systemd, watchdog: Duration) -> Vigil {
    let env = systemd.env(watchdog);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Vigil::start_with_env(tempfile::tempdir().expect("tempdir"), config, &env)
}

#[test]
fn ready_then_watchdog_pings_then_stopping() {
    let broker = Mosquitto::start();
    let systemd = Systemd::new();
    let vigil = start(&ball_config("notify", &broker.url(), 15), &systemd, Duration::from_secs(2));

    let ready = systemd.next(Duration::from_secs(30)).expect("READY=1 within 30 s");
    assert!(ready.lines().any(|l| l == "READY=1"), "first message must be READY=1, got {ready:?}");

    // Half of WatchdogSec=2s: a ping every second while the ball model answers.
    let mut pings = Vec::new();
    while pings.len() < 4 {
        let msg =
            systemd.next(Duration::from_secs(3)).expect("a WATCHDOG=1 within 3 s (half the timeout is 1 s)");
        assert_eq!(msg, "WATCHDOG=1", "only pings while running");
        pings.push(Instant::now());
    }
    for gap in pings.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap > Duration::from_millis(500) && gap < Duration::from_millis(1900), "ping gap {gap:?}");
    }

    let status = vigil.terminate();
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    while let Some(m) = systemd.next(Duration::from_millis(500)) {
        rest.push(m);
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "no STOPPING=1 on SIGTERM: {rest:?}");
}

#[test]
fn a_wedged_model_stops_the_pings() {
    // One Loop trip on dark frames, 10^12 on bright ones (models/fixtures/misbehaving).
    let model = repo_root().join("models/fixtures/misbehaving/endless_when_bright.onnx");
    let broker = Mosquitto::start();
    let systemd = Systemd::new();
    let config = format!(
        r#"device_id = "wedged"
[mqtt]
url = "{url}"
[http]
listen = "127.0.0.1:0"
[[models]]
name = "bright"
path = "{model}"
[[cameras]]
name = "white"
source = "test://white?width=320&height=240&fps=10"
fps = 10
model = "bright"
"#,
        url = broker.url(),
        model = model.display()
    );
    let vigil = start(&config, &systemd, Duration::from_secs(2));
    let ready = systemd.next(Duration::from_secs(30)).expect("READY=1 within 30 s");
    assert!(ready.starts_with("READY=1"), "{ready:?}");

    // Once the camera streams, frames keep arriving and the model answers
    // none: a STATUS saying why, then no more pings.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = Vec::new();
    let wedged = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = systemd
            .next(left.max(Duration::from_millis(1)))
            .unwrap_or_else(|| panic!("no STATUS=wedged within 30 s; got {before:?}\n{}", vigil.stderr()));
        if m.starts_with("STATUS=wedged") {
            break m;
        }
        before.push(m);
    };
    assert!(wedged.contains("camera white"), "{wedged}");
    // Three ping intervals of silence: systemd's watchdog would fire.
    let mut after = Vec::new();
    while let Some(m) = systemd.next(Duration::from_secs(3)) {
        after.push(m);
    }
    assert!(after.iter().all(|m| m != "WATCHDOG=1"), "pings went on after the model wedged: {after:?}");
}
