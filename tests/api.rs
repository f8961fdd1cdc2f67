//! The local API over the real appliance: every route with and without its
//! token, a model swap under a camera streaming at full rate, bad uploads
//! refused while the line keeps running, and the active version surviving a
//! restart. Real `vigil`, real GStreamer test source, real ONNX Runtime, real
//! Mosquitto, real HTTP.

mod support;

use std::io::Read;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::*;

/// The swap test asserts that not one frame is dropped, which a swap keeps to
/// on a box with CPU to spare. The other tests here run side by side, each
/// with its own `vigil` building model sessions: at the moment of the swap
/// they could take that spare CPU away (a fresh-clone run once dropped one
/// frame so). The swap test runs alone; the others may share the machine.
static MACHINE: RwLock<()> = RwLock::new(());

fn machine_shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn machine_alone() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One ball camera at `fps` (no `fps` cap on the camera: every frame is
/// inferred), a rule on the `ball` label, and `http_extra` under `[http]`.
fn config(mqtt_url: &str, fps: u32, http_extra: &str) -> String {
    format!(
        r#"device_id = "api"
[mqtt]
url = "{mqtt_url}"
keep_alive_s = 5
[http]
listen = "127.0.0.1:0"
{http_extra}
[events]
publish_detections = true
update_interval_s = 1
[[models]]
name = "ball"
path = "{model}"
confidence = 0.5
iou = 0.45
[[cameras]]
name = "cam1"
source = "test://ball?width=640&height=480&fps={fps}"
model = "ball"
zones = [{{ name = "all", polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]] }}]
[[rules]]
name = "ball-lingers"
type = "safety"
camera = "cam1"
labels = ["ball"]
zone = "all"
min_duration_s = 3600
"#,
        model = ball_model().display()
    )
}

fn wait_streaming(v: &Vigil) {
    wait_until(Duration::from_secs(30), "cam1 streaming", || {
        camera_health(v, "cam1")["state"] == "streaming"
    });
}

fn bearer(v: &Vigil) -> String {
    format!("Bearer {}", v.token.as_deref().expect("token auth is the default"))
}

fn error_of(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    v["error"].as_str().unwrap_or_else(|| panic!("no error field: {v}")).to_owned()
}

/// Every protected route of the OpenAPI document, as (method, path with
/// real parameters).
const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/metrics"),
    ("GET", "/api/v1/cameras"),
    ("GET", "/api/v1/cameras/cam1"),
    ("GET", "/api/v1/cameras/cam1/snapshot.jpg"),
    ("GET", "/api/v1/cameras/cam1/stream.mjpg"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/events/stream"),
    ("GET", "/api/v1/snapshots/none.jpg"),
    ("GET", "/api/v1/models"),
    ("GET", "/api/v1/models/ball"),
    ("POST", "/api/v1/models/ball/versions"),
    ("POST", "/api/v1/models/ball/versions/1/activate"),
    ("POST", "/api/v1/models/ball/rollback"),
    ("DELETE", "/api/v1/models/ball/versions/1"),
    ("GET", "/api/v1/config"),
];
const PUBLIC: &[&str] = &["/healthz", "/readyz", "/api/v1/openapi.json"];

/// `/api/v1/models/ball/versions/1/activate` matches `/api/v1/models/{slot}/versions/{version}/activate`.
fn matches_template(path: &str, template: &str) -> bool {
    let (a, b): (Vec<_>, Vec<_>) = (path.split('/').collect(), template.split('/').collect());
    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x == y || y.starts_with('{'))
}

#[test]
fn every_route_answers_with_its_token_and_refuses_without() {
    let _machine = machine_shared();
    let broker = Mosquitto::start();
    // Secrets in the config, so the config route's leaving them out is tested
    // (Mosquitto here allows anonymous clients and ignores the credentials).
    let cfg = config(&broker.url(), 15, "").replace(
        "keep_alive_s = 5\n",
        "keep_alive_s = 5\nusername = \"line-7\"\npassword = \"mqtt-secret-4f1c\"\n",
    );
    assert!(cfg.contains("mqtt-secret-4f1c"));
    let v = Vigil::start(&cfg);
    wait_streaming(&v);
    let auth = bearer(&v);
    let url = |p: &str| format!("{}{p}", v.web);

    // The OpenAPI document lists exactly the routes tested here.
    let (status, _, body) = http_get(&url("/api/v1/openapi.json"));
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("openapi JSON");
    assert_eq!(doc["openapi"].as_str().map(|s| &s[..2]), Some("3."));
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    for (method, template) in &documented {
        let tested = PUBLIC.contains(&template.as_str())
            || PROTECTED.iter().any(|(m, p)| m == method && matches_template(p, template));
        assert!(tested, "{method} {template} is documented but not tested here");
    }
    assert_eq!(documented.len(), PROTECTED.len() + PUBLIC.len(), "{documented:?}");

    // Public routes: no token needed.
    for p in PUBLIC {
        assert_eq!(http_get(&url(p)).0, 200, "{p}");
    }
    let (status, ctype, body) = http_get(&url("/"));
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(String::from_utf8_lossy(&body).contains("<title>Vigil</title>"));

    // Protected routes: 401 with a JSON reason and a Bearer challenge, for
    // no token, a wrong token and a token of the wrong length; a cookie
    // works for GET only (a cross-site form cannot send a header).
    let cookie = format!("vigil_token={}", v.token.as_deref().unwrap_or_default());
    for (method, path) in PROTECTED {
        let (status, headers, body) = http_full(method, &url(path), &[], None);
        assert_eq!(status, 401, "{method} {path} without a token");
        assert!(error_of(&body).contains("Authorization: Bearer"), "{method} {path}");
        assert_eq!(headers.get("www-authenticate").map(String::as_str), Some("Bearer"), "{method} {path}");
        for wrong in
            ["Bearer wrong", "Bearer 0000000000000000000000000000000000000000000000000000000000000000"]
        {
            let (status, _, body) = http_full(method, &url(path), &[("Authorization", wrong)], None);
            assert_eq!(status, 401, "{method} {path} with {wrong}");
            assert_eq!(error_of(&body), "wrong token");
        }
        if *method != "GET" {
            let (status, _, _) = http_full(method, &url(path), &[("Cookie", &cookie)], None);
            assert_eq!(status, 401, "{method} {path} must not take the cookie");
        }
    }

    let get = |p: &str| http_full("GET", &url(p), &[("Authorization", &auth)], None);

    // /metrics: Prometheus text with the numbers the issue names.
    wait_until(Duration::from_secs(30), "a frame through the model", || {
        camera_health(&v, "cam1")["frames_processed"].as_u64() > Some(0)
    });
    let (status, headers, body) = get("/metrics");
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/plain"));
    let text = String::from_utf8(body).expect("utf-8");
    for needle in [
        "vigil_camera_frames_total{camera=\"cam1\",stage=\"processed\"}",
        "vigil_camera_frames_dropped_total{camera=\"cam1\"",
        "vigil_camera_fps{camera=\"cam1\",stage=\"processed\"}",
        "vigil_stage_seconds_bucket{",
        "stage=\"inference\"",
        "vigil_outbox_events ",
        "vigil_camera_reconnects_total{camera=\"cam1\"}",
        "vigil_model_info{",
        "provider=\"CPUExecutionProvider\"",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    // A streaming camera's frames are fresh, through the model as well.
    for stage in ["received", "processed"] {
        let key = format!("vigil_camera_last_frame_age_seconds{{camera=\"cam1\",stage=\"{stage}\"}} ");
        let age: Option<f64> =
            text.lines().find_map(|l| l.strip_prefix(key.as_str())).and_then(|v| v.parse().ok());
        assert!(age.is_some_and(|a| (0.0..10.0).contains(&a)), "{key}: {age:?}\n{text}");
    }
    // The same through the cookie, as the web page reads it.
    assert_eq!(http_full("GET", &url("/metrics"), &[("Cookie", &cookie)], None).0, 200);

    // Cameras.
    let (status, _, body) = get("/api/v1/cameras");
    assert_eq!(status, 200);
    let cams: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(cams["cameras"][0]["name"], "cam1");
    assert_eq!(cams["cameras"][0]["state"], "streaming");
    let (status, _, body) = get("/api/v1/cameras/cam1");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).expect("JSON")["name"], "cam1");
    for p in ["/api/v1/cameras/nope", "/api/v1/cameras/nope/snapshot.jpg", "/api/v1/cameras/nope/stream.mjpg"]
    {
        let (status, _, body) = get(p);
        assert_eq!(status, 404, "{p}");
        assert!(error_of(&body).contains("nope"), "{p}");
    }

    // The annotated snapshot.
    let (status, headers, body) = get("/api/v1/cameras/cam1/snapshot.jpg");
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/jpeg");
    let mut dec = zune_jpeg::JpegDecoder::new(&body[..]);
    dec.decode_headers().expect("a JPEG");
    assert_eq!(dec.dimensions(), Some((640, 480)));

    // MJPEG: two distinct JPEG parts arrive.
    let (status, ctype, mut reader) =
        http_stream(&url("/api/v1/cameras/cam1/stream.mjpg"), &[("Authorization", &auth)]);
    assert_eq!(status, 200);
    assert_eq!(ctype, "multipart/x-mixed-replace; boundary=vigilframe");
    let parts = read_mjpeg_parts(&mut reader, 2);
    assert_ne!(parts[0], parts[1], "the live view moves");
    for p in &parts {
        let mut dec = zune_jpeg::JpegDecoder::new(&p[..]);
        dec.decode().expect("each part is a whole JPEG");
    }
    drop(reader);

    // Events: the list, its filters and the live stream.
    wait_until(Duration::from_secs(30), "an object.start event", || {
        let (_, _, body) = get("/api/v1/events?type=object.start");
        serde_json::from_slice::<serde_json::Value>(&body).expect("JSON")["events"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    let events = |q: &str| -> Vec<serde_json::Value> {
        let (status, _, body) = get(&format!("/api/v1/events{q}"));
        assert_eq!(status, 200, "{q}");
        serde_json::from_slice::<serde_json::Value>(&body).expect("JSON")["events"]
            .as_array()
            .expect("events")
            .clone()
    };
    let all = events("");
    assert!(all.iter().any(|e| e["type"] == "object.start"));
    // The list holds events as recorded; `published_at` and `latency_ms`
    // are stamped when MQTT carries them, so check against the schema with those.
    for e in &all {
        let mut e = e.clone();
        e["published_at"] = e["time"].clone();
        e["latency_ms"] = 0.into();
        assert_valid_event(&e);
        assert_eq!(e["model"]["version"], 1);
    }
    assert!(events("?type=object.start").iter().all(|e| e["type"] == "object.start"));
    assert!(events("?camera=nope").is_empty());
    assert_eq!(events("?limit=1").len(), 1);
    let newest = all.iter().filter_map(|e| e["seq"].as_u64()).max().expect("seq");
    assert!(events(&format!("?after={newest}")).iter().all(|e| e["seq"].as_u64() > Some(newest)));
    for bad in ["?limit=x", "?limit=0", "?after=-1"] {
        let (status, _, body) = get(&format!("/api/v1/events{bad}"));
        assert_eq!(status, 400, "{bad}");
        assert!(!error_of(&body).is_empty());
    }

    let (status, ctype, reader) = http_stream(&url("/api/v1/events/stream"), &[("Cookie", &cookie)]);
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let (kind, data) = next_sse(reader);
    let ev: serde_json::Value = serde_json::from_str(&data).expect("event JSON");
    assert_eq!(ev["type"], kind.as_str());
    assert!(ev["seq"].as_u64() > Some(newest), "live events are new: {ev}");
    assert_eq!(ev["camera"], "cam1");

    // Stored event snapshots: unknown names and path tricks are 404. The
    // tricks aim at real JPEGs outside the snapshots folder, so only the
    // name check stands between them and a 200.
    let data = v.dir.path().join("vigil-data");
    let jpeg = get("/api/v1/cameras/cam1/snapshot.jpg").2;
    std::fs::write(data.join("outside.jpg"), &jpeg).expect("a JPEG beside the snapshots");
    std::fs::write(v.dir.path().join("outside.jpg"), &jpeg).expect("a JPEG beside the config");
    for p in [
        "/api/v1/snapshots/none.jpg",
        "/api/v1/snapshots/..%2Foutside.jpg",
        "/api/v1/snapshots/..%2F..%2Foutside.jpg",
        "/api/v1/snapshots/.outside.jpg",
    ] {
        assert_eq!(get(p).0, 404, "{p}");
    }
    let absolute = data.join("outside.jpg").display().to_string().replace('/', "%2F");
    assert_eq!(get(&format!("/api/v1/snapshots/{absolute}")).0, 404, "{absolute}");

    // Models.
    let (status, _, body) = get("/api/v1/models");
    assert_eq!(status, 200);
    let models: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let ball = &models["models"][0];
    assert_eq!(ball["name"], "ball");
    assert_eq!(ball["active"], 1);
    assert_eq!(ball["cameras"], serde_json::json!(["cam1"]));
    assert_eq!(ball["required_labels"], serde_json::json!(["ball"]));
    let v1 = &ball["versions"][0];
    let sha = format!("{:x}", Sha256::digest(std::fs::read(ball_model()).expect("model")));
    assert_eq!(v1["sha256"], sha.as_str());
    assert_eq!(v1["status"], "active");
    assert_eq!(v1["decoder"], "yolov8");
    assert_eq!(v1["labels"], serde_json::json!(["ball"]));
    assert_eq!(v1["origin"], "config");
    assert_eq!(v1["input"], serde_json::json!([640, 640]), "{v1}");
    assert_eq!(get("/api/v1/models/ball").0, 200);
    assert_eq!(get("/api/v1/models/nope").0, 404);

    let call = |m: &str, p: &str| {
        let (status, _, body) = http_full(m, &url(p), &[("Authorization", &auth)], None);
        (status, error_of(&body))
    };
    let (status, why) = call("POST", "/api/v1/models/ball/rollback");
    assert_eq!(status, 409, "{why}");
    assert!(why.contains("no previous version"), "{why}");
    assert_eq!(call("POST", "/api/v1/models/ball/versions/1/activate").0, 409);
    assert_eq!(call("POST", "/api/v1/models/ball/versions/99/activate").0, 404);
    assert_eq!(call("POST", "/api/v1/models/ball/versions/-1/activate").0, 400);
    assert_eq!(call("DELETE", "/api/v1/models/ball/versions/1").0, 409);
    assert_eq!(call("DELETE", "/api/v1/models/ball/versions/99").0, 404);
    assert_eq!(call("POST", "/api/v1/models/nope/rollback").0, 404);

    // The effective config, with secrets left out.
    let (status, _, body) = get("/api/v1/config");
    assert_eq!(status, 200);
    let cfg: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(cfg["device_id"], "api");
    assert_eq!(cfg["cameras"][0]["name"], "cam1");
    assert_eq!(cfg["mqtt"]["username"], "line-7", "the section with the secret is shown: {cfg}");
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("mqtt-secret-4f1c"), "the MQTT password is left out: {text}");
    let token = v.token.as_deref().expect("token");
    assert!(!text.contains(token), "the API token is left out");

    // Anything else: a JSON 404 that points at the document.
    let (status, _, body) = get("/api/v1/nope");
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("openapi.json"));
}

/// Reads `n` JPEG parts from an MJPEG stream.
fn read_mjpeg_parts(r: &mut dyn Read, n: usize) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let mut parts = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while parts.len() < n {
        let got = r.read(&mut chunk).expect("MJPEG stream");
        assert!(got > 0, "the MJPEG stream ended");
        buf.extend_from_slice(&chunk[..got]);
        // A part: headers, blank line, Content-Length bytes of JPEG.
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length")
                .trim()
                .parse()
                .expect("length");
            assert!(head.starts_with("--vigilframe"), "{head}");
            if buf.len() < end + 4 + len + 2 {
                break;
            }
            let jpeg = buf[end + 4..end + 4 + len].to_vec();
            assert_eq!(&jpeg[..2], b"\xff\xd8", "a JPEG starts with SOI");
            parts.push(jpeg);
            buf.drain(..end + 4 + len + 2);
        }
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The first server-sent event with data: (event name, data).
fn next_sse(reader: Box<dyn Read + Send>) -> (String, String) {
    use std::io::BufRead;
    let mut kind = String::new();
    for line in std::io::BufReader::new(reader).lines() {
        let line = line.expect("SSE stream");
        if let Some(k) = line.strip_prefix("event: ") {
            kind = k.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ") {
            return (kind, d.to_owned());
        }
    }
    panic!("the event stream ended");
}

/// What the activation returned and what the line saw around it.
#[test]
fn a_model_swap_under_full_rate_drops_no_frame_and_switches_in_one_step() {
    let _machine = machine_alone();
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "vigil/api/#");
    let v = Vigil::start(&config(&broker.url(), 30, ""));
    wait_streaming(&v);
    let auth = bearer(&v);
    let url = |p: &str| format!("{}{p}", v.web);

    // Version 2: a different file that detects the same.
    let v2 = ball_model_variant("vigil api test v2");
    let v2_sha = format!("{:x}", Sha256::digest(&v2));
    let (status, _, body) =
        http_full("POST", &url("/api/v1/models/ball/versions"), &[("Authorization", &auth)], Some(&v2));
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let stored: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(stored["version"]["version"], 2);
    assert_eq!(stored["version"]["sha256"], v2_sha.as_str());
    assert!(stored.get("activation").is_none(), "not activated unless asked");

    // The line runs on version 1 at full rate before the swap.
    let frames_at = |v: &Vigil| {
        let c = camera_health(v, "cam1");
        (
            c["frames_processed"].as_u64().expect("processed"),
            c["frames_dropped_busy"].as_u64().expect("dropped"),
        )
    };
    let mut before = Vec::new();
    while before.len() < 20 {
        let ev: serde_json::Value =
            serde_json::from_slice(&sub.next_on("vigil/api/detections", Duration::from_secs(30)))
                .expect("JSON");
        assert_eq!(model_version(&ev), 1);
        before.push(ev);
    }
    // ... and the tracker has reported the ball, by v1.
    let mut v1_events = 0;
    while v1_events == 0 {
        let ev: serde_json::Value =
            serde_json::from_slice(&sub.next_on("vigil/api/events", Duration::from_secs(30))).expect("JSON");
        if ev["type"].as_str().is_some_and(|t| t.starts_with("object.")) {
            assert_eq!(ev["model"]["version"], 1, "{ev}");
            v1_events += 1;
        }
    }
    let (processed0, dropped0) = frames_at(&v);
    let detections_dropped0 = v.health()["mqtt"]["detections_dropped"].as_u64().expect("detections_dropped");

    let t = Instant::now();
    let (status, _, body) =
        http_full("POST", &url("/api/v1/models/ball/versions/2/activate"), &[("Authorization", &auth)], None);
    let request_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let a: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(a["version"], 2);
    assert_eq!(a["sha256"], v2_sha.as_str());
    let (prepare_ms, switch_ms) =
        (a["prepare_ms"].as_f64().expect("prepare_ms"), a["switch_ms"].as_f64().expect("switch_ms"));
    // The switch is one pointer swap: it happens after the model was prepared
    // off the line and takes a sliver of that time.
    assert!(switch_ms.is_finite() && switch_ms > 0.0 && prepare_ms > 0.0, "{a}");
    assert!(switch_ms < prepare_ms / 10.0, "the switch must not include preparing the model: {a}");
    println!(
        "model swap: prepared in {prepare_ms:.1} ms off the line, switched in {switch_ms:.4} ms, request {request_ms:.0} ms"
    );

    // Detections continue frame after frame: every frame sequence number,
    // each inferred by v1 up to one frame and by v2 from the next on.
    let mut after = Vec::new();
    while after.len() < 30 {
        let ev: serde_json::Value =
            serde_json::from_slice(&sub.next_on("vigil/api/detections", Duration::from_secs(30)))
                .expect("JSON");
        if model_version(&ev) == 2 {
            after.push(ev);
        } else {
            assert!(after.is_empty(), "a v1 frame after a v2 frame: {ev}");
            before.push(ev);
        }
    }
    let (processed1, dropped1) = frames_at(&v);
    assert_eq!(dropped1, dropped0, "frames dropped during the swap");
    assert_eq!(
        v.health()["mqtt"]["detections_dropped"].as_u64(),
        Some(detections_dropped0),
        "the detections stream must be complete for the sequence check below"
    );
    assert!(processed1 >= processed0 + 30);
    let seqs: Vec<u64> =
        before.iter().chain(&after).map(|e| e["frame"]["seq"].as_u64().expect("frame.seq")).collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a frame went missing around the swap: {seqs:?}");
    }
    for e in &after {
        assert_eq!(e["model"]["sha256"], v2_sha.as_str());
    }

    // model.activated on MQTT, and object events after it name v2.
    let v1_sha = format!("{:x}", Sha256::digest(std::fs::read(ball_model()).expect("model")));
    let (mut activated, mut object_v2) = (None, None);
    while activated.is_none() || object_v2.is_none() {
        let ev: serde_json::Value =
            serde_json::from_slice(&sub.next_on("vigil/api/events", Duration::from_secs(30))).expect("JSON");
        assert_valid_event(&ev);
        let kind = ev["type"].as_str().unwrap_or_default().to_owned();
        if kind == "model.activated" {
            activated = Some(ev);
        } else if kind.starts_with("object.") && ev["model"]["version"] == 2 {
            assert_eq!(ev["model"]["sha256"], v2_sha.as_str());
            object_v2 = Some(ev);
        } else if kind.starts_with("object.") {
            assert_eq!(ev["model"]["version"], 1, "{ev}");
            assert_eq!(ev["model"]["sha256"], v1_sha.as_str());
            v1_events += 1;
        }
    }
    assert!(v1_events > 0, "events before the switch name v1");
    let activated = activated.expect("model.activated");
    assert_eq!(activated["version"], 2);
    assert_eq!(activated["model"]["sha256"], v2_sha.as_str());
    assert_eq!(activated["previous"], v1_sha.as_str());
    // The API's recent events name the model, too.
    let (_, _, body) =
        http_full("GET", &url("/api/v1/events?type=model.activated"), &[("Authorization", &auth)], None);
    let listed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(listed["events"][0]["version"], 2);

    // Roll back: instant (v1 is still in memory), v1 serves again.
    let (status, _, body) =
        http_full("POST", &url("/api/v1/models/ball/rollback"), &[("Authorization", &auth)], None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let r: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(r["version"], 1);
    assert_eq!(r["prepare_ms"], 0.0);
    loop {
        let ev: serde_json::Value =
            serde_json::from_slice(&sub.next_on("vigil/api/detections", Duration::from_secs(30)))
                .expect("JSON");
        if model_version(&ev) == 1 {
            break;
        }
    }
    assert_eq!(frames_at(&v).1, dropped0, "frames dropped during the rollback");

    // v2 is no longer in use: it can be deleted, and is gone.
    let (status, _, _) =
        http_full("DELETE", &url("/api/v1/models/ball/versions/2"), &[("Authorization", &auth)], None);
    assert_eq!(status, 204);
    let (_, _, body) = http_full("GET", &url("/api/v1/models/ball"), &[("Authorization", &auth)], None);
    let slot: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(slot["versions"].as_array().map(Vec::len), Some(1), "{slot}");
}

#[test]
fn the_active_version_survives_a_restart() {
    let _machine = machine_shared();
    let broker = Mosquitto::start();
    let cfg = config(&broker.url(), 15, "");
    let v = Vigil::start(&cfg);
    wait_streaming(&v);
    let v2 = ball_model_variant("vigil restart test");
    let (status, _, body) = http_full(
        "POST",
        &format!("{}/api/v1/models/ball/versions?activate=true", v.web),
        &[("Authorization", &bearer(&v))],
        Some(&v2),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let stored: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(stored["activation"]["version"], 2);
    let dir = v.stop_keep_dir();

    let sub = Subscriber::connect(broker.port, "vigil/api/detections");
    let v = Vigil::start_in(dir, &cfg);
    let h = v.health();
    let model = h["models"].as_array().and_then(|m| m.first()).cloned().expect("a model");
    assert_eq!(model["version"], 2, "{model}");
    assert_eq!(model["sha256"], format!("{:x}", Sha256::digest(&v2)).as_str());
    let ev: serde_json::Value =
        serde_json::from_slice(&sub.next_on("vigil/api/detections", Duration::from_secs(30))).expect("JSON");
    assert_eq!(model_version(&ev), 2);
    // And v1 is still there to go back to.
    let (status, _, body) = http_full(
        "POST",
        &format!("{}/api/v1/models/ball/rollback", v.web),
        &[("Authorization", &bearer(&v))],
        None,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// An Ed25519 key pair made with openssl, and signatures made with openssl,
/// exactly as the README tells operators to.
struct Signer {
    dir: tempfile::TempDir,
}

impl Signer {
    fn new() -> Signer {
        let dir = tempfile::tempdir().expect("tempdir");
        sh(&format!(
            "cd {d} && openssl genpkey -algorithm ed25519 -out key.pem && \
             openssl pkey -in key.pem -pubout -outform DER | tail -c 32 | base64 > signing.pub",
            d = dir.path().display()
        ));
        Signer { dir }
    }

    fn public_key(&self) -> std::path::PathBuf {
        self.dir.path().join("signing.pub")
    }

    fn sign(&self, bytes: &[u8]) -> String {
        let model = self.dir.path().join("model.onnx");
        std::fs::write(&model, bytes).expect("write");
        sh(&format!(
            "cd {d} && openssl dgst -sha256 -binary model.onnx > digest.bin && \
             openssl pkeyutl -sign -inkey key.pem -rawin -in digest.bin | base64 -w0",
            d = self.dir.path().display()
        ))
    }
}

fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

#[test]
fn bad_uploads_are_refused_with_a_clear_4xx_while_the_line_keeps_running() {
    let _machine = machine_shared();
    let signer = Signer::new();
    let broker = Mosquitto::start();
    let http = format!("max_upload_mb = 1\nmodel_signing_key = \"{}\"", signer.public_key().display());
    let v = Vigil::start(&config(&broker.url(), 15, &http));
    wait_streaming(&v);
    let auth = bearer(&v);
    let upload_url = format!("{}/api/v1/models/ball/versions?activate=true", v.web);
    let fixture =
        |name: &str| std::fs::read(repo_root().join("models/fixtures").join(name)).expect("fixture");
    let ball = std::fs::read(ball_model()).expect("ball");
    let other = ball_model_variant("signed by someone else");

    // (what, body, signature header, status, words the reason must contain)
    type Case<'a> = (&'a str, Vec<u8>, Option<String>, u16, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "not ONNX",
            b"this is a text file, not a model".to_vec(),
            None,
            422,
            &["could not be loaded", "the uploaded file"],
        ),
        ("truncated", ball[..ball.len() / 2].to_vec(), None, 422, &["could not be loaded"]),
        ("wrong input rank", fixture("bad_input_rank.onnx"), None, 422, &["rank"]),
        ("no decoder fits", fixture("bad_output_layout.onnx"), None, 422, &["decoder"]),
        ("label count mismatch", fixture("bad_label_count.onnx"), None, 422, &["2 labels", "3 classes"]),
        (
            "a 40000x40000 input (17.9 GiB to feed)",
            fixture("misbehaving/huge_input.onnx"),
            None,
            422,
            &["asks for more than this box allows", "40000x40000", "16384 pixels a side"],
        ),
        ("lacks the rules' labels", fixture("yolov8_multiclass.onnx"), None, 422, &["ball"]),
        ("over the size limit", vec![0u8; 1024 * 1024 + 1], None, 413, &["max_upload_mb"]),
        ("empty", Vec::new(), None, 400, &["empty"]),
        ("unsigned", other.clone(), Some(String::new()), 403, &["X-Vigil-Signature"]),
        ("signed for another file", other.clone(), Some(signer.sign(&ball)), 403, &["does not match"]),
        ("signature not base64", other.clone(), Some("%%%".into()), 403, &["base64"]),
        ("already stored", ball.clone(), None, 409, &["already version 1"]),
    ];
    let mut processed = camera_health(&v, "cam1")["frames_processed"].as_u64().expect("processed");
    for (what, body, signature, want, words) in &cases {
        // Sign each file properly unless the signature is what is wrong, so
        // the refusal is for the reason under test.
        let sig = match signature {
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.clone()),
            None => Some(signer.sign(body)),
        };
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(s) = &sig {
            headers.push(("X-Vigil-Signature", s.as_str()));
        }
        let (status, hdrs, resp) = http_full("POST", &upload_url, &headers, Some(body));
        let why = error_of(&resp);
        println!("{what}: {status} {why}");
        assert_eq!(status, *want, "{what}: {why}");
        assert_eq!(hdrs["content-type"], "application/json", "{what}");
        for w in *words {
            assert!(why.contains(w), "{what}: the reason should mention {w:?}: {why}");
        }
        // Still v1, nothing new stored, and the camera still being inferred.
        let h = v.health();
        assert_eq!(h["models"][0]["version"], 1, "{what}");
        let (_, _, body) =
            http_full("GET", &format!("{}/api/v1/models/ball", v.web), &[("Authorization", &auth)], None);
        let slot: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(slot["versions"].as_array().map(Vec::len), Some(1), "{what}: {slot}");
        wait_until(Duration::from_secs(10), "frames still processed", || {
            camera_health(&v, "cam1")["frames_processed"].as_u64() > Some(processed)
        });
        processed = camera_health(&v, "cam1")["frames_processed"].as_u64().expect("processed");
    }
    assert_eq!(camera_health(&v, "cam1")["inference_errors"], 0);
    // Nothing half-written is left behind.
    let slot_dir = v.dir.path().join("vigil-data/models/ball");
    let leftovers: Vec<_> = std::fs::read_dir(&slot_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(leftovers.iter().all(|n| n == "state.json"), "{leftovers:?}");

    // A wrong token never reaches the upload at all.
    let (status, _, _) = http_full("POST", &upload_url, &[("Authorization", "Bearer nope")], Some(&other));
    assert_eq!(status, 401);

    // The same file signed properly is taken and activated.
    let sig = signer.sign(&other);
    let (status, _, body) = http_full(
        "POST",
        &upload_url,
        &[("Authorization", &auth), ("X-Vigil-Signature", &sig)],
        Some(&other),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let stored: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(stored["activation"]["version"], 2);
    assert_eq!(v.health()["models"][0]["version"], 2);
}

/// Camera credentials in every form a source can carry them, and every
/// place a source or its errors are shown: none may show a secret.
#[test]
fn camera_secrets_are_shown_nowhere() {
    let _machine = machine_shared();
    let broker = Mosquitto::start();
    // An HTTP camera that refuses the credentials: souphttpsrc's error
    // quotes the URL it was given, query string and all.
    let refuser = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let http_port = refuser.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in refuser.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    // Port 9 (discard) refuses: every camera fails and reconnects, so its
    // GStreamer errors reach health and the log too.
    let cfg = format!(
        r#"device_id = "secrets"
[mqtt]
url = "{}"
[http]
listen = "127.0.0.1:0"
[[cameras]]
name = "launch"
source = "launch:rtspsrc location=rtsp://user:hunter2@127.0.0.1:9/x user-pw=hunter3 user-id=camuser-hunter8 ! decodebin ! videoconvert"
[[cameras]]
name = "query"
source = "http://127.0.0.1:{http_port}/video.mjpg?password=hunter4&token=hunter5"
[[cameras]]
name = "rtsp"
source = "rtsp://admin:hunter6@127.0.0.1:9/s?access_token=hunter7"
"#,
        broker.url()
    );
    let v = Vigil::start(&cfg);
    wait_until(Duration::from_secs(30), "every camera to have failed at least once", || {
        let h = v.health();
        h["cameras"].as_array().is_some_and(|c| c.len() == 3 && c.iter().all(|c| c["last_error"].is_string()))
    });
    let secrets = ["hunter2", "hunter3", "hunter4", "hunter5", "hunter6", "hunter7", "hunter8"];
    let mut shown = Vec::new();
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/cameras",
        "/api/v1/cameras/launch",
        "/api/v1/cameras/query",
        "/api/v1/cameras/rtsp",
        "/api/v1/config",
        "/api/v1/events",
    ] {
        let (code, _, body) = v.get(path);
        assert!(code == 200 || code == 503, "{path}: {code}");
        shown.push((path.to_owned(), String::from_utf8_lossy(&body).into_owned()));
    }
    shown.push(("stderr".into(), v.stderr()));
    for (place, text) in &shown {
        for s in secrets {
            assert!(!text.contains(s), "{place} shows {s}:\n{text}");
        }
    }
    // Not vacuous: the sources are there, redacted, and errors were logged.
    let (_, _, body) = v.get("/api/v1/cameras");
    let cams = String::from_utf8_lossy(&body);
    assert!(cams.contains("rtsp://user:***@127.0.0.1:9/x user-pw=***"), "{cams}");
    assert!(cams.contains("password=***&token=***"), "{cams}");
    assert!(cams.contains("rtsp://admin:***@127.0.0.1:9/s?access_token=***"), "{cams}");
    assert!(v.stderr().contains("reconnecting"), "{}", v.stderr());
    let query = camera_health(&v, "query");
    assert!(query["last_error"].as_str().unwrap_or("").contains("Unauthorized"), "{query}");
}
