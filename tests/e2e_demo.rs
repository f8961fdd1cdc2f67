//! The first vertical slice, end to end: a real GStreamer test source, the
//! real ONNX Runtime running the committed ball model, per-frame detections
//! and events on a real Mosquitto read by a real subscriber, and the snapshot
//! over real HTTP.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::*;

/// Where videotestsrc draws its ball in frame `t` (GStreamer 1.22,
/// `motion=wavy`, radius 20): the ground truth the boxes must follow.
fn ball_centre(t: f64, w: f64, h: f64) -> (f64, f64) {
    let r = 20.0;
    let x = r + (0.5 + 0.5 * (2.0 * std::f64::consts::PI * t / 200.0).sin()) * (w - 2.0 * r);
    let y = r + (0.5 + 0.5 * (2.0 * std::f64::consts::PI * 2f64.sqrt() * t / 200.0).sin()) * (h - 2.0 * r);
    // Pixel centres sit half a pixel in from the integer coordinates.
    (x + 0.5, y + 0.5)
}

#[test]
fn ball_is_detected_published_as_valid_events_and_drawn_on_the_snapshot() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "vigil/e2e/#");
    let fps = 10.0;
    let vigil = Vigil::start(&ball_config("e2e", &broker.url(), fps as u32));

    sub.expect("vigil/e2e/status", "online", Duration::from_secs(30));

    let model_sha = format!("{:x}", Sha256::digest(std::fs::read(ball_model()).expect("model")));

    let mut ids = HashSet::new();
    let mut centres = Vec::new();
    let mut last_seq = None;
    for _ in 0..15 {
        let payload = sub.next_on("vigil/e2e/detections", Duration::from_secs(30));
        let ev: serde_json::Value = serde_json::from_slice(&payload).expect("event JSON");
        assert_valid_event(&ev);
        assert_eq!(ev["type"], "detections");
        assert_eq!(ev["device"], "e2e");
        assert_eq!(ev["camera"], "cam1");
        assert_eq!(ev["model"]["name"], "ball");
        assert_eq!(ev["model"]["sha256"], model_sha.as_str());
        assert!(ids.insert(ev["id"].as_str().expect("id").to_owned()), "ids are unique");
        let seq = ev["frame"]["seq"].as_u64().expect("seq");
        assert!(last_seq.is_none_or(|l| seq > l), "frames arrive in order");
        last_seq = Some(seq);
        let latency = ev["latency_ms"].as_f64().expect("latency");
        assert!((0.0..5000.0).contains(&latency), "latency {latency} ms");
        let (w, h) = (ev["frame"]["width"].as_f64().expect("w"), ev["frame"]["height"].as_f64().expect("h"));
        assert_eq!((w, h), (640.0, 480.0));

        let dets = ev["detections"].as_array().expect("detections");
        assert_eq!(dets.len(), 1, "exactly one ball: {ev}");
        let d = &dets[0];
        assert_eq!(d["label"], "ball");
        assert_eq!(d["class_id"], 0);
        assert!(d["score"].as_f64().expect("score") > 0.5);
        let b: Vec<f64> =
            d["box"].as_array().expect("box").iter().map(|v| v.as_f64().expect("num")).collect();
        let n: Vec<f64> =
            d["box_norm"].as_array().expect("norm").iter().map(|v| v.as_f64().expect("num")).collect();
        assert!(
            b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= w && b[3] <= h && b[0] < b[2] && b[1] < b[3],
            "box {b:?} inside the frame"
        );
        for (k, size) in [w, h, w, h].iter().enumerate() {
            assert!((n[k] - b[k] / size).abs() < 1e-3, "box_norm {n:?} matches box {b:?}");
        }
        // The ball is 40 px across.
        assert!(((b[2] - b[0]) - 40.0).abs() <= 3.0 && ((b[3] - b[1]) - 40.0).abs() <= 3.0, "box size {b:?}");

        // The box follows the ball: compare with where videotestsrc drew it
        // in this frame (frame number from the stream timestamp).
        let pts = ev["frame"]["pts_ms"].as_f64().expect("pts");
        let t = (pts * fps / 1000.0).round();
        let (ex, ey) = ball_centre(t, w, h);
        let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
        assert!(
            (cx - ex).abs() <= 2.0 && (cy - ey).abs() <= 2.0,
            "frame {t}: box centre ({cx:.1}, {cy:.1}), ball drawn at ({ex:.1}, {ey:.1})"
        );
        centres.push((cx, cy));
    }
    let travel = centres
        .windows(2)
        .map(|p| ((p[1].0 - p[0].0).powi(2) + (p[1].1 - p[0].1).powi(2)).sqrt())
        .sum::<f64>();
    assert!(travel > 30.0, "the ball moved {travel:.1} px over 15 events");

    // The snapshot: a JPEG of the camera's size with the box drawn in.
    let (status, ctype, body) = vigil.get("/api/v1/cameras/cam1/snapshot.jpg");
    assert_eq!(status, 200);
    assert_eq!(ctype, "image/jpeg");
    let mut dec = zune_jpeg::JpegDecoder::new(&body[..]);
    let rgb = dec.decode().expect("valid JPEG");
    let (jw, jh) = dec.dimensions().expect("dimensions");
    assert_eq!((jw, jh), (640, 480));
    // Box outline colour (0, 255, 64); JPEG blurs it a little.
    let green = rgb.chunks_exact(3).filter(|p| p[0] < 80 && p[1] > 200 && p[2] < 130).count();
    assert!(green > 150, "box outline visible ({green} box-coloured pixels)");

    let (status, _, body) = vigil.get("/api/v1/cameras/nope/snapshot.jpg");
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, ctype, body) = vigil.get("/");
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html") && String::from_utf8_lossy(&body).contains("stream.mjpg"));

    let health = vigil.health();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["cameras"][0]["state"], "streaming");
    assert!(health["cameras"][0]["frames_processed"].as_u64().expect("n") >= 15);

    // The tracked ball is an object: its start is an event (QoS 1, outbox).
    let start = collect_events(&sub, "vigil/e2e/events", Duration::from_secs(30), |v| {
        v.iter().any(|e| e["type"] == "object.start")
    });
    let start = start.iter().find(|e| e["type"] == "object.start").expect("object.start");
    assert_eq!(start["track"]["label"], "ball");
    assert!(start["seq"].as_u64().is_some_and(|s| s >= 1));

    // A clean stop says goodbye on the status topic.
    let status = vigil.terminate();
    assert!(status.success(), "exit status {status:?}");
    sub.expect("vigil/e2e/status", "offline", Duration::from_secs(10));
}
