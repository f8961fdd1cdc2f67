//! The JSON messages Vigil publishes. Every message type has a JSON Schema in
//! `schemas/` at the repository root; the end-to-end tests validate real
//! messages against it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use vigil_inference::{ModelInfo, Prediction, Timings};

/// Version of the event JSON layout. Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

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

#[derive(Serialize)]
struct DetectionsJson<'a> {
    schema_version: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    device: &'a str,
    camera: &'a str,
    captured_at: String,
    published_at: String,
    /// Capture (frame leaving the decoder) to handing the message to the MQTT client.
    latency_ms: f64,
    frame: FrameJson,
    model: ModelJson<'a>,
    detections: Vec<DetectionJson<'a>>,
    /// Classifiers: top classes, best first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    classes: Vec<ClassJson<'a>>,
    /// Anomaly models: the verdict (regions are in `detections`).
    #[serde(skip_serializing_if = "Option::is_none")]
    anomaly: Option<AnomalyJson>,
    timings_ms: TimingsJson,
}

#[derive(Serialize)]
struct ClassJson<'a> {
    label: &'a str,
    class_id: u32,
    score: f32,
}

#[derive(Serialize)]
struct AnomalyJson {
    verdict: &'static str,
    score: f32,
    threshold: f32,
}

#[derive(Serialize)]
struct FrameJson {
    seq: u64,
    /// Stream timestamp in milliseconds, when the source has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pts_ms: Option<f64>,
    width: u32,
    height: u32,
}

#[derive(Serialize)]
struct ModelJson<'a> {
    name: &'a str,
    version: u32,
    sha256: &'a str,
}

#[derive(Serialize)]
struct DetectionJson<'a> {
    label: &'a str,
    class_id: u32,
    score: f32,
    /// `[x1, y1, x2, y2]` in the frame's pixels.
    #[serde(rename = "box")]
    bbox: [f32; 4],
    /// The same box divided by the frame's width and height (0..1).
    box_norm: [f32; 4],
}

#[derive(Serialize)]
struct TimingsJson {
    preprocess: f64,
    inference: f64,
    postprocess: f64,
}

/// RFC 3339 in UTC with milliseconds: `2026-11-26T14:53:07.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let dt = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (y, mo, da) = (dt.year(), u8::from(dt.month()), dt.day());
    let (h, mi, s) = (dt.hour(), dt.minute(), dt.second());
    format!("{y:04}-{mo:02}-{da:02}T{h:02}:{mi:02}:{s:02}.{:03}Z", d.subsec_millis())
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
        let json = DetectionsJson {
            schema_version: SCHEMA_VERSION,
            kind: "detections",
            id: self.id.to_string(),
            device,
            camera: &self.camera,
            captured_at: rfc3339(self.captured_at),
            published_at: rfc3339(now),
            latency_ms: ms(now_instant.saturating_duration_since(self.captured_instant)),
            frame: FrameJson {
                seq: self.frame_seq,
                pts_ms: self.pts.map(ms),
                width: self.width,
                height: self.height,
            },
            model: ModelJson {
                name: &self.model.name,
                version: self.model.version,
                sha256: &self.model.sha256,
            },
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
                .map(|c| ClassJson { label: &c.label, class_id: c.class_id, score: round4(c.score) })
                .collect(),
            anomaly: self.prediction.anomaly.map(|a| AnomalyJson {
                verdict: if a.is_anomalous { "NG" } else { "OK" },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
