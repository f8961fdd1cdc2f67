//! The bytes of every event Vigil produces, pinned.
//!
//! Consumers parse these payloads, and some keep golden files of their own:
//! a refactor of how events are built must not change a byte. This drives
//! the real event logic (tracker, zones, lines, every rule) through a scripted
//! scene, renders the per-frame `detections` message too, and compares every
//! payload with `tests/data/event_payloads.jsonl`. Event ids (UUIDv7, random)
//! are replaced by `<id N>` in order of appearance, everywhere they occur
//! (snapshot names carry them).
//!
//! Run: `cargo test -p vigil-pipeline --test event_payloads`
//! (`VIGIL_BLESS=1` rewrites the file: only when a change is meant).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vigil_camera::Frame;
use vigil_inference::{
    Anomaly, BBox, ClassScore, Detection, Detector, ModelInfo, ModelOptions, Prediction, Timings,
};
use vigil_pipeline::event::DetectionsEvent;
use vigil_pipeline::lifecycle::{CameraEvents, UpdatePolicy};
use vigil_pipeline::rules::{RuleConfig, RuleKind, RuleState, Trigger};
use vigil_pipeline::snapshots::{Retention, SnapshotStore};
use vigil_pipeline::tracker::TrackerConfig;
use vigil_pipeline::zones::{Anchor, LineConfig, ZoneConfig};

const W: u32 = 64;
const H: u32 = 48;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A real model's info with a fixed identity, so the bytes do not depend on
/// which file happens to be shipped.
fn model() -> ModelInfo {
    let det = Detector::load("ball", &root().join("models/ball/ball.onnx"), ModelOptions::default())
        .expect("models/ball/ball.onnx loads");
    let mut info = det.info().as_ref().clone();
    info.name = "ball".into();
    info.version = 2;
    info.sha256 = "0123456789abcdef".repeat(4);
    info
}

fn at(i: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_795_000_000_000 + i * 100)
}

fn det(label: &str, class_id: u32, score: f32, b: [f32; 4]) -> Detection {
    Detection { class_id, label: label.into(), score, bbox: BBox { x1: b[0], y1: b[1], x2: b[2], y2: b[3] } }
}

fn rule(name: &str, kind: RuleKind) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        kind,
        camera: "cam1".into(),
        labels: vec![],
        zone: None,
        min_duration_s: None,
        dwell_s: None,
        trigger: None,
        interval_s: None,
        min_score: None,
        part_labels: vec![],
    }
}

/// Replaces every UUID by `<id N>`, numbered in order of first appearance.
fn mask_ids(s: &str, seen: &mut Vec<String>) -> String {
    let b = s.as_bytes();
    let is_uuid = |w: &[u8]| {
        w.len() == 36
            && w.iter()
                .enumerate()
                .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
    };
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if i + 36 <= b.len() && is_uuid(&b[i..i + 36]) {
            let id = &s[i..i + 36];
            let n = match seen.iter().position(|x| x == id) {
                Some(n) => n,
                None => {
                    seen.push(id.to_owned());
                    seen.len() - 1
                }
            };
            out.push_str(&format!("<id {n}>"));
            i += 36;
        } else {
            let c = s[i..].chars().next().expect("char");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every payload of the scene, one per line, ids masked.
fn scene() -> Vec<String> {
    let model = Arc::new(model());
    let snaps = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::start(
        snaps.path(),
        Retention { max_files: 100, max_bytes: 1 << 30, max_age: Duration::from_secs(3600) },
    )
    .expect("snapshot store");
    let base = Frame::from_rgb("cam1", 0, W, H, vec![0; (W * H * 3) as usize]);
    let frame = |i: u64| Frame::from_rgb_at("cam1", i, &base, at(i));

    let dock = ZoneConfig {
        name: "dock".into(),
        polygon: vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]],
        labels: vec![],
        min_dwell_s: 0.2,
        anchor: Anchor::Bottom,
    };
    let gate = LineConfig {
        name: "gate".into(),
        from: [0.6, 0.0],
        to: [0.6, 1.0],
        labels: vec![],
        anchor: Anchor::Bottom,
    };
    let rules = vec![
        RuleState::new(
            RuleConfig {
                labels: vec!["ball".into()],
                zone: Some("dock".into()),
                min_duration_s: Some(0.3),
                ..rule("no-balls", RuleKind::Safety)
            },
            Some(dock.clone()),
            0.5,
        ),
        RuleState::new(
            RuleConfig {
                labels: vec!["ball".into()],
                min_duration_s: Some(0.3),
                ..rule("anywhere", RuleKind::Safety)
            },
            None,
            0.5,
        ),
        RuleState::new(
            RuleConfig {
                labels: vec!["ball".into()],
                zone: Some("dock".into()),
                dwell_s: Some(0.4),
                ..rule("bay1", RuleKind::Curbside)
            },
            Some(dock.clone()),
            0.5,
        ),
        RuleState::new(
            RuleConfig {
                labels: vec!["scratch".into()],
                zone: Some("dock".into()),
                part_labels: vec!["ball".into()],
                ..rule("qa-zone", RuleKind::Inspection)
            },
            Some(dock.clone()),
            0.5,
        ),
        RuleState::new(
            RuleConfig {
                labels: vec!["scratch".into()],
                trigger: Some(Trigger::Command),
                ..rule("qa-cmd", RuleKind::Inspection)
            },
            None,
            0.5,
        ),
        RuleState::new(
            RuleConfig {
                labels: vec!["scratch".into()],
                trigger: Some(Trigger::Interval),
                interval_s: Some(1.5),
                ..rule("qa-every", RuleKind::Inspection)
            },
            None,
            0.5,
        ),
    ];
    let mut ev = CameraEvents::new(
        "box-7",
        "cam1",
        TrackerConfig::default(),
        vec![dock],
        vec![gate],
        rules,
        UpdatePolicy { interval_s: 0.25, min_move: 0.02 },
        Some(store.clone()),
    );

    let mut out = Vec::new();
    let mut push = |json: Vec<u8>| out.push(String::from_utf8(json).expect("utf8"));
    // A ball rolls from the left into the dock, lingers, rolls across the
    // gate and out of sight; a scratch shows on it while it is in the dock;
    // a second ball stays still; commands ask for inspections on the way.
    for i in 0..40u64 {
        let f = frame(i);
        let x = if i < 15 { 2.0 + i as f32 * 1.1 } else { 2.0 + 15.0 * 1.1 + (i - 15) as f32 * 1.9 };
        let mut detections = Vec::new();
        if i < 32 {
            detections.push(det("ball", 0, 0.91 - i as f32 * 0.003, [x, 20.0, x + 10.3, 30.7]));
        }
        detections.push(det("ball", 0, 0.777_77, [50.0, 5.0, 60.0, 15.0]));
        if (6..12).contains(&i) {
            detections.push(det("scratch", 1, 0.654_321, [x + 2.0, 22.0, x + 5.0, 25.0]));
        }
        let command = match i {
            4 => Some(Some("part-7".to_owned())),
            9 => Some(None),
            _ => None,
        };
        let pred = Prediction { detections, ..Default::default() };
        for e in ev.process(&f, &pred, &model, command) {
            push(e.json());
        }
    }
    for e in ev.finish(&frame(40), &model) {
        push(e.json());
    }

    // Classifier and anomaly models: their defects, on cameras of their own.
    let mut cls = CameraEvents::new(
        "box-7",
        "cam2",
        TrackerConfig::default(),
        vec![],
        vec![],
        vec![RuleState::new(
            RuleConfig {
                labels: vec!["dent".into()],
                trigger: Some(Trigger::Command),
                ..rule("qa-cls", RuleKind::Inspection)
            },
            None,
            0.5,
        )],
        UpdatePolicy { interval_s: 1.0, min_move: 0.05 },
        None,
    );
    let classes = Prediction {
        classes: vec![
            ClassScore { class_id: 3, label: "dent".into(), score: 0.876_54 },
            ClassScore { class_id: 0, label: "ok".into(), score: 0.1 },
        ],
        ..Default::default()
    };
    for e in cls.process(&frame(50), &classes, &model, Some(Some("p-1".into()))) {
        push(e.json());
    }
    let anomaly = Prediction {
        detections: vec![det("anomaly", 0, 0.812_345, [10.25, 11.75, 30.5, 40.0])],
        anomaly: Some(Anomaly { score: 0.812_345, threshold: 0.5, is_anomalous: true }),
        ..Default::default()
    };
    for e in cls.process(&frame(51), &anomaly, &model, Some(None)) {
        push(e.json());
    }

    // The per-frame detections message, with each optional part.
    let t0 = Instant::now();
    let detections = |pred: Prediction, pts: Option<Duration>| {
        DetectionsEvent {
            id: uuid::Uuid::now_v7(),
            camera: "cam1".into(),
            captured_at: at(60),
            captured_instant: t0,
            frame_seq: 60,
            pts,
            width: W,
            height: H,
            model: model.clone(),
            prediction: pred,
            timings: Timings {
                preprocess: Duration::from_micros(1_234),
                run: Duration::from_micros(15_678),
                postprocess: Duration::from_nanos(456_789),
            },
        }
        .to_json("box-7", at(60) + Duration::from_millis(42), t0 + Duration::from_micros(42_345))
    };
    push(detections(
        Prediction {
            detections: vec![det("ball", 0, 0.912_345_6, [3.33, 4.44, 20.06, 30.7])],
            ..Default::default()
        },
        Some(Duration::from_micros(2_000_333)),
    ));
    push(detections(classes.clone(), None));
    push(detections(anomaly.clone(), None));

    store.close();
    let mut seen = Vec::new();
    out.iter().map(|l| mask_ids(l, &mut seen)).collect()
}

#[test]
fn every_event_payload_is_byte_for_byte_what_it_was() {
    let got = scene();
    let path = root().join("pipeline/tests/data/event_payloads.jsonl");
    if std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, got.join("\n") + "\n").expect("write golden");
    }
    let want = std::fs::read_to_string(&path).expect("golden file (VIGIL_BLESS=1 writes it)");
    let want: Vec<&str> = want.lines().collect();
    // Every kind of event is in the scene: the pin covers them all.
    for kind in [
        "object.start",
        "object.update",
        "object.end",
        "zone.enter",
        "zone.exit",
        "line.cross",
        "inspection.verdict",
        "safety.alert",
        "safety.clear",
        "curbside.arrival",
        "curbside.departure",
        "detections",
    ] {
        assert!(got.iter().any(|l| l.contains(&format!("\"type\":\"{kind}\""))), "the scene has no {kind}");
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "payload {i} differs");
    }
    assert_eq!(got.len(), want.len(), "number of payloads");
}

/// Every payload of the scene, stamped as MQTT carries it, is valid against
/// the committed schema of its type (the end-to-end tests check what a real
/// broker delivers; this covers every kind, including the rare ones).
#[test]
fn every_payload_matches_the_schema_of_its_type() {
    for line in scene() {
        let mut v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        // Masked ids back to a UUIDv7 shape, and the stamp MQTT adds.
        let id = "019ae0a1-2b3c-7d4e-8f60-718293a4b5c6";
        v["id"] = id.into();
        if let Some(s) = v.get("snapshot").and_then(|s| s.as_str()) {
            let fixed = s.split("<id").next().expect("prefix").to_owned();
            v["snapshot"] = if fixed.len() < s.len() { format!("{fixed}{id}.jpg").into() } else { s.into() };
        }
        let kind = v["type"].as_str().expect("type").to_owned();
        if kind != "detections" {
            v["seq"] = 1.into();
            v["published_at"] = v["time"].clone();
            v["latency_ms"] = 12.into();
        }
        let path = root().join(format!("schemas/{kind}.v1.schema.json"));
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file")).expect("schema JSON");
        let validator = jsonschema::validator_for(&schema).expect("a valid schema");
        if let Err(e) = validator.validate(&v) {
            panic!("{kind} does not match {}: {e}\n{v}", path.display());
        }
    }
}
