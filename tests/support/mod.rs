//! Test harness for the end-to-end tests: a real Mosquitto broker on a
//! loopback port, the real `vigil` binary, a real MQTT subscriber and a real
//! HTTP client. Nothing here is mocked.
//!
//! Waiting is always for a condition (a port accepting connections, a line on
//! stdout, a message on a topic, a health field) with a deadline, never a
//! fixed sleep.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repo root")
}

pub fn vigil_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vigil"))
}

pub fn ball_model() -> PathBuf {
    repo_root().join("models/ball/ball.onnx")
}

/// A free TCP port on loopback (the OS picks it; the listener closes at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Polls `cond` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Mosquitto broker of our own, on a loopback port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Extra configuration (TLS listeners...) appended to the generated file.
    extra: String,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Mosquitto {
        Mosquitto::start_with(port, "")
    }

    /// With extra `mosquitto.conf` lines (e.g. a TLS listener).
    pub fn start_with(port: u16, extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = Mosquitto { port, child: None, dir, extra: extra.to_owned() };
        m.restart();
        m
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// (Re)starts the broker on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let conf = self.dir.path().join("mosquitto.conf");
        // Persistence on: a broker stopped and started keeps its sessions,
        // so a test subscriber with a persistent session misses nothing.
        // `user`: started as root, Mosquitto would switch to its own user,
        // which cannot read this test's private temp files (TLS keys).
        let me = Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        std::fs::write(
            &conf,
            format!(
                "user {}\nlistener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_type all\nconnection_messages true\n{}",
                me.unwrap_or_else(|_| "root".into()),
                self.port,
                self.dir.path().display(),
                self.extra
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("mosquitto not found: run deploy/bootstrap.sh");
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(10), "mosquitto to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the broker saves its sessions and exits.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGSTOP: the broker keeps its connections open and answers nothing
    /// (a hung or overloaded broker, a half-open link).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let c = self.child.as_ref().expect("broker running");
        let ok = Command::new("kill").args([sig, &c.id().to_string()]).status().expect("kill");
        assert!(ok.success(), "kill {sig} failed");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Messages received on a subscription, in arrival order.
pub struct Subscriber {
    rx: mpsc::Receiver<(String, Vec<u8>)>,
    client: rumqttc::Client,
    /// Messages that arrived while waiting for another topic, kept in order.
    pending: std::cell::RefCell<std::collections::VecDeque<(String, Vec<u8>)>>,
}

impl Subscriber {
    pub fn connect(port: u16, topic: &str) -> Subscriber {
        Subscriber::connect_with(port, topic, false)
    }

    /// A subscriber whose session the broker keeps while it is away (and
    /// across a broker restart with persistence): QoS 1 messages published
    /// meanwhile wait for it.
    pub fn connect_persistent(port: u16, topic: &str) -> Subscriber {
        Subscriber::connect_with(port, topic, true)
    }

    fn connect_with(port: u16, topic: &str, persistent: bool) -> Subscriber {
        let id = format!("test-sub-{}", std::process::id() as u64 * 1000 + u64::from(free_port()));
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_clean_session(!persistent);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = rumqttc::Client::new(opts, 1000);
        client.subscribe(topic, rumqttc::QoS::AtLeastOnce).expect("subscribe");
        let resubscribe = client.clone();
        let topic_owned = topic.to_owned();
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    // A new session (broker restarted without ours): subscribe again.
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) if !ack.session_present => {
                        let _ = resubscribe.try_subscribe(&topic_owned, rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("subscription acknowledged");
        Subscriber { rx, client, pending: Default::default() }
    }

    /// The next message on `topic` (messages on other topics are kept for
    /// later calls), or panics after `timeout`.
    pub fn next_on(&self, topic: &str, timeout: Duration) -> Vec<u8> {
        {
            let mut pending = self.pending.borrow_mut();
            if let Some(i) = pending.iter().position(|(t, _)| t == topic) {
                return pending.remove(i).map(|(_, p)| p).unwrap_or_default();
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, payload)) if t == topic => return payload,
                Ok(other) => self.pending.borrow_mut().push_back(other),
                Err(_) => panic!("no message on {topic} within {timeout:?}"),
            }
        }
    }

    /// The next message on `topic`, or `None` once none has come for `quiet`.
    pub fn try_next_on(&self, topic: &str, quiet: Duration) -> Option<Vec<u8>> {
        {
            let mut pending = self.pending.borrow_mut();
            if let Some(i) = pending.iter().position(|(t, _)| t == topic) {
                return pending.remove(i).map(|(_, p)| p);
            }
        }
        loop {
            match self.rx.recv_timeout(quiet) {
                Ok((t, payload)) if t == topic => return Some(payload),
                Ok(other) => self.pending.borrow_mut().push_back(other),
                Err(_) => return None,
            }
        }
    }

    /// Waits for `payload` on `topic`.
    pub fn expect(&self, topic: &str, payload: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {payload:?} on {topic} within {timeout:?}");
            if self.next_on(topic, left) == payload.as_bytes() {
                return;
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// A running `vigil run` with its own config in a temp dir; killed on drop.
pub struct Vigil {
    child: Child,
    pub web: String,
    /// The API token (`None` with `auth = "none"`).
    pub token: Option<String>,
    pub dir: tempfile::TempDir,
    stderr_path: PathBuf,
}

impl Vigil {
    /// Writes `config` to a temp dir and starts `vigil run` on it; returns once
    /// the web address has been printed.
    pub fn start(config: &str) -> Vigil {
        Vigil::start_in(tempfile::tempdir().expect("tempdir"), config)
    }

    /// Like `start`, in a given directory (whose `vigil-data`, outbox
    /// included, a previous run may have left).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Vigil {
        Vigil::start_with_env(dir, config, &[])
    }

    /// Like `start_in`, with extra environment variables.
    pub fn start_with_env(dir: tempfile::TempDir, config: &str, envs: &[(&str, &str)]) -> Vigil {
        let cfg = dir.path().join("vigil.toml");
        std::fs::write(&cfg, config).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let mut child = Command::new(vigil_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr log"))
            .spawn()
            .expect("spawn vigil");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut web = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.trim().strip_prefix("web page: ") {
                    web = Some(url.trim_end_matches('/').to_owned());
                }
                if let (Some(w), Some(file)) = (&web, line.trim().strip_prefix("api token: ")) {
                    let token = std::fs::read_to_string(file).ok().map(|t| t.trim().to_owned());
                    let _ = tx.send((w.clone(), token));
                }
            }
        });
        let (web, token) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("vigil did not start within 60 s; stderr:\n{log}");
            }
        };
        Vigil { child, web, token, dir, stderr_path }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// GET with the API token.
    pub fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        http_request("GET", &format!("{}{path}", self.web), self.token.as_deref(), &[], None)
    }

    /// Any method, with the API token, optional headers and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (u16, String, Vec<u8>) {
        http_request(method, &format!("{}{path}", self.web), self.token.as_deref(), headers, body)
    }

    /// `request`, with the JSON body parsed.
    pub fn json(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, serde_json::Value) {
        let (status, _, body) = self.request(method, path, &[], body);
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    pub fn health(&self) -> serde_json::Value {
        let (status, _, body) = self.get("/healthz");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("health JSON")
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "vigil did not exit within 15 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit: (its status, or
    /// `None` if it was still running and got SIGKILL; the time from the
    /// signal to the exit; the directory, for another run).
    pub fn terminate_within(
        mut self,
        limit: Duration,
    ) -> (Option<std::process::ExitStatus>, Duration, tempfile::TempDir) {
        let pid = self.child.id().to_string();
        let t0 = Instant::now();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break Some(status);
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = t0.elapsed();
        (status, took, std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")))
    }

    /// SIGTERM, without waiting: see `wait_keep_dir`.
    pub fn send_term(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    }

    /// Waits (at most 15 s) for the exit after `send_term`; returns the
    /// exit status and the directory for another run.
    pub fn wait_keep_dir(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "vigil did not exit within 15 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// SIGTERM, wait for the exit, and keep the directory for another run.
    pub fn stop_keep_dir(mut self) -> tempfile::TempDir {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// SIGKILL: no chance to flush anything. Returns the directory so a new
    /// run can pick up what this one left on disk.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }
}

/// Validates a published message against the JSON Schema of its `type`
/// (schemas/<type>.v1.schema.json); panics with the reason.
pub fn assert_valid_event(v: &serde_json::Value) {
    let kind = v["type"].as_str().unwrap_or_else(|| panic!("no type: {v}"));
    let path = repo_root().join(format!("schemas/{kind}.v1.schema.json"));
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("no schema {}", path.display())),
    )
    .expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    if let Err(e) = validator.validate(v) {
        panic!("{kind} does not match its schema: {e}\n{v}");
    }
}

/// Events received on a topic, parsed, until `done` says so or `timeout`.
pub fn collect_events(
    sub: &Subscriber,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {timeout:?}; got {} events: {:?}",
            out.len(),
            out.iter().map(|e| e["type"].clone()).collect::<Vec<_>>()
        );
        let payload = sub.next_on(topic, left);
        let v: serde_json::Value = serde_json::from_slice(&payload).expect("event JSON");
        assert_valid_event(&v);
        out.push(v);
    }
    out
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET a URL without a token: (status, content-type, body). Non-2xx
/// statuses are returned, not errors.
pub fn http_get(url: &str) -> (u16, String, Vec<u8>) {
    http_request("GET", url, None, &[], None)
}

/// One HTTP request: (status, content-type, body).
pub fn http_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.map(<[u8]>::to_vec).unwrap_or_default()).expect("request");
    let mut resp = agent.run(req).expect("HTTP request");
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = resp.body_mut().read_to_vec().expect("body");
    (status, ctype, body)
}

/// Runs `vigil <args>` to completion: (exit code, stdout, stderr).
pub fn vigil_cmd(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(vigil_bin());
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run vigil");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config for one ball camera; `extra` is appended verbatim.
pub fn ball_config(device: &str, mqtt_url: &str, fps: u32) -> String {
    format!(
        r#"device_id = "{device}"
[mqtt]
url = "{mqtt_url}"
keep_alive_s = 5
[http]
listen = "127.0.0.1:0"
[[models]]
name = "ball"
path = "{model}"
confidence = 0.5
iou = 0.45
[[cameras]]
name = "cam1"
source = "test://ball?width=640&height=480&fps={fps}"
fps = {fps}
model = "ball"
[events]
publish_detections = true
"#,
        model = ball_model().display()
    )
}

/// The top of a config whose detections go out over MQTT: device, broker,
/// API on a free port, and `model` as the ball model slot (confidence 0.5).
/// Model settings and cameras follow.
pub fn detections_config(device: &str, mqtt_url: &str, model: &Path) -> String {
    format!(
        r#"device_id = "{device}"
[mqtt]
url = "{mqtt_url}"
[http]
listen = "127.0.0.1:0"
[events]
publish_detections = true
[[models]]
name = "ball"
path = "{model}"
confidence = 0.5
"#,
        model = model.display()
    )
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// `vigil-rtsp-test-server` on a loopback port: a real RTSP camera that
/// tests can kill, restart on the same port, and make stall.
pub struct RtspServer {
    pub port: u16,
    child: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    lines: Option<mpsc::Receiver<String>>,
}

impl RtspServer {
    pub fn start() -> RtspServer {
        let mut s = RtspServer { port: free_port(), child: None, stdin: None, lines: None };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil-rtsp-test-server"))
            .args(["--port", &self.port.to_string(), "--fps", "10"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vigil-rtsp-test-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(20)).expect("RTSP server prints ready");
        assert!(ready.starts_with("ready rtsp://"), "{ready}");
        self.stdin = child.stdin.take();
        self.child = Some(child);
        self.lines = Some(rx);
    }

    pub fn kill(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn command(&mut self, cmd: &str, answer: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "{cmd}").expect("write command");
        stdin.flush().expect("flush");
        let got =
            self.lines.as_ref().expect("running").recv_timeout(Duration::from_secs(10)).expect("answer");
        assert_eq!(got, answer);
    }

    /// Keeps sessions open but sends no more frames.
    pub fn stall(&mut self) {
        self.command("stall", "stalled");
    }

    pub fn resume(&mut self) {
        self.command("resume", "resumed");
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A config with no model and the given `[[cameras]]` tables, HTTP on a free
/// port and a broker nobody listens on (cameras do not need one).
pub fn cameras_config(cameras: &str) -> String {
    format!(
        "device_id = \"cams\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n{cameras}",
        free_port()
    )
}

/// The health entry of camera `name`.
pub fn camera_health(vigil: &Vigil, name: &str) -> serde_json::Value {
    let h = vigil.health();
    h["cameras"]
        .as_array()
        .expect("cameras")
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no camera {name} in {h}"))
}

/// An H.264 MP4 of the moving ball made by GStreamer itself.
pub fn make_clip(path: &Path, frames: u32, fps: u32) {
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "pattern=ball", &format!("num-buffers={frames}"), "!"])
        .args([&format!("video/x-raw,width=320,height=240,framerate={fps}/1"), "!", "videoconvert", "!"])
        .args(["x264enc", "speed-preset=ultrafast", "!", "mp4mux", "!", "filesink"])
        .arg(format!("location={}", path.display()))
        .status()
        .expect("gst-launch-1.0 (deploy/bootstrap.sh installs it)");
    assert!(status.success());
}

/// An MJPEG AVI of a white ball crossing a black frame once, left to right,
/// at mid-height, then `empty` frames of nothing: exactly one object, one pass.
pub fn make_crossing_clip(path: &Path, fps: u32, step_px: f32, empty: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, h, r) = (640usize, 480usize, 20.0f32);
    let mut x = -r;
    let mut n = 0;
    let frame = |cx: Option<f32>, n: usize| {
        let mut rgb = vec![0u8; w * h * 3];
        if let Some(cx) = cx {
            for y in 0..h {
                for xx in 0..w {
                    let (px, py) = (xx as f32 + 0.5, y as f32 + 0.5);
                    if (px - cx).powi(2) + (py - 240.0).powi(2) <= r * r {
                        rgb[(y * w + xx) * 3..(y * w + xx) * 3 + 3].fill(255);
                    }
                }
            }
        }
        write_jpeg(dir.path(), n, &rgb, w as u32, h as u32);
    };
    while x <= w as f32 + r {
        frame(Some(x), n);
        n += 1;
        x += step_px;
    }
    for _ in 0..empty {
        frame(None, n);
        n += 1;
    }
    mux_jpegs(dir.path(), fps, path);
}

/// One HTTP request with its response headers (names lower-case):
/// (status, headers, body).
pub fn http_full(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, std::collections::HashMap<String, String>, Vec<u8>) {
    let mut resp = send(method, url, headers, body, Some(Duration::from_secs(60)));
    let status = resp.status().as_u16();
    let hdrs = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = resp.body_mut().read_to_vec().expect("body");
    (status, hdrs, body)
}

/// A GET whose body is read as it arrives (MJPEG, server-sent events):
/// (status, content-type, reader).
pub fn http_stream(url: &str, headers: &[(&str, &str)]) -> (u16, String, Box<dyn std::io::Read + Send>) {
    let resp = send("GET", url, headers, None, None);
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (status, ctype, Box::new(resp.into_body().into_reader()))
}

fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Option<Duration>,
) -> ureq::http::Response<ureq::Body> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .timeout_global(timeout)
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.map(<[u8]>::to_vec).unwrap_or_default()).expect("request");
    agent.run(req).expect("HTTP request")
}

/// The ball model with its ONNX `doc_string` set to `tag`: a different file
/// (another sha256, so another version) that detects exactly as the original.
/// Protobuf lets a later occurrence of a singular field override an earlier
/// one, so appending the field to the serialized ModelProto is enough.
pub fn ball_model_variant(tag: &str) -> Vec<u8> {
    model_variant(&ball_model(), tag)
}

/// [`ball_model_variant`] of any model file.
pub fn model_variant(model: &Path, tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(model).expect("model");
    assert!(tag.len() < 128, "one-byte length prefix");
    bytes.push((6 << 3) | 2); // field 6 (doc_string), length-delimited
    bytes.push(tag.len() as u8);
    bytes.extend_from_slice(tag.as_bytes());
    bytes
}

/// The detections messages' `model.version`s and `frame.seq`s, in order.
pub fn model_version(ev: &serde_json::Value) -> u64 {
    ev["model"]["version"].as_u64().unwrap_or_else(|| panic!("no model.version in {ev}"))
}

/// An MJPEG AVI of a white ball (radius 20) on a dark, slightly noisy
/// background (as a real sensor's), at the centre given per frame (`None`:
/// no ball), 640x480.
pub fn make_scene_clip(path: &Path, fps: u32, centres: &[Option<(f32, f32)>]) {
    make_scene_clip_sized(path, fps, (640, 480), centres);
}

/// [`make_scene_clip`] at another frame size (the ball keeps its radius).
pub fn make_scene_clip_sized(path: &Path, fps: u32, size: (usize, usize), centres: &[Option<(f32, f32)>]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, h, r) = (size.0, size.1, 20.0f32);
    for (n, c) in centres.iter().enumerate() {
        let mut rgb = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                // A fixed dark texture plus a little per-frame noise.
                let texture = ((x / 16 + y / 16) % 2 * 12) as u32;
                let noise = ((x as u32).wrapping_mul(73_856_093)
                    ^ (y as u32).wrapping_mul(19_349_663)
                    ^ (n as u32).wrapping_mul(83_492_791))
                    >> 29;
                let mut v = (20 + texture + noise) as u8;
                if let Some((cx, cy)) = c
                    && (x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2) <= r * r
                {
                    v = 255;
                }
                rgb[(y * w + x) * 3..(y * w + x) * 3 + 3].fill(v);
            }
        }
        write_jpeg(dir.path(), n, &rgb, w as u32, h as u32);
    }
    mux_jpegs(dir.path(), fps, path);
}

/// The ball model made to take a batch (`models/make_batched.py`): any size,
/// or exactly `fixed` frames. Built once into `.deps/fixtures`, keyed by the
/// source model's and the script's bytes.
pub fn batched_ball_model(fixed: Option<usize>) -> PathBuf {
    let script = repo_root().join("models/make_batched.py");
    let key = fixture_key(&[&ball_model(), &script]);
    let tag = fixed.map_or("dyn".to_string(), |n| format!("b{n}"));
    cached_fixture(&format!("ball-{tag}-{key}.onnx"), |out| {
        let mut cmd = Command::new(venv_python());
        cmd.arg(&script).arg(ball_model()).arg(out);
        if let Some(n) = fixed {
            cmd.args(["--fixed", &n.to_string()]);
        }
        let o = cmd.output().expect("make_batched.py");
        assert!(o.status.success(), "make_batched.py: {}", String::from_utf8_lossy(&o.stderr));
    })
}

/// The project's Python (with onnx, onnxruntime, numpy, OpenCV), made by
/// deploy/bootstrap.sh.
pub fn venv_python() -> PathBuf {
    let py = repo_root().join(".deps/venv/bin/python");
    assert!(py.is_file(), "{} missing: run deploy/bootstrap.sh", py.display());
    py
}

/// A key for a fixture made from `inputs` (a model, the script that makes
/// it): 16 hex digits of the sha256 of their bytes, so that a changed input
/// or script makes a new fixture instead of reusing the old one.
pub fn fixture_key(inputs: &[&Path]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for path in inputs {
        h.update(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `.deps/fixtures/<name>`, made by `build(path)` the first time. Tests run
/// in parallel (those of one binary in one process): each builds under a
/// temp file's name and renames it into place.
pub fn cached_fixture(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let dir = repo_root().join(".deps/fixtures");
    std::fs::create_dir_all(&dir).expect("fixtures dir");
    let out = dir.join(name);
    if !out.is_file() {
        let tmp =
            tempfile::Builder::new().suffix(".onnx").tempfile_in(&dir).expect("temp file").into_temp_path();
        build(&tmp);
        tmp.persist(&out).expect("rename");
    }
    out
}

/// Frame `n` of a clip being made, as `<dir>/<n:05>.jpg`.
fn write_jpeg(dir: &Path, n: usize, rgb: &[u8], w: u32, h: u32) {
    let jpeg = vigil_pipeline::annotate::encode_jpeg(rgb, w, h, 90).expect("jpeg");
    std::fs::write(dir.join(format!("{n:05}.jpg")), jpeg).expect("frame");
}

/// `<dir>/%05d.jpg` muxed, as they are, into an MJPEG AVI at `fps`.
fn mux_jpegs(dir: &Path, fps: u32, path: &Path) {
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "multifilesrc"])
        .arg(format!("location={}/%05d.jpg", dir.display()))
        .arg(format!("caps=image/jpeg,framerate={fps}/1"))
        .args(["!", "jpegparse", "!", "avimux", "!", "filesink"])
        .arg(format!("location={}", path.display()))
        .status()
        .expect("gst-launch-1.0");
    assert!(status.success(), "making the clip");
}

/// A raw HTTP client on a streaming route (MJPEG, server-sent events) that
/// keeps reading in its own thread, as a browser tab left open does: how
/// many bytes came, and whether the server ended the stream.
pub struct StreamReader {
    pub bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StreamReader {
    /// GET `path` on `web` (`http://127.0.0.1:PORT`) with the token.
    pub fn open(web: &str, path: &str, token: Option<&str>) -> StreamReader {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let addr = web.trim_start_matches("http://");
        let mut conn = TcpStream::connect(addr).expect("connect");
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Accept: */*\r\n\r\n").expect("request");
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, e) = (bytes.clone(), ended.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        b.fetch_add(n as u64, Ordering::SeqCst);
                    }
                }
            }
            e.store(true, Ordering::SeqCst);
        });
        StreamReader { bytes, ended }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The unix time in ms at which an event was made, from its UUIDv7 `id`
/// (its first 48 bits).
pub fn event_made_ms(ev: &serde_json::Value) -> u64 {
    let id = ev["id"].as_str().unwrap_or_else(|| panic!("no id in {ev}"));
    u64::from_str_radix(&id.replace('-', "")[..12], 16).expect("UUIDv7 time")
}

pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}
