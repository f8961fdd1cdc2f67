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
//! Events leave as typed [`Event`]s without `seq`, `published_at` and
//! `latency_ms`: the outbox writer gives the `seq`, the link stamps the rest
//! at the moment it sends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use vigil_camera::Frame;
use vigil_inference::{BBox, ModelInfo, Prediction};

use crate::event::{
    Event, LineCross, ObjectEnd, ObjectStart, ObjectUpdate, Payload, TrackJson, TrackRef, ZoneEnter,
    ZoneExit, round_ms, round4,
};
use crate::rules::{FrameView, RuleEvent, RuleState};
use crate::snapshots::{SnapshotJob, SnapshotStore};
use crate::tracker::{Tracker, TrackerConfig};
use crate::zones::{LineConfig, ZoneConfig, ZoneEvent, ZoneState};

/// An event ready for the outbox.
#[derive(Debug, Clone)]
pub struct Emitted {
    /// When the frame it comes from was captured (unix ms): latency is measured from it.
    pub captured_ms: u64,
    pub event: Event,
}

impl Emitted {
    pub fn new(event: Event) -> Emitted {
        Emitted { captured_ms: event.captured_ms(), event }
    }

    /// The JSON the outbox stores.
    pub fn json(&self) -> Vec<u8> {
        self.event.to_json()
    }
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

    fn envelope(&self, frame: &Frame, model: &ModelInfo, payload: impl Into<Payload>) -> Emitted {
        self.envelope_with_id(uuid::Uuid::now_v7(), frame, model, payload.into())
    }

    fn envelope_with_id(
        &self,
        id: uuid::Uuid,
        frame: &Frame,
        model: &ModelInfo,
        payload: Payload,
    ) -> Emitted {
        Emitted::new(Event::of_frame(id, self.device.clone(), self.camera.clone(), frame, model, payload))
    }

    fn snapshot_url(&self, name: &str) -> Option<String> {
        self.snapshots.as_ref().map(|_| format!("/api/v1/snapshots/{name}"))
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
            out.push(self.envelope(frame, model, ObjectStart { track: TrackJson::new(tr, w, h) }));
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
                let centre = tr.bbox.center();
                let update = ObjectUpdate { track: TrackJson::new(tr, w, h), zones: zones.clone() };
                out.push(self.envelope(frame, model, update));
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
            let (id, kind) = (uuid::Uuid::now_v7(), re.kind());
            if let Some(snapshot) = re.snapshot_mut() {
                let name = format!("{}-{}.jpg", kind.replace('.', "-"), id);
                *snapshot = if self.snap(&name, frame, pred, None) { self.snapshot_url(&name) } else { None };
            }
            // The event's id names its snapshot.
            out.push(self.envelope_with_id(id, frame, model, re));
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
            None
        };
        let end = ObjectEnd {
            track: TrackJson::new(tr, w, h),
            duration_s: round_ms(tr.last_seen - tr.first_seen),
            best_score: round4(tr.best_score),
            snapshot,
        };
        self.envelope(frame, model, end)
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
                .map(|t| TrackRef::Known(TrackJson::new(t, w, h)))
                .unwrap_or(TrackRef::Unknown { id })
        };
        let payload: Payload = match ze {
            ZoneEvent::Enter { zone, track } => ZoneEnter { zone, track: track_of(track) }.into(),
            ZoneEvent::Exit { zone, track, dwell_s } => {
                ZoneExit { zone, track: track_of(track), dwell_s: round_ms(dwell_s) }.into()
            }
            ZoneEvent::Cross { line, track, direction, count } => {
                LineCross { line, direction, count, track: track_of(track) }.into()
            }
        };
        out.push(self.envelope(frame, model, payload));
    }
}
