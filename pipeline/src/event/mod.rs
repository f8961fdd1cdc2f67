//! The JSON messages Vigil publishes, as types: the one source of truth for
//! their bytes and for their JSON Schemas.
//!
//! ```text
//!  lifecycle, rules, model swaps ─▶ Event { Envelope, Payload } ─▶ outbox (JSON)
//!                                        │ the writer gives it a seq
//!                                        ├─▶ Recorded { event, seq } ─▶ API (recent list, live stream)
//!                                        └─▶ Published { event, seq, published_at, latency_ms } ─▶ MQTT
//!  inference worker ─▶ Detections ─▶ MQTT `detections` (per frame, QoS 0)
//! ```
//!
//! Every message type has a JSON Schema in `schemas/` at the repository root,
//! generated from these types (`cargo run -p vigil-pipeline --example
//! make_schemas`); a test fails when the committed files differ, and the
//! end-to-end tests validate real messages against them.
//!
//! Key order: events have always gone out with their keys in alphabetical
//! order (they used to be built as `serde_json` maps, which sort), then
//! `seq`, `published_at` and `latency_ms`. Consumers may keep golden files,
//! so [`Event`] serialises through a map to keep that order byte for byte
//! (`tests/event_payloads.rs` pins it); the per-frame `detections` message
//! keeps the field order of its struct, as it always had.

mod detections;
pub mod schema;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Serialize, Serializer};
use vigil_inference::{BBox, ModelInfo};

pub use detections::{Class, Detections, DetectionsEvent};

use crate::rules::Trigger;

/// Version of the event JSON layout. Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// RFC 3339 in UTC with milliseconds: `2026-11-26T14:53:07.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let dt = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (y, mo, da) = (dt.year(), u8::from(dt.month()), dt.day());
    let (h, mi, s) = (dt.hour(), dt.minute(), dt.second());
    format!("{y:04}-{mo:02}-{da:02}T{h:02}:{mi:02}:{s:02}.{:03}Z", d.subsec_millis())
}

/// A wall-clock time, written as [`rfc3339`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(self.0))
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schema::timestamp()
    }
}

/// Rounded in f64: rounding in f32 would print as 320.70001220703125.
fn round(v: f32, scale: f64) -> f64 {
    (f64::from(v) * scale).round() / scale
}

/// A score for JSON, rounded to 4 places.
pub fn round4(v: f32) -> f64 {
    round(v, 10_000.0)
}

/// Seconds for JSON, rounded to the millisecond.
pub fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// The fields every event on the `events` topic has.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Envelope {
    #[schemars(schema_with = "schema::schema_version")]
    pub schema_version: u32,
    /// UUIDv7, unique per event: consumers de-duplicate on it (delivery is at least once).
    #[serde(serialize_with = "hyphenated")]
    #[schemars(schema_with = "schema::uuid_v7")]
    pub id: uuid::Uuid,
    #[schemars(schema_with = "schema::name")]
    pub device: Arc<str>,
    /// The camera and the frame the event happened in; `None` for events
    /// that no frame caused (a model swap), which then leave both keys out.
    #[serde(flatten)]
    pub source: Option<Source>,
    /// Capture time of the frame the event happened in (UTC).
    pub time: Timestamp,
    pub model: ModelRef,
}

fn hyphenated<S: Serializer>(id: &uuid::Uuid, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&id.hyphenated())
}

/// Where an event comes from.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Source {
    #[schemars(schema_with = "schema::name")]
    pub camera: Arc<str>,
    pub frame: FrameRef,
}

/// The frame an event happened in.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FrameRef {
    pub seq: u64,
    #[schemars(range(min = 1))]
    pub width: u32,
    #[schemars(range(min = 1))]
    pub height: u32,
}

/// The model that saw it: events name the exact version.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// The model slot.
    pub name: String,
    /// Version within the slot (1: the file the config names).
    #[schemars(range(min = 1))]
    pub version: u32,
    #[schemars(schema_with = "schema::sha256")]
    pub sha256: String,
}

impl From<&ModelInfo> for ModelRef {
    fn from(m: &ModelInfo) -> ModelRef {
        ModelRef { name: m.name.clone(), version: m.version, sha256: m.sha256.clone() }
    }
}

/// A box in frame pixels and normalised, both rounded for JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, JsonSchema)]
pub struct BoxJson {
    /// [x1, y1, x2, y2] in frame pixels
    #[serde(rename = "box")]
    #[schemars(schema_with = "schema::pixels")]
    pub pixels: [f64; 4],
    /// box divided by the frame's width and height
    #[schemars(schema_with = "schema::normalised")]
    pub box_norm: [f64; 4],
}

impl BoxJson {
    /// `b` in a `w` x `h` frame: pixels to 0.1, fractions to 4 places.
    pub fn new(b: &BBox, w: f32, h: f32) -> BoxJson {
        BoxJson {
            pixels: [round(b.x1, 10.0), round(b.y1, 10.0), round(b.x2, 10.0), round(b.y2, 10.0)],
            box_norm: [round4(b.x1 / w), round4(b.y1 / h), round4(b.x2 / w), round4(b.y2 / h)],
        }
    }
}

/// The tracked object: stable id per camera, its class, latest score and box.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TrackJson {
    #[schemars(range(min = 1))]
    pub id: u64,
    pub label: Arc<str>,
    pub class_id: u32,
    #[schemars(schema_with = "schema::score")]
    pub score: f64,
    #[serde(flatten)]
    pub bbox: BoxJson,
}

impl TrackJson {
    pub fn new(t: &crate::tracker::Track, w: f32, h: f32) -> TrackJson {
        TrackJson {
            id: t.id,
            label: t.label.clone(),
            class_id: t.class_id,
            score: round4(t.score),
            bbox: BoxJson::new(&t.bbox, w, h),
        }
    }
}

/// A track a zone or line event names: the tracker always knows it, but
/// should it not, the event still goes out with the id alone.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TrackRef {
    Known(TrackJson),
    Unknown { id: u64 },
}

/// A defect an inspection found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Defect {
    pub label: String,
    pub score: f64,
    /// Where, for detectors and anomaly regions; classifiers have no box.
    #[serde(flatten)]
    pub bbox: Option<BoxJson>,
}

/// What was inspected.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Part {
    /// A zone trigger: the part's track, and how long it was in the zone.
    Track { track: u64, label: Arc<str>, in_zone_s: f64 },
    /// A zone trigger whose track is gone: its id.
    TrackId { track: u64 },
    /// A command trigger: the part id the command gave, or null (and
    /// null for interval triggers).
    Named(Option<String>),
}

/// An inspection's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub enum Verdict {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "NG")]
    Ng,
}

impl Verdict {
    pub fn of(bad: bool) -> Verdict {
        if bad { Verdict::Ng } else { Verdict::Ok }
    }
}

/// The side a counting line was crossed to, looking from its `from` to its `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Left,
    Right,
}

/// Declares the payloads: one struct per event type, its `type` and the
/// description its schema carries, and whether a camera frame caused it.
macro_rules! payloads {
    ($($(#[doc = $doc:literal])* $kind:literal, frame: $frame:literal, $name:ident { $($body:tt)* })*) => {
        $(
            $(#[doc = $doc])*
            #[derive(Debug, Clone, Serialize, JsonSchema)]
            pub struct $name { $($body)* }

            impl From<$name> for Payload {
                fn from(p: $name) -> Payload {
                    Payload::$name(p)
                }
            }
        )*

        /// What an event says beyond the envelope; `type` names it.
        #[derive(Debug, Clone, Serialize)]
        #[serde(tag = "type")]
        pub enum Payload {
            $(#[serde(rename = $kind)] $name($name),)*
        }

        impl Payload {
            /// The event's `type`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Payload::$name(_) => $kind,)*
                }
            }
        }

        /// Every event type: its `type`, whether a frame caused it, and its
        /// payload's schema.
        pub(crate) const KINDS: &[(&str, bool, fn(&mut schemars::SchemaGenerator) -> schemars::Schema)] =
            &[$(($kind, $frame, <$name as JsonSchema>::json_schema),)*];
    };
}

payloads! {
    /// A tracked object was confirmed.
    "object.start", frame: true, ObjectStart {
        pub track: TrackJson,
    }
    /// A tracked object moved noticeably or changed zones (rate-limited).
    "object.update", frame: true, ObjectUpdate {
        pub track: TrackJson,
        /// The zones it is in.
        pub zones: Vec<String>,
    }
    /// A tracked object was not seen for the tracker's max_missing_s (or the camera stopped).
    "object.end", frame: true, ObjectEnd {
        pub track: TrackJson,
        #[schemars(schema_with = "schema::seconds")]
        pub duration_s: f64,
        #[schemars(schema_with = "schema::score")]
        pub best_score: f64,
        #[schemars(schema_with = "schema::snapshot")]
        pub snapshot: Option<String>,
    }
    /// A tracked object entered a zone (after the zone's min_dwell_s).
    "zone.enter", frame: true, ZoneEnter {
        #[schemars(schema_with = "schema::name")]
        pub zone: String,
        #[schemars(with = "TrackJson")]
        pub track: TrackRef,
    }
    /// A tracked object left a zone it had entered.
    "zone.exit", frame: true, ZoneExit {
        #[schemars(schema_with = "schema::name")]
        pub zone: String,
        #[schemars(with = "TrackJson")]
        pub track: TrackRef,
        #[schemars(schema_with = "schema::seconds")]
        pub dwell_s: f64,
    }
    /// A tracked object crossed a counting line.
    "line.cross", frame: true, LineCross {
        #[schemars(schema_with = "schema::name")]
        pub line: String,
        pub direction: Direction,
        /// Crossings of this line in this direction since the start.
        #[schemars(range(min = 1))]
        pub count: u64,
        #[schemars(with = "TrackJson")]
        pub track: TrackRef,
    }
    /// One verdict per inspected part.
    "inspection.verdict", frame: true, InspectionVerdict {
        #[schemars(schema_with = "schema::name")]
        pub rule: String,
        pub trigger: Trigger,
        pub part: Part,
        pub verdict: Verdict,
        pub defects: Vec<Defect>,
        #[schemars(schema_with = "schema::snapshot")]
        pub snapshot: Option<String>,
    }
    /// A watched label has persisted (in the zone, if any) for the rule's min_duration_s.
    "safety.alert", frame: true, SafetyAlert {
        #[schemars(schema_with = "schema::name")]
        pub rule: String,
        #[schemars(schema_with = "schema::name_or_null")]
        pub zone: Option<String>,
        pub track: TrackJson,
        #[schemars(schema_with = "schema::seconds")]
        pub duration_s: f64,
        #[schemars(schema_with = "schema::snapshot")]
        pub snapshot: Option<String>,
    }
    /// An alerted condition is over.
    "safety.clear", frame: true, SafetyClear {
        #[schemars(schema_with = "schema::name")]
        pub rule: String,
        #[schemars(schema_with = "schema::name_or_null")]
        pub zone: Option<String>,
        pub track: TrackJson,
        #[schemars(schema_with = "schema::seconds")]
        pub duration_s: f64,
    }
    /// A vehicle has waited in the bay for the rule's dwell_s.
    "curbside.arrival", frame: true, CurbsideArrival {
        #[schemars(schema_with = "schema::name")]
        pub rule: String,
        #[schemars(schema_with = "schema::name")]
        pub bay: String,
        pub track: TrackJson,
        #[schemars(schema_with = "schema::seconds")]
        pub waited_s: f64,
        #[schemars(schema_with = "schema::snapshot")]
        pub snapshot: Option<String>,
    }
    /// An arrived vehicle left the bay.
    "curbside.departure", frame: true, CurbsideDeparture {
        #[schemars(schema_with = "schema::name")]
        pub rule: String,
        #[schemars(schema_with = "schema::name")]
        pub bay: String,
        pub track: TrackJson,
        #[schemars(schema_with = "schema::seconds")]
        pub dwell_s: f64,
    }
    /// A model was swapped in through the API.
    "model.activated", frame: false, ModelActivated {
        #[schemars(schema_with = "schema::name")]
        pub slot: String,
        #[schemars(range(min = 1))]
        pub version: u32,
        /// The sha256 of the version it replaced, if any.
        #[schemars(schema_with = "schema::sha256_or_null")]
        pub previous: Option<String>,
        /// The swap itself, in milliseconds.
        #[schemars(schema_with = "schema::seconds")]
        pub switch_ms: f64,
    }
}

impl Payload {
    /// Where the event's snapshot link goes, for the events that have one.
    pub fn snapshot_mut(&mut self) -> Option<&mut Option<String>> {
        match self {
            Payload::ObjectEnd(p) => Some(&mut p.snapshot),
            Payload::InspectionVerdict(p) => Some(&mut p.snapshot),
            Payload::SafetyAlert(p) => Some(&mut p.snapshot),
            Payload::CurbsideArrival(p) => Some(&mut p.snapshot),
            _ => None,
        }
    }
}

/// One event on the `events` topic, as it is stored in the outbox.
#[derive(Debug, Clone)]
pub struct Event {
    pub envelope: Envelope,
    pub payload: Payload,
}

impl Serialize for Event {
    /// The envelope's and the payload's keys together, in alphabetical order
    /// (see the module's note on key order).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut map = match serde_json::to_value(&self.envelope).map_err(S::Error::custom)? {
            serde_json::Value::Object(m) => m,
            _ => return Err(S::Error::custom("the envelope is not an object")),
        };
        match serde_json::to_value(&self.payload).map_err(S::Error::custom)? {
            serde_json::Value::Object(m) => map.extend(m),
            _ => return Err(S::Error::custom("the payload is not an object")),
        }
        map.serialize(s)
    }
}

impl Event {
    /// An event about `frame` of `camera`, seen by `model`.
    pub fn of_frame(
        id: uuid::Uuid,
        device: Arc<str>,
        camera: Arc<str>,
        frame: &vigil_camera::Frame,
        model: &ModelInfo,
        payload: Payload,
    ) -> Event {
        Event {
            envelope: Envelope {
                schema_version: SCHEMA_VERSION,
                id,
                device,
                source: Some(Source {
                    camera,
                    frame: FrameRef { seq: frame.seq(), width: frame.width(), height: frame.height() },
                }),
                time: Timestamp(frame.captured_at()),
                model: model.into(),
            },
            payload,
        }
    }

    /// An event no frame caused (a model swap), at `time`.
    pub fn of_device(
        id: uuid::Uuid,
        device: Arc<str>,
        time: SystemTime,
        model: ModelRef,
        payload: impl Into<Payload>,
    ) -> Event {
        Event {
            envelope: Envelope {
                schema_version: SCHEMA_VERSION,
                id,
                device,
                source: None,
                time: Timestamp(time),
                model,
            },
            payload: payload.into(),
        }
    }

    /// The event's `type`.
    pub fn kind(&self) -> &'static str {
        self.payload.kind()
    }

    /// When its frame was captured (or the event made), in unix milliseconds:
    /// latency at publish is measured from it.
    pub fn captured_ms(&self) -> u64 {
        self.envelope.time.0.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    /// The JSON the outbox stores.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("event JSON serialises")
    }
}

/// An event with the sequence number the outbox gave it: what the API lists
/// and streams.
#[derive(Debug, Serialize)]
pub struct Recorded<'a, E: Serialize> {
    #[serde(flatten)]
    pub event: &'a E,
    pub seq: u64,
}

/// An event as MQTT carries it: stamped when it is handed to the client.
#[derive(Debug, Serialize)]
pub struct Published<'a, E: Serialize> {
    #[serde(flatten)]
    pub event: &'a E,
    #[serde(flatten)]
    pub stamp: Stamp,
}

/// What the link adds to an event when it hands it to the MQTT client.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct Stamp {
    /// The device's event sequence number: consecutive and rising across restarts, so a consumer can spot a gap (an event dropped from a full outbox).
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// When the event was handed to the MQTT client (UTC); a re-delivery has a later one.
    pub published_at: Timestamp,
    /// Capture to publish, milliseconds.
    #[serde(serialize_with = "whole_or_fraction")]
    #[schemars(schema_with = "schema::seconds")]
    pub latency_ms: f64,
}

/// A whole number of milliseconds goes out as `250`, not `250.0`: the way
/// latencies have always been written on the wire.
fn whole_or_fraction<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 { s.serialize_i64(*v as i64) } else { s.serialize_f64(*v) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_utc_timestamps_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    fn activated(previous: Option<&str>, switch_ms: f64) -> (Event, serde_json::Value) {
        let id = uuid::Uuid::now_v7();
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let sha = "ab".repeat(32);
        let event = Event::of_device(
            id,
            "box-7".into(),
            now,
            ModelRef { name: "det".into(), version: 3, sha256: sha.clone() },
            ModelActivated { slot: "det".into(), version: 3, previous: previous.map(Into::into), switch_ms },
        );
        // How `model.activated` was built before it had a type.
        let before = serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "type": "model.activated",
            "id": id.to_string(),
            "device": "box-7",
            "time": rfc3339(now),
            "model": { "name": "det", "version": 3, "sha256": sha },
            "slot": "det",
            "version": 3,
            "previous": previous,
            "switch_ms": switch_ms,
        });
        (event, before)
    }

    #[test]
    fn model_activated_keeps_its_bytes() {
        for (previous, switch_ms) in [(None, 0.0123), (Some("cd".repeat(32).as_str()), 2.0)] {
            let (event, before) = activated(previous, switch_ms);
            assert_eq!(
                String::from_utf8(event.to_json()).expect("utf8"),
                serde_json::to_string(&before).expect("json")
            );
            assert_eq!(event.captured_ms(), 1_795_000_000_123);
        }
    }

    /// The API's recent list and live stream: the stored event with `seq`
    /// among its keys, as when the writer parsed the JSON back and inserted it.
    #[test]
    fn recorded_events_are_the_stored_ones_with_their_seq() {
        let (event, _) = activated(Some(&"cd".repeat(32)), 1.5);
        let mut before: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&event.to_json()).expect("object");
        before.insert("seq".into(), 7.into());
        let now = serde_json::to_value(Recorded { event: &event, seq: 7 }).expect("value");
        assert_eq!(now.to_string(), serde_json::Value::Object(before).to_string());
    }
}
