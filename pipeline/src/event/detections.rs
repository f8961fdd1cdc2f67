//! The per-frame `detections` message: raw model output for integrators who
//! want it, on its own topic with QoS 0 (not stored while the broker is away).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use schemars::JsonSchema;
use serde::Serialize;
use vigil_inference::{ModelInfo, Prediction, Timings};

use super::{ModelRef, SCHEMA_VERSION, Timestamp, Verdict, schema};

/// What the inference worker hands to the publisher: everything about one
/// processed frame that had detections. Serialised only when published, so the
/// publish time and latency are measured at the last moment.
#[derive(Debug, Clone)]
pub struct DetectionsEvent {
    pub id: uuid::Uuid,
    pub camera: Arc<str>,
    pub captured_at: SystemTime,
    pub captured_instant: Instant,
    pub frame_seq: u64,
    pub pts: Option<Duration>,
    pub width: u32,
    pub height: u32,
    pub model: Arc<ModelInfo>,
    pub prediction: Prediction,
    pub timings: Timings,
}

/// Per-frame detections, published on <topic_prefix>/<device_id>/detections with QoS 0 when events.publish_detections is on (not stored while the broker is away).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Detections<'a> {
    #[schemars(schema_with = "schema::schema_version")]
    pub schema_version: u32,
    #[serde(rename = "type")]
    #[schemars(schema_with = "detections_type")]
    pub kind: &'static str,
    /// UUIDv7, unique per event: consumers de-duplicate on it.
    #[schemars(schema_with = "schema::uuid_v7")]
    pub id: String,
    #[schemars(schema_with = "schema::name")]
    pub device: &'a str,
    #[schemars(schema_with = "schema::name")]
    pub camera: &'a str,
    /// When the frame left the decoder (UTC).
    pub captured_at: Timestamp,
    /// When the event was handed to the MQTT client (UTC).
    pub published_at: Timestamp,
    /// Capture (frame leaving the decoder) to handing the message to the MQTT client, measured on a monotonic clock.
    #[schemars(schema_with = "schema::seconds")]
    pub latency_ms: f64,
    pub frame: DetectionsFrame,
    pub model: ModelRef,
    pub detections: Vec<DetectionJson<'a>>,
    /// Classifiers: the top classes, best first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<Class<'a>>,
    /// Anomaly models: the verdict; anomalous regions are in detections with label "anomaly".
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "AnomalyJson")]
    pub anomaly: Option<AnomalyJson>,
    pub timings_ms: TimingsJson,
}

fn detections_type(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "const": "detections" })
}

/// A class a classifier gave, with its score: in the `detections` message
/// and in `vigil infer --json`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Class<'a> {
    pub label: &'a str,
    pub class_id: u32,
    #[schemars(schema_with = "schema::score")]
    pub score: f32,
}

/// The verdict of an anomaly model.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnomalyJson {
    pub verdict: Verdict,
    pub score: f32,
    pub threshold: f32,
}

/// The frame the detections are of.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetectionsFrame {
    /// Frame number in the camera's stream since Vigil started it.
    pub seq: u64,
    /// Stream timestamp in milliseconds, when the source has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::seconds")]
    pub pts_ms: Option<f64>,
    #[schemars(range(min = 1))]
    pub width: u32,
    #[schemars(range(min = 1))]
    pub height: u32,
}

/// One detection, rounded for JSON.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetectionJson<'a> {
    pub label: &'a str,
    pub class_id: u32,
    #[schemars(schema_with = "schema::score")]
    pub score: f32,
    /// `[x1, y1, x2, y2]` in the frame's pixels.
    #[serde(rename = "box")]
    #[schemars(schema_with = "schema::pixels")]
    pub bbox: [f32; 4],
    /// The same box divided by the frame's width and height (0..1).
    #[schemars(schema_with = "schema::normalised")]
    pub box_norm: [f32; 4],
}

/// Where the frame's time went, milliseconds.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimingsJson {
    #[schemars(schema_with = "schema::seconds")]
    pub preprocess: f64,
    #[schemars(schema_with = "schema::seconds")]
    pub inference: f64,
    #[schemars(schema_with = "schema::seconds")]
    pub postprocess: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn round1(v: f32) -> f32 {
    (v * 10.0).round() / 10.0
}

fn round4(v: f32) -> f32 {
    (v * 10_000.0).round() / 10_000.0
}

impl DetectionsEvent {
    /// The event JSON, stamped with the publish time `now`.
    pub fn to_json(&self, device: &str, now: SystemTime, now_instant: Instant) -> Vec<u8> {
        let (w, h) = (self.width as f32, self.height as f32);
        let json = Detections {
            schema_version: SCHEMA_VERSION,
            kind: "detections",
            id: self.id.to_string(),
            device,
            camera: &self.camera,
            captured_at: Timestamp(self.captured_at),
            published_at: Timestamp(now),
            latency_ms: ms(now_instant.saturating_duration_since(self.captured_instant)),
            frame: DetectionsFrame {
                seq: self.frame_seq,
                pts_ms: self.pts.map(ms),
                width: self.width,
                height: self.height,
            },
            model: self.model.as_ref().into(),
            detections: self
                .prediction
                .detections
                .iter()
                .map(|d| {
                    let b = d.bbox;
                    DetectionJson {
                        label: &d.label,
                        class_id: d.class_id,
                        score: round4(d.score),
                        bbox: [round1(b.x1), round1(b.y1), round1(b.x2), round1(b.y2)],
                        box_norm: [round4(b.x1 / w), round4(b.y1 / h), round4(b.x2 / w), round4(b.y2 / h)],
                    }
                })
                .collect(),
            classes: self
                .prediction
                .classes
                .iter()
                .map(|c| Class { label: &c.label, class_id: c.class_id, score: round4(c.score) })
                .collect(),
            anomaly: self.prediction.anomaly.map(|a| AnomalyJson {
                verdict: Verdict::of(a.is_anomalous),
                score: a.score,
                threshold: a.threshold,
            }),
            timings_ms: TimingsJson {
                preprocess: ms(self.timings.preprocess),
                inference: ms(self.timings.run),
                postprocess: ms(self.timings.postprocess),
            },
        };
        serde_json::to_vec(&json).expect("event JSON serialises")
    }
}
