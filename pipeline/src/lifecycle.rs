//! Per-camera event logic: detections in, meaningful events out.
//!
//! ```text
//!  Prediction ─▶ Tracker ─▶ started / seen / ended tracks
//!                   │
//!                   ├─▶ zones & lines ─▶ zone.enter, zone.exit, line.cross
//!                   ├─▶ object.start, object.update (on real change, rate-limited), object.end
//!                   └─▶ rules ─▶ inspection.verdict, safety.alert/clear, curbside.arrival/departure
//! ```
//! Runs on the camera's inference thread right after the model: it is a few
//! microseconds per frame (see `vigil bench-events`), far below inference.
//! Events leave as JSON without `published_at`/`latency_ms`: the publisher
//! adds those at the moment it sends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use vigil_camera::Frame;
use vigil_inference::{BBox, ModelInfo, Prediction};

use crate::event::{SCHEMA_VERSION, rfc3339};
use crate::rules::{FrameView, RuleEvent, RuleState, track_json};
use crate::snapshots::{SnapshotJob, SnapshotStore};
use crate::tracker::{Tracker, TrackerConfig};
use crate::zones::{LineConfig, ZoneConfig, ZoneEvent, ZoneState};

/// An event ready for the outbox.
#[derive(Debug, Clone)]
pub struct Emitted {
    pub kind: &'static str,
    pub id: uuid::Uuid,
    /// When the frame it comes from was captured (unix ms): latency is measured from it.
    pub captured_ms: u64,
    pub json: Vec<u8>,
}

/// When `object.update` is worth sending.
#[derive(Debug, Clone, Copy)]
pub struct UpdatePolicy {
    /// At most one update per track per this many seconds.
    pub interval_s: f64,
    /// ...and only if the box centre moved this fraction of the frame
    /// diagonal, or its zones changed.
    pub min_move: f32,
}

#[derive(Debug)]
struct LastUpdate {
    t: f64,
    centre: (f32, f32),
    zones: Vec<String>,
}

/// Everything that turns one camera's predictions into events.
#[derive(Debug)]
pub struct CameraEvents {
    device: Arc<str>,
    camera: Arc<str>,
    tracker: Tracker,
    zones: ZoneState,
    rules: Vec<RuleState>,
    policy: UpdatePolicy,
    last_update: HashMap<u64, LastUpdate>,
    /// Per track: the best score a snapshot was taken at, and when.
    snapped: HashMap<u64, (f32, f64)>,
    snapshots: Option<Arc<SnapshotStore>>,
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl CameraEvents {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device: &str,
        camera: &str,
        tracker: TrackerConfig,
        zones: Vec<ZoneConfig>,
        lines: Vec<LineConfig>,
        rules: Vec<RuleState>,
        policy: UpdatePolicy,
        snapshots: Option<Arc<SnapshotStore>>,
    ) -> CameraEvents {
        CameraEvents {
            device: device.into(),
            camera: camera.into(),
            tracker: Tracker::new(tracker),
            zones: ZoneState::new(zones, lines),
            rules,
            policy,
            last_update: HashMap::new(),
            snapped: HashMap::new(),
            snapshots,
        }
    }

    /// Any track alive (tentative or confirmed): the motion gate keeps
    /// inferring often enough that none ends for lack of frames.
    pub fn tracking(&self) -> bool {
        !self.tracker.tracks().is_empty()
    }

    /// Where each live track is expected now (for the detector's region).
    pub fn tracked_boxes(&self) -> Vec<vigil_inference::BBox> {
        self.tracker.tracks().iter().map(|t| t.predicted()).collect()
    }

    /// Crossing counts per line: (name, left, right).
    pub fn line_counts(&self) -> Vec<(String, u64, u64)> {
        self.zones.line_counts()
    }

    fn envelope(
        &self,
        kind: &'static str,
        frame: &Frame,
        model: &ModelInfo,
        body: serde_json::Map<String, Value>,
    ) -> Emitted {
        self.envelope_with_id(kind, uuid::Uuid::now_v7(), frame, model, body)
    }

    fn envelope_with_id(
        &self,
        kind: &'static str,
        id: uuid::Uuid,
        frame: &Frame,
        model: &ModelInfo,
        body: serde_json::Map<String, Value>,
    ) -> Emitted {
        let mut v = json!({
            "schema_version": SCHEMA_VERSION,
            "type": kind,
            "id": id.to_string(),
            "device": &*self.device,
            "camera": &*self.camera,
            "time": rfc3339(frame.captured_at()),
            "frame": { "seq": frame.seq(), "width": frame.width(), "height": frame.height() },
            "model": { "name": model.name, "version": model.version, "sha256": model.sha256 },
        });
        if let Value::Object(m) = &mut v {
            m.extend(body);
        }
        let captured_ms =
            frame.captured_at().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Emitted { kind, id, captured_ms, json: serde_json::to_vec(&v).unwrap_or_default() }
    }

    fn snapshot_url(&self, name: &str) -> Value {
        match &self.snapshots {
            Some(_) => json!(format!("/api/v1/snapshots/{name}")),
            None => Value::Null,
        }
    }

    fn snap(&self, name: &str, frame: &Frame, prediction: &Prediction, highlight: Option<BBox>) -> bool {
        match &self.snapshots {
            Some(s) => s.submit(SnapshotJob {
                name: name.to_owned(),
                frame: frame.clone(),
                prediction: prediction.clone(),
                highlight,
            }),
            None => false,
        }
    }

    /// One processed frame. `command` is set when an inspection was requested
    /// for this camera (with the part id the request named, if any).
    pub fn process(
        &mut self,
        frame: &Frame,
        pred: &Prediction,
        model: &ModelInfo,
        command: Option<Option<String>>,
    ) -> Vec<Emitted> {
        let t = secs(frame.captured_at());
        let (w, h) = (frame.width() as f32, frame.height() as f32);
        let mut out = Vec::new();
        // Classifier and anomaly outputs are not objects: nothing to track.
        let trackable = pred.classes.is_empty() && pred.anomaly.is_none();
        let update = if trackable { self.tracker.update(&pred.detections, t) } else { Default::default() };

        for id in &update.started {
            let Some(tr) = self.tracker.get(*id) else { continue };
            let body = json!({ "track": track_json(tr, w, h) });
            out.push(self.envelope("object.start", frame, model, obj(body)));
        }

        let mut zone_events = Vec::new();
        for id in &update.seen {
            if let Some(tr) = self.tracker.get(*id) {
                let (label, bbox) = (tr.label.clone(), tr.bbox);
                self.zones.observe(*id, &label, &bbox, (w, h), t, &mut zone_events);
            }
        }
        let mut ended_zone_events = Vec::new();
        for tr in &update.ended {
            self.zones.end(tr.id, tr.last_seen, &mut ended_zone_events);
        }
        for ze in zone_events {
            self.zone_event(ze, frame, model, w, h, &update.ended, &mut out);
        }

        // Updates: rate-limited, and only when something changed.
        for id in &update.seen {
            if update.started.contains(id) {
                let Some(tr) = self.tracker.get(*id) else { continue };
                self.last_update
                    .insert(*id, LastUpdate { t, centre: tr.bbox.center(), zones: self.zones.zones_of(*id) });
                continue;
            }
            let Some(tr) = self.tracker.get(*id) else { continue };
            let zones = self.zones.zones_of(*id);
            let last = self.last_update.get(id);
            let due = last.is_none_or(|l| t - l.t >= self.policy.interval_s);
            let moved = last.is_none_or(|l| {
                let (cx, cy) = tr.bbox.center();
                let d = ((cx - l.centre.0) / w).hypot((cy - l.centre.1) / h);
                d >= self.policy.min_move
            });
            let zones_changed = last.is_none_or(|l| l.zones != zones);
            if due && (moved || zones_changed) {
                let body = json!({ "track": track_json(tr, w, h), "zones": zones });
                let centre = tr.bbox.center();
                out.push(self.envelope("object.update", frame, model, obj(body)));
                self.last_update.insert(*id, LastUpdate { t, centre, zones });
            }
        }

        // Best snapshot per track: when its score beats the one snapshotted
        // (at most once a second per track: encoding is the costly part).
        if self.snapshots.is_some() {
            for id in &update.seen {
                let Some(tr) = self.tracker.get(*id) else { continue };
                let prev = self.snapped.get(id).copied();
                let better = prev.is_none_or(|(s, at)| tr.score > s + 0.01 && t - at >= 1.0);
                if better {
                    let name = format!("track-{}-{}.jpg", self.camera, id);
                    if self.snap(&name, frame, pred, Some(tr.bbox)) {
                        self.snapped.insert(*id, (tr.score, t));
                    }
                }
            }
        }

        let view = FrameView {
            t,
            width: w,
            height: h,
            tracks: update.seen.iter().filter_map(|id| self.tracker.get(*id)).collect(),
            ended: &update.ended,
            prediction: pred,
            command,
        };
        let mut rule_events: Vec<RuleEvent> = Vec::new();
        for r in &mut self.rules {
            r.step(&view, &mut rule_events);
        }
        for mut re in rule_events {
            let id = uuid::Uuid::now_v7();
            if re.snapshot {
                let name = format!("{}-{}.jpg", re.kind.replace('.', "-"), id);
                let url =
                    if self.snap(&name, frame, pred, None) { self.snapshot_url(&name) } else { Value::Null };
                re.body.insert("snapshot".into(), url);
            }
            // The event's id names its snapshot.
            out.push(self.envelope_with_id(re.kind, id, frame, model, re.body));
        }

        for ze in ended_zone_events {
            self.zone_event(ze, frame, model, w, h, &update.ended, &mut out);
        }
        for tr in &update.ended {
            out.push(self.ended(tr, frame, model, w, h));
        }
        out
    }

    fn ended(
        &mut self,
        tr: &crate::tracker::Track,
        frame: &Frame,
        model: &ModelInfo,
        w: f32,
        h: f32,
    ) -> Emitted {
        self.last_update.remove(&tr.id);
        let snapshot = if self.snapped.remove(&tr.id).is_some() {
            self.snapshot_url(&format!("track-{}-{}.jpg", self.camera, tr.id))
        } else {
            Value::Null
        };
        let body = json!({
            "track": track_json(tr, w, h),
            "duration_s": ((tr.last_seen - tr.first_seen) * 1000.0).round() / 1000.0,
            "best_score": crate::rules::round4(tr.best_score),
            "snapshot": snapshot,
        });
        self.envelope("object.end", frame, model, obj(body))
    }

    /// Ends every open track (the camera is stopping), so every start has its end.
    pub fn finish(&mut self, frame: &Frame, model: &ModelInfo) -> Vec<Emitted> {
        let (w, h) = (frame.width() as f32, frame.height() as f32);
        let tracks = self.tracker.finish();
        let mut out = Vec::new();
        let mut zev = Vec::new();
        for tr in &tracks {
            self.zones.end(tr.id, tr.last_seen, &mut zev);
        }
        for ze in zev {
            self.zone_event(ze, frame, model, w, h, &tracks, &mut out);
        }
        for tr in &tracks {
            out.push(self.ended(tr, frame, model, w, h));
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn zone_event(
        &self,
        ze: ZoneEvent,
        frame: &Frame,
        model: &ModelInfo,
        w: f32,
        h: f32,
        ended: &[crate::tracker::Track],
        out: &mut Vec<Emitted>,
    ) {
        // Tracks that just ended are no longer in the tracker: look there too.
        let track_of = |id: u64| {
            self.tracker
                .get(id)
                .or_else(|| ended.iter().find(|t| t.id == id))
                .map(|t| track_json(t, w, h))
                .unwrap_or(json!({ "id": id }))
        };
        let (kind, body) = match ze {
            ZoneEvent::Enter { zone, track } => {
                ("zone.enter", json!({ "zone": zone, "track": track_of(track) }))
            }
            ZoneEvent::Exit { zone, track, dwell_s } => (
                "zone.exit",
                json!({ "zone": zone, "track": track_of(track), "dwell_s": (dwell_s * 1000.0).round() / 1000.0 }),
            ),
            ZoneEvent::Cross { line, track, direction, count } => (
                "line.cross",
                json!({ "line": line, "direction": direction, "count": count, "track": track_of(track) }),
            ),
        };
        out.push(self.envelope(kind, frame, model, obj(body)));
    }
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}
