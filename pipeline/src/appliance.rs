//! The running appliance: cameras, inference workers and the publisher,
//! wired together from a validated config.
//!
//! ```text
//!  Camera (GStreamer threads) ─▶ FrameSlot (newest wins) ─▶ worker thread "infer-<camera>"
//!                                                             │ Detector::detect (shared per model)
//!                                                             ├─▶ latest result (snapshot endpoint)
//!                                                             └─▶ events channel (bounded, blocking) ─▶ MQTT
//! ```
//! Inference runs on its own OS threads, never on the async runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
use vigil_camera::{Camera, Frame, FrameSlot};
use vigil_inference::{Detector, ImageView, ModelInfo, Prediction, Scratch, runtime};

use crate::config::LoadedConfig;
use crate::event::DetectionsEvent;
use crate::mqtt::{self, MqttHealth, MqttStatus, PublisherSettings, Topics};
use crate::{StartError, annotate};

/// Capacity of the events channel between inference and the publisher. When
/// full, inference waits (events are never dropped) and the camera slots
/// absorb the pressure by dropping frames, which is counted.
const EVENT_QUEUE: usize = 256;

/// The newest processed frame of a camera and what was found in it.
#[derive(Debug)]
pub struct Processed {
    pub frame: Frame,
    pub prediction: Prediction,
    /// `None` for cameras that are only watched.
    pub model: Option<Arc<ModelInfo>>,
}

#[derive(Debug)]
struct CameraRuntime {
    name: String,
    model: Option<String>,
    camera: Mutex<Option<Camera>>,
    /// Set when the source could not even be parsed: the camera never starts.
    failed: Option<String>,
    slot: Arc<FrameSlot>,
    latest: Arc<Mutex<Option<Arc<Processed>>>>,
    processed: Arc<AtomicU64>,
    inference_errors: Arc<AtomicU64>,
    worker: Mutex<Option<JoinHandle<()>>>,
    source: String,
}

/// A running Vigil.
#[derive(Debug)]
pub struct Appliance {
    device: String,
    cameras: Vec<CameraRuntime>,
    models: HashMap<String, Arc<Detector>>,
    model_order: Vec<String>,
    mqtt: Arc<MqttStatus>,
    publisher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    started: Instant,
    ort_library: String,
    topics: Topics,
}

/// Everything `/healthz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// `ok` when every camera streams and the broker is connected, else `degraded`.
    pub status: &'static str,
    pub device: String,
    pub version: &'static str,
    pub uptime_s: f64,
    pub onnxruntime: String,
    pub mqtt: MqttHealth,
    pub topics: TopicsJson,
    pub cameras: Vec<CameraHealth>,
    pub models: Vec<ModelHealth>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicsJson {
    pub events: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraHealth {
    pub name: String,
    pub source: String,
    pub model: Option<String>,
    /// `starting`, `streaming`, `stalled`, `reconnecting`, `failed`, `ended` or `stopped`.
    pub state: &'static str,
    pub last_error: Option<String>,
    pub last_frame_age_ms: Option<u64>,
    pub frames_received: u64,
    pub frames_processed: u64,
    /// Frames replaced by a newer one before inference took them (inference busy).
    pub frames_dropped_busy: u64,
    /// Frames dropped on purpose to keep to the camera's `fps`.
    pub frames_dropped_rate: u64,
    pub inference_errors: u64,
    pub reconnects: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelHealth {
    pub name: String,
    pub sha256: String,
    pub decoder: &'static str,
    pub labels: Vec<String>,
    /// `[width, height]`; absent when frames are fed at their own size.
    pub input: Option<[u32; 2]>,
    pub provider: vigil_inference::ProviderStatus,
}

/// Why a snapshot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no camera named {0:?}")]
    UnknownCamera(String),
    #[error("camera {0:?} has not produced a processed frame yet")]
    NoFrameYet(String),
    #[error("JPEG encoding failed: {0}")]
    Encode(String),
}

impl Appliance {
    /// Loads ONNX Runtime and the models, then starts the publisher, the
    /// cameras and their workers. Returns once everything is started; cameras
    /// connect in the background.
    pub fn start(loaded: &LoadedConfig) -> Result<Arc<Appliance>, StartError> {
        let cfg = &loaded.config;
        let rt = runtime::init()?;
        let mut models = HashMap::new();
        let mut model_order = Vec::new();
        for m in &cfg.models {
            let det = Detector::load(&m.name, &m.path, m.options())
                .map_err(|e| StartError::Model { name: m.name.clone(), error: e })?;
            tracing::info!(
                model = %m.name,
                sha256 = %det.info().sha256,
                decoder = det.info().decoder().as_str(),
                provider = %det.info().provider.active,
                "model loaded"
            );
            models.insert(m.name.clone(), Arc::new(det));
            model_order.push(m.name.clone());
        }

        let topics = Topics::new(&cfg.mqtt.topic_prefix, &cfg.device_id);
        let status = MqttStatus::new(loaded.mqtt.to_string());
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let publisher = mqtt::spawn(
            PublisherSettings {
                target: loaded.mqtt.clone(),
                client_id: cfg.mqtt.client_id.clone().unwrap_or_else(|| format!("vigil-{}", cfg.device_id)),
                keep_alive: Duration::from_secs(cfg.mqtt.keep_alive_s),
                device: cfg.device_id.clone(),
                topics: topics.clone(),
            },
            rx,
            status.clone(),
        );

        let mut cameras = Vec::new();
        for (c, source) in cfg.cameras.iter().zip(&loaded.sources) {
            let detector = c.model.as_ref().map(|m| models[m].clone());
            let slot = FrameSlot::new();
            let (camera, failed, source) = match source {
                Ok(source) => (
                    Some(Camera::start(&c.name, source.clone(), c.options(), slot.clone())),
                    None,
                    source.to_string(),
                ),
                Err(e) => {
                    tracing::error!(camera = %c.name, error = %e, "camera not started: its source is invalid");
                    slot.close();
                    (None, Some(e.clone()), vigil_camera::redact(&c.source))
                }
            };
            let latest = Arc::new(Mutex::new(None));
            let processed = Arc::new(AtomicU64::new(0));
            let inference_errors = Arc::new(AtomicU64::new(0));
            let worker = spawn_worker(
                c.name.clone(),
                slot.clone(),
                detector,
                tx.clone(),
                latest.clone(),
                processed.clone(),
                inference_errors.clone(),
            );
            cameras.push(CameraRuntime {
                name: c.name.clone(),
                model: c.model.clone(),
                camera: Mutex::new(camera),
                failed,
                slot,
                latest,
                processed,
                inference_errors,
                worker: Mutex::new(Some(worker)),
                source,
            });
        }
        // Only the workers hold senders now: when they all stop, the publisher
        // sees the channel close, flushes and says `offline`.
        drop(tx);

        Ok(Arc::new(Appliance {
            device: cfg.device_id.clone(),
            cameras,
            models,
            model_order,
            mqtt: status,
            publisher: Mutex::new(Some(publisher)),
            started: Instant::now(),
            ort_library: rt.library.display().to_string(),
            topics,
        }))
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn camera_names(&self) -> Vec<String> {
        self.cameras.iter().map(|c| c.name.clone()).collect()
    }

    pub fn health(&self) -> Health {
        let cameras: Vec<CameraHealth> = self
            .cameras
            .iter()
            .map(|c| {
                let status = c.camera.lock().as_ref().map(Camera::status);
                let (state, last_error, age, received, dropped_rate, reconnects, size) =
                    match (status, &c.failed) {
                        (Some(s), _) => (
                            s.state.as_str(),
                            s.last_error,
                            s.last_frame_age.map(|a| a.as_millis() as u64),
                            s.frames_received,
                            s.frames_dropped_rate,
                            s.reconnects,
                            s.frame_size,
                        ),
                        (None, Some(e)) => ("failed", Some(e.clone()), None, 0, 0, 0, None),
                        (None, None) => ("stopped", None, None, 0, 0, 0, None),
                    };
                CameraHealth {
                    name: c.name.clone(),
                    source: c.source.clone(),
                    model: c.model.clone(),
                    state,
                    last_error,
                    last_frame_age_ms: age,
                    frames_received: received,
                    frames_processed: c.processed.load(Ordering::Relaxed),
                    frames_dropped_busy: c.slot.dropped(),
                    frames_dropped_rate: dropped_rate,
                    inference_errors: c.inference_errors.load(Ordering::Relaxed),
                    reconnects,
                    width: size.map(|s| s.0),
                    height: size.map(|s| s.1),
                }
            })
            .collect();
        let mqtt = self.mqtt.health();
        let ok = cameras.iter().all(|c| c.state == "streaming") && mqtt.state == mqtt::LinkState::Connected;
        Health {
            status: if ok { "ok" } else { "degraded" },
            device: self.device.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            onnxruntime: self.ort_library.clone(),
            mqtt,
            topics: TopicsJson { events: self.topics.events.clone(), status: self.topics.status.clone() },
            cameras,
            models: self
                .model_order
                .iter()
                .map(|n| {
                    let i = self.models[n].info();
                    ModelHealth {
                        name: i.name.clone(),
                        sha256: i.sha256.clone(),
                        decoder: i.decoder().as_str(),
                        labels: i.labels().to_vec(),
                        input: i.input_size().map(|(w, h)| [w, h]),
                        provider: i.provider.clone(),
                    }
                })
                .collect(),
        }
    }

    /// The newest processed frame of `camera` with its detections drawn, as
    /// JPEG. CPU work: call it from a blocking context.
    pub fn snapshot_jpeg(&self, camera: &str) -> Result<Vec<u8>, SnapshotError> {
        let c = self
            .cameras
            .iter()
            .find(|c| c.name == camera)
            .ok_or_else(|| SnapshotError::UnknownCamera(camera.to_owned()))?;
        let latest = c.latest.lock().clone().ok_or_else(|| SnapshotError::NoFrameYet(camera.to_owned()))?;
        let f = &latest.frame;
        let rgb = annotate::draw(f.data(), f.width(), f.height(), f.stride(), &latest.prediction);
        annotate::encode_jpeg(&rgb, f.width(), f.height(), 85).map_err(SnapshotError::Encode)
    }

    /// Stops cameras first, lets the workers drain, then waits (up to
    /// `deadline`) for the publisher to flush and publish `offline`.
    pub async fn shutdown(self: &Arc<Self>, deadline: Duration) {
        let me = self.clone();
        let stop = tokio::task::spawn_blocking(move || {
            for c in &me.cameras {
                if let Some(mut cam) = c.camera.lock().take() {
                    cam.stop();
                }
            }
            for c in &me.cameras {
                if let Some(w) = c.worker.lock().take() {
                    let _ = w.join();
                }
            }
        });
        let publisher = self.publisher.lock().take();
        let all = async move {
            let _ = stop.await;
            if let Some(p) = publisher {
                let _ = p.await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(deadline_s = deadline.as_secs_f64(), "shutdown deadline passed; exiting anyway");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_worker(
    camera: String,
    slot: Arc<FrameSlot>,
    detector: Option<Arc<Detector>>,
    events: mpsc::Sender<DetectionsEvent>,
    latest: Arc<Mutex<Option<Arc<Processed>>>>,
    processed: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("infer-{camera}"))
        .spawn(move || {
            let span = tracing::info_span!("inference", camera = %camera);
            let _e = span.enter();
            let camera: Arc<str> = camera.into();
            let mut scratch = Scratch::default();
            loop {
                let Some(frame) = slot.take_timeout(Duration::from_millis(500)) else {
                    if slot.is_closed() {
                        break;
                    }
                    continue;
                };
                let Some(view) = ImageView::new(frame.data(), frame.width(), frame.height(), frame.stride())
                else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        width = frame.width(),
                        height = frame.height(),
                        "frame buffer smaller than its size says; skipped"
                    );
                    continue;
                };
                let Some(detector) = &detector else {
                    // A camera that is only watched: keep its newest frame for snapshots.
                    processed.fetch_add(1, Ordering::Relaxed);
                    *latest.lock() =
                        Some(Arc::new(Processed { frame, prediction: Prediction::default(), model: None }));
                    continue;
                };
                let (prediction, timings) = match detector.detect(&view, &mut scratch) {
                    Ok(r) => r,
                    Err(e) => {
                        let n = errors.fetch_add(1, Ordering::Relaxed);
                        // The first error and then one in a hundred: a broken
                        // model must not flood the log at frame rate.
                        if n.is_multiple_of(100) {
                            tracing::error!(error = %e, count = n + 1, "inference failed");
                        }
                        continue;
                    }
                };
                processed.fetch_add(1, Ordering::Relaxed);
                let model = detector.info().clone();
                let noteworthy = !prediction.detections.is_empty()
                    || !prediction.classes.is_empty()
                    || prediction.anomaly.is_some();
                if noteworthy {
                    let event = DetectionsEvent {
                        id: uuid::Uuid::now_v7(),
                        camera: camera.clone(),
                        captured_at: frame.captured_at(),
                        captured_instant: frame.captured_instant(),
                        frame_seq: frame.seq(),
                        pts: frame.pts(),
                        width: frame.width(),
                        height: frame.height(),
                        model: model.clone(),
                        prediction: prediction.clone(),
                        timings,
                    };
                    *latest.lock() = Some(Arc::new(Processed { frame, prediction, model: Some(model) }));
                    if events.blocking_send(event).is_err() {
                        break;
                    }
                } else {
                    *latest.lock() = Some(Arc::new(Processed { frame, prediction, model: Some(model) }));
                }
            }
        })
        .expect("spawning an inference thread")
}
