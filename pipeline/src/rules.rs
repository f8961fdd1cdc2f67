//! Rules: what the three kinds of users want to hear about, built on tracks
//! and zones.
//!
//! - `inspection` (QA station): one `inspection.verdict` per part, OK or NG
//!   with the defects found, when a part passes through a zone, on an MQTT
//!   command, or every `interval_s`.
//! - `safety` (site): `safety.alert` when an object with one of `labels`
//!   (in `zone`, if set) has been there for `min_duration_s`; `safety.clear`
//!   when it is gone.
//! - `curbside` (store): `curbside.arrival` when a vehicle has waited in a bay
//!   for `dwell_s`; `curbside.departure` when it leaves.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vigil_inference::{BBox, Detection, Prediction};

use crate::event::{
    BoxJson, CurbsideArrival, CurbsideDeparture, Defect, InspectionVerdict, Part, Payload, SafetyAlert,
    SafetyClear, TrackJson, Verdict, round4,
};
use crate::tracker::Track;
use crate::zones::{ZoneConfig, contains};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Inspection,
    Safety,
    Curbside,
}

/// What starts an inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// A tracked part entering the rule's zone; the verdict comes when it leaves.
    Zone,
    /// An MQTT message on `<prefix>/<device>/commands` (`{"command": "inspect", "camera": ...}`).
    Command,
    /// Every `interval_s` seconds.
    Interval,
}

/// One rule. `type` picks the preset; most fields have defaults that make
/// each preset a few lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: RuleKind,
    /// The camera whose frames the rule watches.
    pub camera: String,
    /// Inspection: defect labels. Safety: labels that raise the alert.
    /// Curbside: vehicle labels (default car, truck, bus, motorcycle).
    #[serde(default)]
    pub labels: Vec<String>,
    /// A zone of the camera: the inspection station, the forbidden area, the bay.
    #[serde(default)]
    pub zone: Option<String>,
    /// Safety: seconds the condition must hold before the alert (default 3).
    #[serde(default)]
    pub min_duration_s: Option<f64>,
    /// Curbside: seconds a vehicle waits in the bay before it counts as arrived (default 5).
    #[serde(default)]
    pub dwell_s: Option<f64>,
    /// Inspection: `zone` (default when `zone` is set), `command` or `interval`.
    #[serde(default)]
    pub trigger: Option<Trigger>,
    /// Inspection with `trigger = "interval"`: seconds between verdicts (default 1).
    #[serde(default)]
    pub interval_s: Option<f64>,
    /// Inspection: a defect counts at or above this score (default: the model's threshold).
    #[serde(default)]
    pub min_score: Option<f32>,
    /// Inspection with `trigger = "zone"`: which tracked objects are parts
    /// (default: any label that is not a defect label).
    #[serde(default)]
    pub part_labels: Vec<String>,
}

pub const DEFAULT_VEHICLES: [&str; 4] = ["car", "truck", "bus", "motorcycle"];

impl RuleConfig {
    pub fn trigger(&self) -> Trigger {
        self.trigger.unwrap_or(if self.zone.is_some() { Trigger::Zone } else { Trigger::Command })
    }

    /// The labels the rule watches, with the curbside default filled in.
    pub fn watched_labels(&self) -> Vec<String> {
        if self.kind == RuleKind::Curbside && self.labels.is_empty() {
            DEFAULT_VEHICLES.iter().map(|s| s.to_string()).collect()
        } else {
            self.labels.clone()
        }
    }
}

/// An event a rule produced. Those with a snapshot field get a snapshot of
/// this frame (the caller fills in its link).
pub type RuleEvent = Payload;

#[derive(Debug, Default)]
struct Since {
    since: f64,
    fired: bool,
}

/// Defects gathered for one part while it is in the inspection zone.
#[derive(Debug, Default)]
struct PartInspection {
    entered: f64,
    /// Worst score per defect label, with its box.
    worst: HashMap<String, (f32, BBox)>,
}

/// The live state of one rule.
#[derive(Debug)]
pub struct RuleState {
    pub cfg: RuleConfig,
    labels: Vec<String>,
    zone: Option<ZoneConfig>,
    min_score: f32,
    per_track: HashMap<u64, Since>,
    parts: HashMap<u64, PartInspection>,
    last_interval: Option<f64>,
}

/// What a rule sees of one frame.
#[derive(Debug)]
pub struct FrameView<'a> {
    pub t: f64,
    pub width: f32,
    pub height: f32,
    /// Confirmed tracks seen in this frame.
    pub tracks: Vec<&'a Track>,
    /// Confirmed tracks that ended with this frame.
    pub ended: &'a [Track],
    pub prediction: &'a Prediction,
    /// An inspection was requested over MQTT for this camera (and part id, if given).
    pub command: Option<Option<String>>,
}

impl RuleState {
    pub fn new(cfg: RuleConfig, zone: Option<ZoneConfig>, model_confidence: f32) -> RuleState {
        let labels = cfg.watched_labels();
        let min_score = cfg.min_score.unwrap_or(model_confidence);
        RuleState {
            cfg,
            labels,
            zone,
            min_score,
            per_track: HashMap::new(),
            parts: HashMap::new(),
            last_interval: None,
        }
    }

    fn in_zone(&self, b: &BBox, w: f32, h: f32) -> bool {
        match &self.zone {
            None => true,
            Some(z) => {
                let (x, y) = z.anchor.point(b, w, h);
                contains(&z.polygon, x, y)
            }
        }
    }

    fn watched(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l == label)
    }

    /// Runs the rule over one frame.
    pub fn step(&mut self, f: &FrameView<'_>, out: &mut Vec<RuleEvent>) {
        match self.cfg.kind {
            RuleKind::Safety => self.safety(f, out),
            RuleKind::Curbside => self.curbside(f, out),
            RuleKind::Inspection => self.inspection(f, out),
        }
    }

    fn safety(&mut self, f: &FrameView<'_>, out: &mut Vec<RuleEvent>) {
        let (rule, zone) = (self.cfg.name.clone(), self.cfg.zone.clone());
        self.linger(
            f,
            out,
            self.cfg.min_duration_s.unwrap_or(3.0),
            |track, duration_s| {
                SafetyAlert { rule: rule.clone(), zone: zone.clone(), track, duration_s, snapshot: None }
                    .into()
            },
            |track, duration_s| {
                SafetyClear { rule: rule.clone(), zone: zone.clone(), track, duration_s }.into()
            },
        );
    }

    fn curbside(&mut self, f: &FrameView<'_>, out: &mut Vec<RuleEvent>) {
        // A curbside rule always has its bay (the config says so).
        let (rule, bay) = (self.cfg.name.clone(), self.cfg.zone.clone().unwrap_or_default());
        self.linger(
            f,
            out,
            self.cfg.dwell_s.unwrap_or(5.0),
            |track, waited_s| {
                CurbsideArrival { rule: rule.clone(), bay: bay.clone(), track, waited_s, snapshot: None }
                    .into()
            },
            |track, dwell_s| {
                CurbsideDeparture { rule: rule.clone(), bay: bay.clone(), track, dwell_s }.into()
            },
        );
    }

    /// A watched object in the zone for `min` seconds: `start` once per
    /// track; when a track that fired leaves (or ends), `end`. Both get the
    /// track and the seconds it has been there.
    fn linger(
        &mut self,
        f: &FrameView<'_>,
        out: &mut Vec<RuleEvent>,
        min: f64,
        start: impl Fn(TrackJson, f64) -> Payload,
        end: impl Fn(TrackJson, f64) -> Payload,
    ) {
        let mut present = Vec::new();
        for t in &f.tracks {
            if self.watched(&t.label) && self.in_zone(&t.bbox, f.width, f.height) {
                present.push(t.id);
                let s = self.per_track.entry(t.id).or_insert(Since { since: f.t, fired: false });
                if !s.fired && f.t - s.since >= min {
                    s.fired = true;
                    out.push(start(TrackJson::new(t, f.width, f.height), f.t - s.since));
                }
            }
        }
        let gone: Vec<u64> = self.per_track.keys().copied().filter(|id| !present.contains(id)).collect();
        for id in gone {
            let Some(s) = self.per_track.remove(&id) else { continue };
            if !s.fired {
                continue;
            }
            let track =
                f.tracks.iter().copied().find(|t| t.id == id).or_else(|| f.ended.iter().find(|t| t.id == id));
            if let Some(t) = track {
                out.push(end(TrackJson::new(t, f.width, f.height), f.t - s.since));
            }
        }
    }

    /// Defects in this frame: detections of defect labels at or above
    /// `min_score` (inside the zone when there is one); for classifiers the
    /// top class when it is a defect label; for anomaly models the verdict.
    fn defects(&self, f: &FrameView<'_>) -> (bool, Vec<Defect>) {
        let p = f.prediction;
        let with_box = |d: &Detection| Defect {
            label: d.label.to_string(),
            score: round4(d.score),
            bbox: Some(BoxJson::new(&d.bbox, f.width, f.height)),
        };
        if let Some(a) = p.anomaly {
            return (a.is_anomalous, p.detections.iter().map(with_box).collect());
        }
        if let Some(top) = p.classes.first() {
            let bad = self.watched(&top.label) && top.score >= self.min_score;
            let v = if bad {
                vec![Defect { label: top.label.to_string(), score: round4(top.score), bbox: None }]
            } else {
                vec![]
            };
            return (bad, v);
        }
        let found: Vec<Defect> = p
            .detections
            .iter()
            .filter(|d| {
                self.watched(&d.label)
                    && d.score >= self.min_score
                    && self.in_zone(&d.bbox, f.width, f.height)
            })
            .map(with_box)
            .collect();
        (!found.is_empty(), found)
    }

    fn verdict(&self, trigger: Trigger, part: Part, bad: bool, defects: Vec<Defect>) -> RuleEvent {
        InspectionVerdict {
            rule: self.cfg.name.clone(),
            trigger,
            part,
            verdict: Verdict::of(bad),
            defects,
            snapshot: None,
        }
        .into()
    }

    fn inspection(&mut self, f: &FrameView<'_>, out: &mut Vec<RuleEvent>) {
        match self.cfg.trigger() {
            Trigger::Command => {
                if let Some(part) = &f.command {
                    let (bad, defects) = self.defects(f);
                    out.push(self.verdict(Trigger::Command, Part::Named(part.clone()), bad, defects));
                }
            }
            Trigger::Interval => {
                let every = self.cfg.interval_s.unwrap_or(1.0);
                if self.last_interval.is_none_or(|last| f.t - last >= every) {
                    self.last_interval = Some(f.t);
                    let (bad, defects) = self.defects(f);
                    out.push(self.verdict(Trigger::Interval, Part::Named(None), bad, defects));
                }
            }
            Trigger::Zone => self.zone_inspection(f, out),
        }
    }

    fn is_part(&self, label: &str) -> bool {
        if self.cfg.part_labels.is_empty() {
            !self.watched(label)
        } else {
            self.cfg.part_labels.iter().any(|l| l == label)
        }
    }

    fn zone_inspection(&mut self, f: &FrameView<'_>, out: &mut Vec<RuleEvent>) {
        let mut present = Vec::new();
        // Defects seen in this frame, inside the zone.
        let frame_defects: Vec<(String, f32, BBox)> = f
            .prediction
            .detections
            .iter()
            .filter(|d| {
                self.watched(&d.label)
                    && d.score >= self.min_score
                    && self.in_zone(&d.bbox, f.width, f.height)
            })
            .map(|d| (d.label.to_string(), d.score, d.bbox))
            .collect();
        for t in &f.tracks {
            if !self.is_part(&t.label) || !self.in_zone(&t.bbox, f.width, f.height) {
                continue;
            }
            present.push(t.id);
            let part = self
                .parts
                .entry(t.id)
                .or_insert_with(|| PartInspection { entered: f.t, worst: HashMap::new() });
            for (label, score, b) in &frame_defects {
                let e = part.worst.entry(label.clone()).or_insert((0.0, *b));
                if *score > e.0 {
                    *e = (*score, *b);
                }
            }
        }
        let done: Vec<u64> = self.parts.keys().copied().filter(|id| !present.contains(id)).collect();
        for id in done {
            let Some(part) = self.parts.remove(&id) else { continue };
            let track =
                f.tracks.iter().copied().find(|t| t.id == id).or_else(|| f.ended.iter().find(|t| t.id == id));
            let mut defects: Vec<(String, f32, BBox)> =
                part.worst.into_iter().map(|(l, (s, b))| (l, s, b)).collect();
            defects.sort_by(|a, b| b.1.total_cmp(&a.1));
            let list: Vec<Defect> = defects
                .iter()
                .map(|(l, s, b)| Defect {
                    label: l.clone(),
                    score: round4(*s),
                    bbox: Some(BoxJson::new(b, f.width, f.height)),
                })
                .collect();
            let part = match track {
                Some(t) => Part::Track { track: t.id, label: t.label.clone(), in_zone_s: f.t - part.entered },
                None => Part::TrackId { track: id },
            };
            out.push(self.verdict(Trigger::Zone, part, !list.is_empty(), list));
        }
    }
}

/// The zone named `name` on a camera, anchored at the box bottom by default.
pub fn find_zone<'a>(zones: &'a [ZoneConfig], name: &str) -> Option<&'a ZoneConfig> {
    zones.iter().find(|z| z.name == name)
}
