//! The running appliance: cameras, inference workers, the event engine, the
//! outbox and the broker link, wired together from a validated config.
//!
//! ```text
//!  Camera (GStreamer) ─▶ FrameSlot (newest wins) ─▶ worker thread "infer-<camera>"
//!                                                   │ Detector::detect (one session per model)
//!                                                   │ CameraEvents: tracker, zones, rules
//!                                                   ├─▶ latest result ─▶ snapshot endpoint
//!                                                   ├─▶ per-frame detections (QoS 0, optional, drop when busy)
//!                                                   └─▶ events channel (bounded, blocks) ─▶ writer ─▶ outbox (disk)
//!                                                                                               │
//!  commands topic ─▶ router ─▶ camera's pending inspection          MQTT link ◀────────────────┘
//! ```
//! Inference and event logic run on the camera's own OS thread, never on the
//! async runtime; disk writes run on the blocking pool.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use vigil_camera::{Camera, Frame, FrameSlot, Progress, Taken};
use vigil_inference::{
    BBox, Detector, I420View, ImageView, ModelInfo, Prediction, Prepared, YuvMatrix, runtime,
};

use crate::config::LoadedConfig;
use crate::event::{DetectionsEvent, Event, ModelActivated, ModelRef};
use crate::lifecycle::{CameraEvents, Emitted};
use crate::metrics::{StageMetrics, escape};
use crate::models::{Activation, ModelError, ModelSlot};
use crate::mqtt::{self, AzureAuth, Command, LinkConfig, MqttHealth, MqttStatus, Topics};
use crate::outbox::Outbox;
use crate::rules::RuleState;
use crate::scheduler::{BatchPolicy, InferenceQueue, RunnerStats, Submitter, Wait, Waker};
use crate::settings::RunSettings;
use crate::snapshots::SnapshotStore;
use crate::threads::ThreadPlan;
use crate::writer::EventLedger;
use crate::{StartError, annotate, azure};

/// Capacity of the events channel between the cameras and the outbox writer.
/// When full, inference waits (events are never dropped) and the camera slots
/// absorb the pressure by dropping frames, which is counted.
const EVENT_QUEUE: usize = 1024;

/// The newest processed frame of a camera and what was found in it.
#[derive(Debug)]
pub struct Processed {
    pub frame: Frame,
    pub prediction: Prediction,
    /// `None` for cameras that are only watched.
    pub model: Option<Arc<ModelInfo>>,
}

/// An inspection requested for a camera: `Some(part id or None)`.
type PendingCommand = Arc<Mutex<Option<Option<String>>>>;

#[derive(Debug)]
struct CameraRuntime {
    name: String,
    model: Option<String>,
    camera: Mutex<Option<Camera>>,
    /// Set when the source could not even be parsed: the camera never starts.
    failed: Option<String>,
    slot: Arc<FrameSlot>,
    latest: Arc<Mutex<Option<Arc<Processed>>>>,
    processed: Arc<Progress>,
    skipped_still: Arc<AtomicU64>,
    on_regions: Arc<AtomicU64>,
    motion_gating: bool,
    inference_errors: Arc<AtomicU64>,
    /// Frames skipped because the model did not answer in time.
    no_answer: Arc<AtomicU64>,
    worker: Mutex<Option<JoinHandle<()>>>,
    source: String,
    command: PendingCommand,
    line_counts: Arc<Mutex<Vec<(String, u64, u64)>>>,
    stages: Arc<StageMetrics>,
    /// For the fps gauges: (when, received, processed) at the last scrape.
    rate_sample: Mutex<Option<(Instant, u64, u64)>>,
}

/// How many recent events the API keeps in memory.
const RECENT_EVENTS: usize = 1000;

/// A running Vigil.
#[derive(Debug)]
pub struct Appliance {
    device: String,
    cameras: Vec<CameraRuntime>,
    models: HashMap<String, Arc<ModelSlot>>,
    /// Each model's runner: its counters and batching.
    runners: HashMap<String, (Arc<RunnerStats>, BatchPolicy)>,
    threads: ThreadPlan,
    /// For events the API causes (model swaps); dropped at shutdown so the
    /// writer sees the channel close.
    api_events: Mutex<Option<mpsc::Sender<Emitted>>>,
    model_order: Vec<String>,
    mqtt: Arc<MqttStatus>,
    outbox: Arc<Outbox>,
    /// Events produced, and what the writer did with them.
    ledger: Arc<EventLedger>,
    snapshots: Option<Arc<SnapshotStore>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    link: Mutex<Option<tokio::task::JoinHandle<()>>>,
    link_stop: CancellationToken,
    /// Cancelled when shutdown begins: every long-lived HTTP stream (live
    /// view, event stream) ends on it, so a server drain never waits on a
    /// client that would read forever.
    stopping: CancellationToken,
    started: Instant,
    ort_library: String,
    topics: Topics,
    recent: Arc<Mutex<VecDeque<Arc<serde_json::Value>>>>,
    live: broadcast::Sender<Arc<serde_json::Value>>,
    config: crate::config::Config,
}

/// Everything `/healthz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// `ok`, or `degraded` when any stage is not doing its job: a camera not
    /// streaming, the broker not connected, a model whose runs all fail, a
    /// runner that panicked lately, an outbox that cannot store events.
    pub status: &'static str,
    /// Why `status` is `degraded`, one sentence each (empty when `ok`).
    pub reasons: Vec<String>,
    /// The kind of each reason (`camera`, `mqtt`, `model_failing`,
    /// `runner_panic`, `outbox`), for `vigil_health_degraded{reason=..}`.
    #[serde(skip)]
    pub reason_kinds: Vec<&'static str>,
    pub device: String,
    pub version: &'static str,
    pub uptime_s: f64,
    pub onnxruntime: String,
    pub mqtt: MqttHealth,
    pub outbox: OutboxHealth,
    pub topics: TopicsJson,
    pub cameras: Vec<CameraHealth>,
    pub models: Vec<ModelHealth>,
    /// What an operator should know although Vigil runs (a model version
    /// that failed its checks at start and was replaced, ...); empty when
    /// there is nothing to say.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxHealth {
    /// Events on disk waiting for the broker.
    pub waiting: u64,
    pub bytes: u64,
    pub written: u64,
    pub delivered: u64,
    /// Dropped to stay within the outbox limits (oldest first).
    pub dropped: u64,
    /// Events produced since start. Each is `written`, `pending` or `lost`
    /// (give or take the few on their way to the writer at that instant).
    pub emitted: u64,
    /// Held in memory because the outbox refuses them (disk full): retried
    /// with backoff, in order.
    pub pending: u64,
    /// Dropped before they were stored, so never given a `seq`: held in
    /// memory past its bound (50 000 events or 32 MiB), or still refused at
    /// shutdown. Logged when it happens.
    pub lost: u64,
    /// Failed attempts to store events.
    pub write_errors: u64,
    /// `false` while the outbox refuses events (`status` is `degraded`).
    pub writable: bool,
    /// Why the last attempt failed, while it is failing.
    pub last_error: Option<String>,
    pub snapshots_written: u64,
    pub snapshots_dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicsJson {
    pub events: String,
    pub status: Option<String>,
    pub detections: Option<String>,
    pub commands: String,
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
    /// Since a frame of this camera last went through the model (or, for a
    /// camera without one, was taken): frames arriving while this grows mean
    /// the model is not keeping up with, or skipping, this camera.
    pub last_processed_age_ms: Option<u64>,
    /// Frames not inferred because nothing moved (motion gating); the live
    /// view still shows them, with the last boxes.
    pub frames_skipped_still: u64,
    /// Frames the detector saw a moving region of, not the whole frame
    /// (`motion.regions`); counted in `frames_processed` too.
    pub frames_on_regions: u64,
    /// Motion gating is on for this camera.
    pub motion_gating: bool,
    /// Frames replaced by a newer one before inference took them (inference busy).
    pub frames_dropped_busy: u64,
    /// Frames dropped on purpose to keep to the camera's `fps`.
    pub frames_dropped_rate: u64,
    /// Frames given up on because the model did not answer in time (a run
    /// past its `run_timeout_ms`, a runner stuck or restarting).
    pub frames_dropped_no_answer: u64,
    pub inference_errors: u64,
    pub reconnects: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Crossings per counting line.
    pub lines: Vec<LineCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LineCount {
    pub name: String,
    pub left: u64,
    pub right: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelHealth {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    pub decoder: &'static str,
    pub labels: Vec<String>,
    /// `[width, height]`; absent when frames are fed at their own size.
    pub input: Option<[u32; 2]>,
    pub provider: vigil_inference::ProviderStatus,
    /// ONNX Runtime intra-op threads per session (planned, or `models[].threads`).
    pub threads: usize,
    /// Copies of the session running side by side.
    pub sessions: usize,
    /// Lanes for a camera faster than the model (0: none; see `models[].lanes`).
    pub lanes: usize,
    /// The lanes are loaded (they load the first time they are wanted).
    pub lanes_ready: bool,
    /// The most frames one run takes: the config's `batch` and what the
    /// model accepts, whichever is less.
    pub batch_limit: usize,
    /// Runs so far, and the frames they took (frames / runs = mean batch).
    pub runs: u64,
    pub frames_run: u64,
    /// Of `runs`, those that went on a lane, beside another.
    pub lane_runs: u64,
    /// Why the slot does not serve the version last chosen (it failed its
    /// checks at start and an older one, or the config's, serves instead).
    pub warnings: Vec<String>,
    /// Of `runs`, those that failed; of them, those stopped at
    /// `run_timeout_ms` and those whose output did not fit the decoder.
    pub runs_failed: u64,
    pub runs_stopped: u64,
    pub output_errors: u64,
    /// Panics caught in the model's runners (each restarted).
    pub runner_panics: u64,
    pub run_timeout_ms: u64,
    /// The last run's error, while the runs fail.
    pub last_error: Option<String>,
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

/// Checks that every rule's labels exist in its camera's model. Returns one
/// line per problem.
pub fn check_rule_labels(
    loaded: &LoadedConfig,
    labels_of: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Vec<String> {
    let cfg = &loaded.config;
    let mut problems = Vec::new();
    for (i, r) in cfg.rules.iter().enumerate() {
        let Some(model) = cfg.cameras.iter().find(|c| c.name == r.camera).and_then(|c| c.model.clone())
        else {
            continue;
        };
        let Some(labels) = labels_of(&model) else { continue };
        for l in r.watched_labels() {
            if !labels.contains(&l) {
                let shown: Vec<&str> = labels.iter().take(20).map(String::as_str).collect();
                problems.push(format!(
                    "rules[{i}] ({}): label {l:?} is not one of model {model:?}'s labels ({}{})",
                    r.name,
                    shown.join(", "),
                    if labels.len() > 20 { ", ..." } else { "" }
                ));
            }
        }
    }
    problems
}

impl Appliance {
    /// Loads ONNX Runtime and the models, opens the outbox, then starts the
    /// broker link, the cameras and their workers. Returns once everything
    /// is started; cameras connect in the background.
    pub fn start(loaded: &LoadedConfig) -> Result<Arc<Appliance>, StartError> {
        let cfg = &loaded.config;
        let settings = RunSettings::new(loaded, ThreadPlan::available_cores());
        let rt = runtime::init()?;
        let threads = settings.threads.clone();
        tracing::info!(
            cores = threads.cores,
            model_threads = ?threads.model_threads,
            model_sessions = ?threads.model_sessions,
            decode_threads = ?threads.decode_threads,
            "thread plan"
        );
        let mut models = HashMap::new();
        let mut model_order = Vec::new();
        let mut queues = HashMap::new();
        for m in &cfg.models {
            let its_cameras: Vec<_> =
                cfg.cameras.iter().filter(|c| c.model.as_ref() == Some(&m.name)).collect();
            let cameras: Vec<String> = its_cameras.iter().map(|c| c.name.clone()).collect();
            let mut required: Vec<String> = cfg
                .rules
                .iter()
                .filter(|r| cameras.contains(&r.camera))
                .flat_map(|r| r.watched_labels())
                .collect();
            required.sort();
            required.dedup();
            let policy = settings.batch[&m.name];
            let mut options = m.options();
            options.intra_threads = threads.model_threads[&m.name];
            options.sessions = threads.model_sessions[&m.name];
            options.lanes = threads.model_lanes[&m.name];
            options.max_batch = policy.max_batch;
            let limits = vigil_inference::ModelLimits {
                test_run: Duration::from_secs_f64(m.test_run_s),
                ..vigil_inference::ModelLimits::default()
            };
            let slot =
                ModelSlot::open(&m.name, &m.path, options, limits, &loaded.data_dir, cameras, required)
                    .map_err(|e| StartError::Model { name: m.name.clone(), error: e })?;
            let det = slot.current();
            tracing::info!(
                model = %m.name,
                version = det.info().version,
                sha256 = %det.info().sha256,
                decoder = det.info().decoder().as_str(),
                provider = %det.info().provider.active,
                "model loaded"
            );
            models.insert(m.name.clone(), Arc::new(slot));
            model_order.push(m.name.clone());
            // A recording analysed frame by frame always has its next frame
            // ready: its lanes load now and take its frames from the first.
            let lanes = threads.model_lanes[&m.name];
            let backlog = lanes > 1 && !its_cameras.is_empty() && its_cameras.iter().all(|c| c.is_lossless());
            if backlog {
                det.request_lanes();
            }
            let queue =
                InferenceQueue::start(&m.name, policy, threads.model_sessions[&m.name], lanes, backlog);
            queues.insert(m.name.clone(), (queue, policy));
        }
        let label_problems =
            check_rule_labels(loaded, &|m| models.get(m).map(|s| s.current().info().labels().to_vec()));
        if let Some(p) = label_problems.into_iter().next() {
            return Err(StartError::Config(p));
        }

        let ev = &cfg.events;
        let outbox =
            Arc::new(Outbox::open(&loaded.data_dir.join("outbox.redb"), settings.outbox).map_err(|e| {
                StartError::Config(format!(
                    "{e} (is another vigil using data_dir {}?)",
                    loaded.data_dir.display()
                ))
            })?);
        if !outbox.is_empty() {
            tracing::info!(
                waiting = outbox.len(),
                "outbox holds undelivered events from before; they go first"
            );
        }
        let snapshots = if ev.snapshots {
            let retention = settings.retention;
            Some(SnapshotStore::start(&loaded.data_dir.join("snapshots"), retention).map_err(|e| {
                StartError::Config(format!("snapshots in {}: {e}", loaded.data_dir.display()))
            })?)
        } else {
            None
        };

        // Topics, and the link.
        let (topics, azure) = match &loaded.mqtt.azure {
            Some((hub, device, key)) => (
                Topics {
                    events: azure::events_topic(device),
                    status: None,
                    detections: None,
                    commands: azure::commands_topic(device),
                },
                Some(AzureAuth {
                    hub: hub.clone(),
                    device: device.clone(),
                    key: key.clone(),
                    token_ttl: settings.token_ttl,
                }),
            ),
            None => (Topics::new(&cfg.mqtt.topic_prefix, &cfg.device_id, ev.publish_detections), None),
        };
        let client_id = match &azure {
            Some(a) => a.device.clone(),
            None => cfg.mqtt.client_id.clone().unwrap_or_else(|| format!("vigil-{}", cfg.device_id)),
        };
        let status = MqttStatus::new(loaded.mqtt.to_string());
        let wake = Arc::new(Notify::new());
        let (det_tx, det_rx) = mpsc::channel::<Vec<u8>>(64);
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(32);
        let link_stop = CancellationToken::new();
        let link = mqtt::spawn(
            LinkConfig {
                target: loaded.mqtt.clone(),
                client_id,
                keep_alive: settings.keep_alive,
                topics: topics.clone(),
                azure,
                max_event_bytes: settings.max_event_bytes,
                ack_timeout: settings.ack_timeout,
            },
            outbox.clone(),
            wake.clone(),
            det_rx,
            cmd_tx,
            status.clone(),
            link_stop.clone(),
        );

        // The writer: batches of events, one transaction each, then a nudge to
        // the link; each stored event also goes to the API's recent list and
        // live stream, with the sequence number the outbox gave it. A disk
        // that refuses them holds them in memory and retries (writer.rs).
        let (ev_tx, ev_rx) = mpsc::channel::<Emitted>(EVENT_QUEUE);
        let recent: Arc<Mutex<VecDeque<Arc<serde_json::Value>>>> = Arc::default();
        let (live, _) = broadcast::channel(256);
        let ledger = Arc::new(EventLedger::default());
        let writer = tokio::spawn(crate::writer::run(
            ev_rx,
            outbox.clone(),
            wake.clone(),
            crate::writer::Listeners {
                recent: recent.clone(),
                recent_max: RECENT_EVENTS,
                live: live.clone(),
            },
            ledger.clone(),
        ));

        let stopping = CancellationToken::new();
        let policy = settings.update;
        let publish_detections = topics.detections.is_some();
        let mut cameras = Vec::new();
        for ((c, source), options) in cfg.cameras.iter().zip(&loaded.sources).zip(&settings.cameras) {
            let model_slot = c.model.as_ref().map(|m| models[m].clone());
            let slot = FrameSlot::new();
            let mut options = options.clone();
            options.decode_threads = threads.decode_threads;
            let (camera, failed, source) = match source {
                Ok(source) => (
                    Some(Camera::start(&c.name, source.clone(), options, slot.clone())),
                    None,
                    source.to_string(),
                ),
                Err(e) => {
                    tracing::error!(camera = %c.name, error = %e, "camera not started: its source is invalid");
                    slot.close();
                    (None, Some(vigil_camera::redact(e)), vigil_camera::redact(&c.source))
                }
            };
            let confidence =
                model_slot.as_ref().map(|s| s.current().info().plan.thresholds.confidence).unwrap_or(0.25);
            let rules: Vec<RuleState> = cfg
                .rules
                .iter()
                .filter(|r| r.camera == c.name)
                .map(|r| {
                    let zone = r.zone.as_ref().and_then(|z| crate::rules::find_zone(&c.zones, z).cloned());
                    RuleState::new(r.clone(), zone, confidence)
                })
                .collect();
            let events = CameraEvents::new(
                &cfg.device_id,
                &c.name,
                c.tracker.clone(),
                c.zones.clone(),
                c.lines.clone(),
                rules,
                policy,
                snapshots.clone(),
            );
            // Motion gating: on by default for detectors (tracking bridges
            // the skipped frames); off for classifiers and anomaly models,
            // whose verdicts are about every part, moving or not.
            let detector_model =
                model_slot.as_ref().is_some_and(|s| s.current().info().plan.decoder.is_detector());
            if c.motion.regions && !detector_model {
                tracing::warn!(
                    camera = %c.name,
                    "motion.regions applies to detectors only; this camera's model sees whole frames"
                );
            }
            let motion = crate::motion::MotionConfig {
                regions: c.motion.regions && detector_model,
                ..c.motion.clone()
            };
            let gate = (model_slot.is_some() && c.motion.enabled.unwrap_or(detector_model))
                .then(|| crate::motion::MotionGate::new(motion));
            let rt = CameraRuntime {
                name: c.name.clone(),
                model: c.model.clone(),
                camera: Mutex::new(camera),
                failed,
                slot: slot.clone(),
                latest: Arc::new(Mutex::new(None)),
                processed: Arc::default(),
                skipped_still: Arc::new(AtomicU64::new(0)),
                on_regions: Arc::new(AtomicU64::new(0)),
                motion_gating: gate.is_some(),
                inference_errors: Arc::new(AtomicU64::new(0)),
                no_answer: Arc::new(AtomicU64::new(0)),
                worker: Mutex::new(None),
                source,
                command: Arc::default(),
                line_counts: Arc::default(),
                stages: Arc::default(),
                rate_sample: Mutex::new(None),
            };
            let max_in_flight = c.model.as_ref().map_or(1, |m| in_flight(&threads, m));
            // An answer wakes the worker where it waits for frames.
            let submitter = c.model.as_ref().map(|m| {
                let slot = slot.clone();
                queues[m].0.submitter(max_in_flight, Some(Waker::new(move || slot.nudge())))
            });
            let worker = spawn_worker(Worker {
                device: cfg.device_id.clone(),
                camera: c.name.clone(),
                slot,
                submitter,
                max_in_flight,
                input_buffers: c.model.as_ref().map_or(1, |m| {
                    let cameras = cfg.cameras.iter().filter(|o| o.model.as_ref() == Some(m)).count();
                    input_buffers(cameras, threads.model_sessions[m], queues[m].1.max_batch, max_in_flight)
                }),
                model_slot,
                events,
                events_tx: ev_tx.clone(),
                ledger: ledger.clone(),
                detections_tx: publish_detections.then(|| det_tx.clone()),
                status: status.clone(),
                latest: rt.latest.clone(),
                processed: rt.processed.clone(),
                skipped_still: rt.skipped_still.clone(),
                on_regions: rt.on_regions.clone(),
                gate,
                errors: rt.inference_errors.clone(),
                answer_timeout: c.model.as_ref().map_or(Duration::from_secs(10), |m| {
                    let cameras = cfg.cameras.iter().filter(|o| o.model.as_ref() == Some(m)).count();
                    answer_timeout(&threads, m, queues[m].1.run_timeout, cameras, max_in_flight)
                }),
                no_answer: rt.no_answer.clone(),
                stopping: stopping.clone(),
                closing: None,
                command: rt.command.clone(),
                line_counts: rt.line_counts.clone(),
                stages: rt.stages.clone(),
            });
            *rt.worker.lock() = Some(worker);
            cameras.push(rt);
        }
        // Only the workers and the API hold event senders now: when they are
        // all gone, the writer sees the channel close and finishes.
        let api_events = Mutex::new(Some(ev_tx));
        drop(det_tx);

        // Inspection commands, to the camera they name.
        let commands: HashMap<String, PendingCommand> =
            cameras.iter().map(|c| (c.name.clone(), c.command.clone())).collect();
        tokio::spawn(async move {
            while let Some(cmd) = cmd_rx.recv().await {
                match (cmd.command.as_str(), commands.get(&cmd.camera)) {
                    ("inspect", Some(slot)) => *slot.lock() = Some(cmd.part),
                    ("inspect", None) => {
                        tracing::warn!(camera = %cmd.camera, "inspect command for an unknown camera")
                    }
                    (other, _) => {
                        tracing::warn!(command = %other, "unknown command; the only one is \"inspect\"")
                    }
                }
            }
        });

        Ok(Arc::new(Appliance {
            device: cfg.device_id.clone(),
            cameras,
            models,
            runners: queues.iter().map(|(k, (q, p))| (k.clone(), (q.stats.clone(), *p))).collect(),
            threads,
            api_events,
            model_order,
            mqtt: status,
            outbox,
            ledger,
            snapshots,
            writer: Mutex::new(Some(writer)),
            link: Mutex::new(Some(link)),
            link_stop,
            stopping,
            started: Instant::now(),
            ort_library: rt.library.display().to_string(),
            topics,
            recent,
            live,
            config: cfg.clone(),
        }))
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// Cancelled once shutdown begins ([`Appliance::begin_shutdown`] or
    /// [`Appliance::shutdown`]): streams end on it.
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Says shutdown has begun: every stream that watches
    /// [`Appliance::stopping`] ends now. [`Appliance::shutdown`] does the rest.
    pub fn begin_shutdown(&self) {
        self.stopping.cancel();
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn camera_names(&self) -> Vec<String> {
        self.cameras.iter().map(|c| c.name.clone()).collect()
    }

    /// A model slot by name.
    pub fn model(&self, slot: &str) -> Option<&Arc<ModelSlot>> {
        self.models.get(slot)
    }

    /// Every model slot, in config order.
    pub fn model_slots(&self) -> Vec<Arc<ModelSlot>> {
        self.model_order.iter().map(|n| self.models[n].clone()).collect()
    }

    /// The newest frames of the cameras using `slot`: warm-up material for a new version.
    fn frames_for(&self, slot: &ModelSlot) -> Vec<Frame> {
        self.cameras
            .iter()
            .filter(|c| slot.cameras.contains(&c.name))
            .filter_map(|c| c.latest.lock().as_ref().map(|p| p.frame.clone()))
            .collect()
    }

    /// Activates `version` of `slot` (see [`ModelSlot::activate`]) and
    /// publishes `model.activated`.
    pub async fn activate(&self, slot: &str, version: u32) -> Result<Activation, ModelError> {
        let s = self
            .models
            .get(slot)
            .ok_or_else(|| ModelError::NotFound(format!("no model slot {slot:?}")))?
            .clone();
        let a = s.activate(version, self.frames_for(&s)).await?;
        self.announce(&a).await;
        Ok(a)
    }

    /// Rolls `slot` back to its previous version and publishes `model.activated`.
    pub async fn rollback(&self, slot: &str) -> Result<Activation, ModelError> {
        let s = self
            .models
            .get(slot)
            .ok_or_else(|| ModelError::NotFound(format!("no model slot {slot:?}")))?
            .clone();
        let a = s.rollback(self.frames_for(&s)).await?;
        self.announce(&a).await;
        Ok(a)
    }

    async fn announce(&self, a: &Activation) {
        let model = ModelRef { name: a.slot.clone(), version: a.version, sha256: a.sha256.clone() };
        let activated = ModelActivated {
            slot: a.slot.clone(),
            version: a.version,
            previous: a.previous.clone(),
            switch_ms: a.switch_ms,
        };
        let event = Event::of_device(
            uuid::Uuid::now_v7(),
            self.device.as_str().into(),
            SystemTime::now(),
            model,
            activated,
        );
        let e = Emitted::new(event);
        let tx = self.api_events.lock().clone();
        if let Some(tx) = tx
            && crate::writer::send(&tx, &self.ledger, e).await.is_err()
        {
            tracing::error!("model.activated not recorded: shutting down");
        }
    }

    /// Recent events, newest last, filtered by camera, type, and `seq` above `after`.
    pub fn recent_events(
        &self,
        camera: Option<&str>,
        kind: Option<&str>,
        after: Option<u64>,
        limit: usize,
    ) -> Vec<Arc<serde_json::Value>> {
        let r = self.recent.lock();
        let mut v: Vec<Arc<serde_json::Value>> = r
            .iter()
            .filter(|e| camera.is_none_or(|c| e["camera"] == c))
            .filter(|e| kind.is_none_or(|k| e["type"] == k))
            .filter(|e| after.is_none_or(|a| e["seq"].as_u64().is_some_and(|s| s > a)))
            .cloned()
            .collect();
        if v.len() > limit {
            v.drain(..v.len() - limit);
        }
        v
    }

    /// Every event from now on, as it is stored (a slow reader skips events
    /// rather than holding anything up).
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<serde_json::Value>> {
        self.live.subscribe()
    }

    /// The newest processed frame of a camera.
    pub fn latest(&self, camera: &str) -> Option<Arc<Processed>> {
        self.cameras.iter().find(|c| c.name == camera).and_then(|c| c.latest.lock().clone())
    }

    /// The configuration in effect, secrets left out.
    pub fn config(&self) -> &crate::config::Config {
        &self.config
    }

    /// Ready to serve: every camera past `starting` (streaming, or failed or
    /// reconnecting with a reason). Returns what is not ready.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let waiting: Vec<String> = self
            .health()
            .cameras
            .into_iter()
            .filter(|c| c.state == "starting")
            .map(|c| format!("camera {} is starting", c.name))
            .collect();
        if waiting.is_empty() { Ok(()) } else { Err(waiting) }
    }

    /// Everything `/metrics` reports, in Prometheus text format.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let h = self.health();
        let mut o = String::with_capacity(16 * 1024);
        let help = |o: &mut String, name: &str, kind: &str, text: &str| {
            let _ = writeln!(o, "# HELP {name} {text}\n# TYPE {name} {kind}");
        };
        help(
            &mut o,
            "vigil_camera_frames_total",
            "counter",
            "Frames per camera by stage: received from the decoder, processed by the model, skipped because nothing moved.",
        );
        for c in &h.cameras {
            let n = escape(&c.name);
            let _ = writeln!(
                o,
                "vigil_camera_frames_total{{camera=\"{n}\",stage=\"received\"}} {}",
                c.frames_received
            );
            let _ = writeln!(
                o,
                "vigil_camera_frames_total{{camera=\"{n}\",stage=\"processed\"}} {}",
                c.frames_processed
            );
            let _ = writeln!(
                o,
                "vigil_camera_frames_total{{camera=\"{n}\",stage=\"skipped_still\"}} {}",
                c.frames_skipped_still
            );
            let _ = writeln!(
                o,
                "vigil_camera_frames_total{{camera=\"{n}\",stage=\"processed_on_region\"}} {}",
                c.frames_on_regions
            );
        }
        help(
            &mut o,
            "vigil_camera_frames_dropped_total",
            "counter",
            "Frames dropped, by reason: busy (the model was slower than the camera; newest frame wins), rate (the camera's fps limit), no_answer (the model did not answer in time).",
        );
        for c in &h.cameras {
            let n = escape(&c.name);
            let _ = writeln!(
                o,
                "vigil_camera_frames_dropped_total{{camera=\"{n}\",reason=\"busy\"}} {}",
                c.frames_dropped_busy
            );
            let _ = writeln!(
                o,
                "vigil_camera_frames_dropped_total{{camera=\"{n}\",reason=\"rate\"}} {}",
                c.frames_dropped_rate
            );
            let _ = writeln!(
                o,
                "vigil_camera_frames_dropped_total{{camera=\"{n}\",reason=\"no_answer\"}} {}",
                c.frames_dropped_no_answer
            );
        }
        help(
            &mut o,
            "vigil_camera_fps",
            "gauge",
            "Frames per second since the previous scrape, received and processed.",
        );
        for c in &self.cameras {
            let hc = h.cameras.iter().find(|x| x.name == c.name);
            let (rx, px) = hc.map(|x| (x.frames_received, x.frames_processed)).unwrap_or((0, 0));
            let now = Instant::now();
            let mut sample = c.rate_sample.lock();
            let (rf, pf) = match *sample {
                Some((t, r0, p0)) if now.duration_since(t).as_secs_f64() > 0.2 => {
                    let dt = now.duration_since(t).as_secs_f64();
                    ((rx.saturating_sub(r0)) as f64 / dt, (px.saturating_sub(p0)) as f64 / dt)
                }
                _ => (0.0, 0.0),
            };
            *sample = Some((now, rx, px));
            let n = escape(&c.name);
            let _ = writeln!(o, "vigil_camera_fps{{camera=\"{n}\",stage=\"received\"}} {rf:.2}");
            let _ = writeln!(o, "vigil_camera_fps{{camera=\"{n}\",stage=\"processed\"}} {pf:.2}");
        }
        help(
            &mut o,
            "vigil_camera_reconnects_total",
            "counter",
            "Pipeline rebuilds after an error, an end of stream or a stall.",
        );
        help(&mut o, "vigil_camera_up", "gauge", "1 when the camera is streaming.");
        help(&mut o, "vigil_inference_errors_total", "counter", "Frames the model failed on.");
        help(
            &mut o,
            "vigil_camera_last_frame_age_seconds",
            "gauge",
            "Since the camera's last frame: received from the decoder, processed by the model (absent before the first).",
        );
        for c in &h.cameras {
            let n = escape(&c.name);
            for (stage, age) in [("received", c.last_frame_age_ms), ("processed", c.last_processed_age_ms)] {
                if let Some(ms) = age {
                    let _ = writeln!(
                        o,
                        "vigil_camera_last_frame_age_seconds{{camera=\"{n}\",stage=\"{stage}\"}} {:.3}",
                        ms as f64 / 1e3
                    );
                }
            }
            let _ = writeln!(o, "vigil_camera_reconnects_total{{camera=\"{n}\"}} {}", c.reconnects);
            let _ = writeln!(
                o,
                "vigil_camera_up{{camera=\"{n}\",state=\"{}\"}} {}",
                c.state,
                u8::from(c.state == "streaming")
            );
            let _ = writeln!(o, "vigil_inference_errors_total{{camera=\"{n}\"}} {}", c.inference_errors);
        }
        help(
            &mut o,
            "vigil_stage_seconds",
            "histogram",
            "Time per frame by stage: queue (capture to the model picking the frame up), preprocess, inference (session.run), postprocess, events (tracker, zones, rules).",
        );
        for c in &self.cameras {
            c.stages.render(&c.name, &mut o);
        }
        help(
            &mut o,
            "vigil_capture_to_publish_seconds",
            "histogram",
            "From a frame's capture to its event being handed to the MQTT client.",
        );
        self.mqtt.latency_histogram.render("vigil_capture_to_publish_seconds", "", &mut o);
        help(&mut o, "vigil_outbox_events", "gauge", "Events on disk waiting for the broker.");
        let _ = writeln!(o, "vigil_outbox_events {}", h.outbox.waiting);
        help(&mut o, "vigil_outbox_bytes", "gauge", "Bytes of events waiting.");
        let _ = writeln!(o, "vigil_outbox_bytes {}", h.outbox.bytes);
        help(
            &mut o,
            "vigil_outbox_events_total",
            "counter",
            "Events written, delivered (acknowledged), dropped (outbox full).",
        );
        let _ = writeln!(o, "vigil_outbox_events_total{{result=\"written\"}} {}", h.outbox.written);
        let _ = writeln!(o, "vigil_outbox_events_total{{result=\"delivered\"}} {}", h.outbox.delivered);
        let _ = writeln!(o, "vigil_outbox_events_total{{result=\"dropped\"}} {}", h.outbox.dropped);
        help(
            &mut o,
            "vigil_snapshots_total",
            "counter",
            "Event snapshots written, and skipped because the encoder was busy.",
        );
        let _ = writeln!(o, "vigil_snapshots_total{{result=\"written\"}} {}", h.outbox.snapshots_written);
        let _ = writeln!(o, "vigil_snapshots_total{{result=\"dropped\"}} {}", h.outbox.snapshots_dropped);
        help(&mut o, "vigil_mqtt_connected", "gauge", "1 while connected to the broker.");
        let _ = writeln!(o, "vigil_mqtt_connected {}", u8::from(h.mqtt.state == mqtt::LinkState::Connected));
        help(&mut o, "vigil_mqtt_connects_total", "counter", "Connections made to the broker.");
        let _ = writeln!(o, "vigil_mqtt_connects_total {}", h.mqtt.connects);
        help(
            &mut o,
            "vigil_mqtt_detections_dropped_total",
            "counter",
            "Per-frame detection messages not sent (link down or busy).",
        );
        let _ = writeln!(o, "vigil_mqtt_detections_dropped_total {}", h.mqtt.detections_dropped);
        help(
            &mut o,
            "vigil_mqtt_refused_total",
            "counter",
            "Events larger than mqtt.max_event_kb, removed from the outbox unsent.",
        );
        let _ = writeln!(o, "vigil_mqtt_refused_total {}", h.mqtt.refused);
        help(
            &mut o,
            "vigil_mqtt_ack_timeouts_total",
            "counter",
            "Connections made again because the broker acknowledged nothing within mqtt.ack_timeout_s.",
        );
        let _ = writeln!(o, "vigil_mqtt_ack_timeouts_total {}", h.mqtt.ack_timeouts);
        help(
            &mut o,
            "vigil_model_info",
            "gauge",
            "The model version serving each slot, with its execution provider.",
        );
        for m in &h.models {
            let _ = writeln!(
                o,
                "vigil_model_info{{slot=\"{}\",version=\"{}\",sha256=\"{}\",decoder=\"{}\",provider_requested=\"{}\",provider=\"{}\"}} 1",
                escape(&m.name),
                m.version,
                m.sha256,
                m.decoder,
                m.provider.requested,
                m.provider.active
            );
        }
        help(
            &mut o,
            "vigil_model_runs_total",
            "counter",
            "Model runs; with vigil_model_frames_total, the mean batch size.",
        );
        for m in &h.models {
            let _ = writeln!(o, "vigil_model_runs_total{{slot=\"{}\"}} {}", escape(&m.name), m.runs);
        }
        help(&mut o, "vigil_model_frames_total", "counter", "Frames the model's runs took, all cameras.");
        for m in &h.models {
            let _ = writeln!(o, "vigil_model_frames_total{{slot=\"{}\"}} {}", escape(&m.name), m.frames_run);
        }
        help(
            &mut o,
            "vigil_model_lane_runs_total",
            "counter",
            "Model runs that went on a lane, beside another: the camera's frames came faster than a main run.",
        );
        for m in &h.models {
            let _ =
                writeln!(o, "vigil_model_lane_runs_total{{slot=\"{}\"}} {}", escape(&m.name), m.lane_runs);
        }
        help(
            &mut o,
            "vigil_model_runs_failed_total",
            "counter",
            "Model runs that failed, by reason: stopped (past run_timeout_ms), output (did not fit the decoder), other.",
        );
        for m in &h.models {
            let n = escape(&m.name);
            let other = m.runs_failed.saturating_sub(m.runs_stopped + m.output_errors);
            for (reason, v) in [("stopped", m.runs_stopped), ("output", m.output_errors), ("other", other)] {
                let _ = writeln!(o, "vigil_model_runs_failed_total{{slot=\"{n}\",reason=\"{reason}\"}} {v}");
            }
        }
        help(
            &mut o,
            "vigil_model_runner_panics_total",
            "counter",
            "Panics caught in a model's runner threads; each runner restarted.",
        );
        for m in &h.models {
            let _ = writeln!(
                o,
                "vigil_model_runner_panics_total{{slot=\"{}\"}} {}",
                escape(&m.name),
                m.runner_panics
            );
        }
        help(
            &mut o,
            "vigil_events_total",
            "counter",
            "Events produced (emitted), and those lost before the outbox stored them (lost).",
        );
        let _ = writeln!(o, "vigil_events_total{{result=\"emitted\"}} {}", h.outbox.emitted);
        let _ = writeln!(o, "vigil_events_total{{result=\"lost\"}} {}", h.outbox.lost);
        help(
            &mut o,
            "vigil_events_pending",
            "gauge",
            "Events held in memory because the outbox refuses them (disk full).",
        );
        let _ = writeln!(o, "vigil_events_pending {}", h.outbox.pending);
        help(&mut o, "vigil_outbox_write_errors_total", "counter", "Failed attempts to store events.");
        let _ = writeln!(o, "vigil_outbox_write_errors_total {}", h.outbox.write_errors);
        help(
            &mut o,
            "vigil_health_degraded",
            "gauge",
            "1 while health is degraded for this kind of reason (camera, mqtt, model_failing, runner_panic, outbox); /healthz says why.",
        );
        for kind in ["camera", "mqtt", "model_failing", "runner_panic", "outbox"] {
            let _ = writeln!(
                o,
                "vigil_health_degraded{{reason=\"{kind}\"}} {}",
                u8::from(h.reason_kinds.contains(&kind))
            );
        }
        help(&mut o, "vigil_uptime_seconds", "gauge", "Seconds since start.");
        let _ = writeln!(o, "vigil_uptime_seconds {}", h.uptime_s);
        o
    }

    pub fn mqtt_status(&self) -> &Arc<MqttStatus> {
        &self.mqtt
    }

    pub fn snapshots(&self) -> Option<&Arc<SnapshotStore>> {
        self.snapshots.as_ref()
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
                    frames_processed: c.processed.count(),
                    last_processed_age_ms: c.processed.age().map(|a| a.as_millis() as u64),
                    frames_skipped_still: c.skipped_still.load(Ordering::Relaxed),
                    frames_on_regions: c.on_regions.load(Ordering::Relaxed),
                    motion_gating: c.motion_gating,
                    frames_dropped_busy: c.slot.dropped(),
                    frames_dropped_rate: dropped_rate,
                    frames_dropped_no_answer: c.no_answer.load(Ordering::Relaxed),
                    inference_errors: c.inference_errors.load(Ordering::Relaxed),
                    reconnects,
                    width: size.map(|s| s.0),
                    height: size.map(|s| s.1),
                    lines: c
                        .line_counts
                        .lock()
                        .iter()
                        .map(|(name, left, right)| LineCount {
                            name: name.clone(),
                            left: *left,
                            right: *right,
                        })
                        .collect(),
                }
            })
            .collect();
        let mqtt = self.mqtt.health();
        let (written, delivered, dropped) = self.outbox.counters();
        let (snapshots_written, snapshots_dropped) =
            self.snapshots.as_ref().map(|s| s.counters()).unwrap_or((0, 0));
        let ledger = self.ledger.state();
        let now = Instant::now();
        let models: Vec<ModelHealth> = self
            .model_order
            .iter()
            .map(|n| {
                let d = self.models[n].current();
                let i = d.info();
                let runner = self.runners.get(n);
                let count = |f: fn(&RunnerStats) -> &AtomicU64| {
                    runner.map_or(0, |(s, _)| f(s).load(Ordering::Relaxed))
                };
                let record = runner.map(|(s, _)| s.last.lock().clone()).unwrap_or_default();
                ModelHealth {
                    name: i.name.clone(),
                    version: i.version,
                    sha256: i.sha256.clone(),
                    decoder: i.decoder().as_str(),
                    labels: i.labels().to_vec(),
                    input: i.input_size().map(|(w, h)| [w, h]),
                    provider: i.provider.clone(),
                    threads: self.threads.model_threads.get(n).copied().unwrap_or(0),
                    sessions: d.sessions(),
                    lanes: d.lanes(),
                    lanes_ready: d.lanes_ready(),
                    batch_limit: runner.map_or(1, |(_, p)| p.max_batch.min(d.batch_limit())),
                    runs: count(|s| &s.runs),
                    frames_run: count(|s| &s.frames),
                    lane_runs: count(|s| &s.lane_runs),
                    runs_failed: count(|s| &s.failed_runs),
                    runs_stopped: count(|s| &s.stopped_runs),
                    output_errors: count(|s| &s.output_errors),
                    runner_panics: count(|s| &s.panics),
                    run_timeout_ms: runner.map_or(0, |(_, p)| p.run_timeout.as_millis() as u64),
                    last_error: failing_runs(&record, now).map(|(_, e)| e),
                    warnings: self.models[n].warnings(),
                }
            })
            .collect();

        let mut reasons: Vec<(&'static str, String)> = Vec::new();
        for c in &cameras {
            if c.state != "streaming" {
                let why = c.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                reasons.push(("camera", format!("camera {} is {}{why}", c.name, c.state)));
            }
        }
        if mqtt.state != mqtt::LinkState::Connected {
            let why = mqtt.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
            reasons.push((
                "mqtt",
                format!("MQTT broker {} is {}{why}", mqtt.broker, link_state_name(mqtt.state)),
            ));
        }
        for m in &self.model_order {
            let Some((stats, _)) = self.runners.get(m) else { continue };
            let record = stats.last.lock().clone();
            if let Some((since_ok, error)) = failing_runs(&record, now) {
                let since = since_ok
                    .map(|d| format!("for {:.0} s", d.as_secs_f64()))
                    .unwrap_or_else(|| "since start".into());
                reasons.push((
                    "model_failing",
                    format!("model {m}: every run has failed {since} (last: {error})"),
                ));
            }
            if let Some((at, message)) = &record.last_panic
                && now.duration_since(*at) < RUNNER_PANIC_RECENT
            {
                reasons.push((
                    "runner_panic",
                    format!(
                        "model {m}: a runner panicked {:.0} s ago and was restarted ({} panics in all): {message}",
                        now.duration_since(*at).as_secs_f64(),
                        stats.panics.load(Ordering::Relaxed)
                    ),
                ));
            }
        }
        if let Some((since, error)) = &ledger.failing {
            reasons.push((
                "outbox",
                format!(
                    "the outbox cannot store events (for {:.0} s): {error}; {} held in memory, {} lost",
                    now.duration_since(*since).as_secs_f64(),
                    ledger.pending,
                    ledger.lost
                ),
            ));
        }
        Health {
            status: if reasons.is_empty() { "ok" } else { "degraded" },
            reason_kinds: reasons.iter().map(|(k, _)| *k).collect(),
            reasons: reasons.into_iter().map(|(_, r)| r).collect(),
            device: self.device.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            onnxruntime: self.ort_library.clone(),
            mqtt,
            outbox: OutboxHealth {
                waiting: self.outbox.len(),
                bytes: self.outbox.bytes(),
                written,
                delivered,
                dropped,
                emitted: self.ledger.emitted(),
                pending: ledger.pending,
                lost: ledger.lost,
                write_errors: ledger.write_errors,
                writable: ledger.failing.is_none(),
                last_error: ledger.failing.as_ref().map(|(_, e)| e.clone()),
                snapshots_written,
                snapshots_dropped,
            },
            topics: TopicsJson {
                events: self.topics.events.clone(),
                status: self.topics.status.clone(),
                detections: self.topics.detections.clone(),
                commands: self.topics.commands.clone(),
            },
            cameras,
            models,
            warnings: self
                .model_order
                .iter()
                .flat_map(|n| self.models[n].warnings().into_iter().map(move |w| format!("model {n}: {w}")))
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
        let rgb = annotate::annotated(f, &latest.prediction);
        annotate::encode_jpeg(&rgb, f.width(), f.height(), 85).map_err(SnapshotError::Encode)
    }

    /// Stops cameras first, lets the workers finish (open tracks end), waits
    /// for the outbox writer, then stops the link, which waits briefly for
    /// acknowledgements and says `offline`. All under `deadline`.
    pub async fn shutdown(self: &Arc<Self>, deadline: Duration) {
        self.begin_shutdown();
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
        self.api_events.lock().take();
        let writer = self.writer.lock().take();
        let link = self.link.lock().take();
        let link_stop = self.link_stop.clone();
        let snapshots = self.snapshots.clone();
        let all = async move {
            let _ = stop.await;
            if let Some(w) = writer {
                let _ = w.await;
            }
            link_stop.cancel();
            if let Some(l) = link {
                let _ = l.await;
            }
            if let Some(s) = snapshots {
                s.close();
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(
                deadline_s = deadline.as_secs_f64(),
                "shutdown deadline passed; exiting anyway (undelivered events stay in the outbox)"
            );
        }
    }
}

/// What a camera's worker thread owns.
struct Worker {
    device: String,
    camera: String,
    slot: Arc<FrameSlot>,
    model_slot: Option<Arc<ModelSlot>>,
    /// The way into the model's shared runner.
    submitter: Option<Submitter>,
    /// Frames this camera may have with the runner at once: one, or with
    /// lanes (its model's only camera) one per lane.
    max_in_flight: usize,
    /// Model inputs this worker fills: two to prepare a frame while the
    /// previous one runs, one where other cameras keep the runners busy,
    /// one more than `max_in_flight` with lanes.
    input_buffers: usize,
    events: CameraEvents,
    events_tx: mpsc::Sender<Emitted>,
    ledger: Arc<EventLedger>,
    detections_tx: Option<mpsc::Sender<Vec<u8>>>,
    status: Arc<MqttStatus>,
    latest: Arc<Mutex<Option<Arc<Processed>>>>,
    processed: Arc<Progress>,
    skipped_still: Arc<AtomicU64>,
    on_regions: Arc<AtomicU64>,
    gate: Option<crate::motion::MotionGate>,
    errors: Arc<AtomicU64>,
    /// How long an answer is waited for before its frame is given up on.
    answer_timeout: Duration,
    /// Frames given up on, and skipped, for want of an answer.
    no_answer: Arc<AtomicU64>,
    /// Cancelled when shutdown begins.
    stopping: CancellationToken,
    /// Set once shutdown has begun: the last answers' deadline.
    closing: Option<Instant>,
    command: PendingCommand,
    line_counts: Arc<Mutex<Vec<(String, u64, u64)>>>,
    stages: Arc<StageMetrics>,
}

/// How many model inputs a camera's worker keeps (a 640x640 input is 4.9 MB).
///
/// A second one lets the worker preprocess its next frame while the runner
/// runs the previous one, which matters only when the runners would
/// otherwise wait for it: while the model's cameras are no more than the
/// frames its runners take at once. With more cameras, the others' frames
/// fill that time, and one input each is enough (four cameras on two
/// sessions: 20 MB less, throughput unchanged).
///
/// With lanes (`in_flight` > 1), one more than the frames the camera may
/// have with the runners: the next is prepared while they run.
fn input_buffers(cameras: usize, sessions: usize, max_batch: usize, in_flight: usize) -> usize {
    if in_flight > 1 {
        in_flight + 1
    } else if cameras > sessions.max(1) * max_batch.max(1) {
        1
    } else {
        2
    }
}

/// How long a camera's worker waits for a frame's answer before it gives
/// the frame up: each run is stopped at `run_timeout`, and a frame may
/// queue behind every other camera's frames on the model's runners, so a
/// frame can take up to one run per round of the queue ahead of it, plus
/// its own, plus a second's slack. Only a runner that is stuck past its
/// own deadline (one operator that never returns) or gone reaches it.
fn answer_timeout(
    threads: &ThreadPlan,
    model: &str,
    run_timeout: Duration,
    cameras: usize,
    in_flight: usize,
) -> Duration {
    let runners = threads
        .model_lanes
        .get(model)
        .copied()
        .filter(|l| *l > 1)
        .unwrap_or_else(|| threads.model_sessions.get(model).copied().unwrap_or(1));
    let ahead = (cameras.max(1) * in_flight.max(1)).div_ceil(runners.max(1));
    run_timeout * (ahead as u32 + 1) + Duration::from_secs(1)
}

fn link_state_name(s: mqtt::LinkState) -> &'static str {
    match s {
        mqtt::LinkState::Connecting => "connecting",
        mqtt::LinkState::Connected => "connected",
        mqtt::LinkState::Reconnecting => "reconnecting",
        mqtt::LinkState::Stopped => "stopped",
    }
}

/// How long after a runner's panic health still says so.
const RUNNER_PANIC_RECENT: Duration = Duration::from_secs(60);
/// Runs failing with none succeeding for this long: the model is failing.
const FAILING_WINDOW: Duration = Duration::from_secs(10);

/// `Some((time since the last success, the last error))` when the model's
/// runs are failing: the last failure is recent (within
/// [`FAILING_WINDOW`]) and no run succeeded within the window (or ever).
/// One bad frame among good ones is an error count, not a failing model.
fn failing_runs(r: &crate::scheduler::RunRecord, now: Instant) -> Option<(Option<Duration>, String)> {
    let (failed_at, error) = r.last_failure.as_ref()?;
    let since_ok = r.last_ok.map(|ok| now.duration_since(ok));
    (now.duration_since(*failed_at) < FAILING_WINDOW && since_ok.is_none_or(|d| d >= FAILING_WINDOW))
        .then(|| (since_ok, error.clone()))
}

/// Frames a camera of model `model` may have with its runner at once.
fn in_flight(threads: &ThreadPlan, model: &str) -> usize {
    threads.model_lanes.get(model).copied().unwrap_or(0).max(1)
}

/// A frame whose inference is under way on the model's runner.
struct InFlight {
    frame: Frame,
    model: Arc<ModelInfo>,
    /// When its answer is given up on (`Worker::answer_timeout` after submitting).
    deadline: Instant,
    /// Where the region the model saw starts in the frame, when it saw one.
    origin: Option<(u32, u32)>,
}

fn spawn_worker(mut w: Worker) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("infer-{}", w.camera))
        .spawn(move || {
            let span = tracing::info_span!("inference", camera = %w.camera);
            let _e = span.enter();
            let mut spare: Vec<Prepared> = (0..w.input_buffers.max(1)).map(|_| Prepared::default()).collect();
            // Oldest first: answers are handled in the order frames went in.
            let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(w.max_in_flight);
            let mut last: Option<(Frame, Arc<ModelInfo>)> = None;
            'frames: loop {
                // With one input buffer, the answer comes first, then the
                // newest frame: nothing to prepare it into before, and a
                // frame taken early would only wait (held, and older).
                if spare.is_empty()
                    && let Some(job) = in_flight.pop_front()
                    && !w.finish_inference(job, &mut spare, &mut last)
                {
                    break;
                }
                // While frames are with the model, the worker waits for
                // whichever comes first: the next frame, prepared at once
                // (preprocessing overlaps the runs; with lanes it may run
                // beside them), or an answer (the runner nudges the slot),
                // handled at once so that events never wait for a frame.
                let answered = || w.submitter.as_ref().is_some_and(Submitter::ready);
                let next = if in_flight.is_empty() {
                    w.slot.take_timeout(Duration::from_millis(500))
                } else if answered() {
                    None
                } else {
                    match w.slot.take_or_nudged(Duration::from_millis(500)) {
                        Taken::Frame(frame) => Some(frame),
                        Taken::Nudged | Taken::Empty => None,
                    }
                };
                let Some(frame) = next else {
                    if !in_flight.is_empty() {
                        // An answer is back, or the oldest is past its
                        // deadline; once the camera has ended, the rest are
                        // waited for (briefly: see `closing`).
                        let overdue = in_flight.front().is_some_and(|j| j.deadline <= Instant::now());
                        if (answered() || overdue || w.slot.is_closed())
                            && let Some(job) = in_flight.pop_front()
                            && !w.finish_inference(job, &mut spare, &mut last)
                        {
                            break;
                        }
                        continue;
                    }
                    if w.slot.is_closed() {
                        break;
                    }
                    continue;
                };
                let Some(view) = ModelImage::of(&frame) else {
                    w.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        width = frame.width(),
                        height = frame.height(),
                        "frame buffer smaller than its size says; skipped"
                    );
                    continue;
                };
                // One atomic load per frame: this frame is processed wholly by
                // this version, even if a swap lands meanwhile.
                let (Some(detector), true) =
                    (w.model_slot.as_ref().map(|s| s.current()), w.submitter.is_some())
                else {
                    // A camera that is only watched: keep its newest frame for snapshots.
                    w.processed.record();
                    *w.latest.lock() =
                        Some(Arc::new(Processed { frame, prediction: Prediction::default(), model: None }));
                    continue;
                };
                let mut region = None;
                if let Some(gate) = &mut w.gate {
                    let forced = w.command.lock().is_some();
                    let (decision, motion) = gate.decide(&frame, w.events.tracking(), forced);
                    if decision == crate::motion::Decision::Skip {
                        w.skipped_still.fetch_add(1, Ordering::Relaxed);
                        // The live view stays live: this frame, with the boxes
                        // of the last inference (nothing moved since).
                        w.show_unprocessed(frame);
                        continue;
                    }
                    if decision == crate::motion::Decision::Motion
                        && gate.regions()
                        && let (Some(moving), Some((mw, mh))) =
                            (motion.region, detector.info().plan.input.size)
                    {
                        region = crate::motion::detection_region(
                            (frame.width(), frame.height()),
                            mw.max(mh),
                            moving,
                            &w.events.tracked_boxes(),
                        );
                    }
                }
                // A region is a view of the same buffer: nothing is copied.
                let crop = region.map(|r| frame.crop(r.x, r.y, r.side, r.side));
                let crop_view = crop.as_ref().and_then(ModelImage::of);
                let view = crop_view.as_ref().unwrap_or(&view);
                let origin = crop_view.is_some().then(|| region.map(|r| (r.x, r.y))).flatten();
                let model = detector.info().clone();
                let mut prepared = spare.pop().unwrap_or_default();
                let Some(submitter) = w.submitter.as_ref() else { break };
                // Only a worker with nothing queued counts as "on its way":
                // the runner may hold a batch open for it.
                submitter.prepare(&detector, &mut prepared, in_flight.is_empty(), |d, p| view.prepare(d, p));
                // At most `max_in_flight` frames per camera with the runner
                // (this keeps cameras fair): when they are all out, the
                // next goes as soon as one comes back, whichever it is, so
                // a free lane never waits on a slower one's frame.
                // Never without a deadline: the oldest frame's, or with only
                // frames given up on still out (a stuck runner), a short one.
                let mut skip = false;
                while w.submitter.as_ref().is_some_and(|s| s.running() >= w.max_in_flight) {
                    let until = in_flight.front().map_or_else(|| Instant::now() + STUCK_WAIT, |j| j.deadline);
                    let Some(submitter) = w.submitter.as_ref() else { break 'frames };
                    match submitter.wait_any_until(Some(until)) {
                        Wait::Answered => {}
                        Wait::Gone => break 'frames,
                        Wait::TimedOut => match in_flight.pop_front() {
                            // Past its deadline: given up on and counted.
                            Some(job) => {
                                if !w.finish_inference(job, &mut spare, &mut last) {
                                    break 'frames;
                                }
                            }
                            None => {
                                skip = true;
                                break;
                            }
                        },
                    }
                }
                if skip {
                    // The runner still holds every frame this camera may
                    // have with it: this one is skipped, counted, and the
                    // live view keeps moving with the last boxes.
                    w.note_no_answer(1);
                    spare.push(prepared);
                    w.show_unprocessed(frame);
                    continue;
                }
                let Some(submitter) = w.submitter.as_ref() else { break };
                if !submitter.submit(detector, prepared) {
                    break;
                }
                let deadline = Instant::now() + w.answer_timeout;
                in_flight.push_back(InFlight { frame, model, origin, deadline });
                // The answers that are back, in frame order, while the
                // runner already has the next frame.
                while !in_flight.is_empty() && w.submitter.as_ref().is_some_and(Submitter::ready) {
                    let Some(job) = in_flight.pop_front() else { break };
                    if !w.finish_inference(job, &mut spare, &mut last) {
                        break 'frames;
                    }
                }
            }
            while let Some(job) = in_flight.pop_front() {
                if !w.finish_inference(job, &mut spare, &mut last) {
                    break;
                }
            }
            // The camera stopped: every open track ends, so every start has its end.
            if let Some((frame, model)) = last {
                let _ = send_all(&w.events_tx, &w.ledger, w.events.finish(&frame, &model));
            }
        })
        .expect("spawning an inference thread")
}

/// With only frames given up on still at the runner, how long a new frame
/// waits for room before it is skipped.
const STUCK_WAIT: Duration = Duration::from_millis(200);
/// At shutdown, how long the frames still at the runner are waited for.
const CLOSING_WAIT: Duration = Duration::from_secs(1);

impl Worker {
    /// Frames whose answer did not come in time: counted, and logged (the
    /// first, then one in a hundred).
    fn note_no_answer(&self, n: u64) {
        let before = self.no_answer.fetch_add(n, Ordering::Relaxed);
        if before.is_multiple_of(100) {
            tracing::error!(
                count = before + n,
                timeout_ms = self.answer_timeout.as_millis() as u64,
                "the model did not answer in time; frames skipped"
            );
        }
    }

    /// Shows `frame` in the live view with the last boxes, unprocessed.
    fn show_unprocessed(&self, frame: Frame) {
        let mut latest = self.latest.lock();
        let (prediction, model) =
            latest.as_ref().map(|p| (p.prediction.clone(), p.model.clone())).unwrap_or_default();
        *latest = Some(Arc::new(Processed { frame, prediction, model }));
    }

    /// Waits for the runner's answer on `job`'s frame, then publishes its
    /// detections and turns them into events. `false` when the worker must
    /// stop (the runner or the event writer is gone).
    fn finish_inference(
        &mut self,
        job: InFlight,
        spare: &mut Vec<Prepared>,
        last: &mut Option<(Frame, Arc<ModelInfo>)>,
    ) -> bool {
        // At shutdown, answers get a second at most: the open tracks' ends
        // must still reach the outbox within the shutdown deadline. (A
        // recording that ended by itself waits for its last answers.)
        if self.stopping.is_cancelled() && self.closing.is_none() {
            self.closing = Some(Instant::now() + CLOSING_WAIT);
        }
        let until = self.closing.map_or(job.deadline, |c| c.min(job.deadline));
        let Some(submitter) = self.submitter.as_ref() else { return false };
        let done = match submitter.wait_until(Some(until)) {
            Ok(done) => done,
            Err(Wait::TimedOut) => {
                // Its buffer stays with the runner; a fresh one replaces it.
                spare.push(Prepared::default());
                self.note_no_answer(1);
                return true;
            }
            Err(_) => return false,
        };
        spare.push(done.prepared);
        let InFlight { frame, model, origin, .. } = job;
        let (mut prediction, timings) = match done.result {
            Ok(r) => r,
            Err(e) => {
                let n = self.errors.fetch_add(1, Ordering::Relaxed);
                // The first error and then one in a hundred: a broken
                // model must not flood the log at frame rate.
                if n.is_multiple_of(100) {
                    tracing::error!(error = %e, count = n + 1, "inference failed");
                }
                return true;
            }
        };
        if let Some((x, y)) = origin {
            self.on_regions.fetch_add(1, Ordering::Relaxed);
            // Boxes of a region, back into the frame's coordinates.
            let (x, y) = (x as f32, y as f32);
            for d in &mut prediction.detections {
                d.bbox = BBox { x1: d.bbox.x1 + x, y1: d.bbox.y1 + y, x2: d.bbox.x2 + x, y2: d.bbox.y2 + y };
            }
        }
        self.processed.record();
        self.stages.preprocess.observe(timings.preprocess.as_secs_f64());
        self.stages.inference.observe(timings.run.as_secs_f64());
        self.stages.postprocess.observe(timings.postprocess.as_secs_f64());

        if let Some(tx) = &self.detections_tx {
            let noteworthy = !prediction.detections.is_empty()
                || !prediction.classes.is_empty()
                || prediction.anomaly.is_some();
            if noteworthy {
                let msg = DetectionsEvent {
                    id: uuid::Uuid::now_v7(),
                    camera: self.camera.as_str().into(),
                    captured_at: frame.captured_at(),
                    captured_instant: frame.captured_instant(),
                    frame_seq: frame.seq(),
                    pts: frame.pts(),
                    width: frame.width(),
                    height: frame.height(),
                    model: model.clone(),
                    prediction: prediction.clone(),
                    timings,
                }
                .to_json(&self.device, SystemTime::now(), Instant::now());
                if tx.try_send(msg).is_err() {
                    self.status.note_detection_dropped();
                }
            }
        }

        let command = self.command.lock().take();
        let t_events = Instant::now();
        let emitted = self.events.process(&frame, &prediction, &model, command);
        self.stages.events.observe(t_events.elapsed().as_secs_f64());
        let counts = self.events.line_counts();
        if !counts.is_empty() {
            *self.line_counts.lock() = counts;
        }
        *self.latest.lock() =
            Some(Arc::new(Processed { frame: frame.clone(), prediction, model: Some(model.clone()) }));
        *last = Some((frame, model));
        send_all(&self.events_tx, &self.ledger, emitted).is_ok()
    }
}

/// Blocks while the events channel is full: events are never dropped.
fn send_all(tx: &mpsc::Sender<Emitted>, ledger: &EventLedger, events: Vec<Emitted>) -> Result<(), ()> {
    let mut events = events.into_iter();
    for e in events.by_ref() {
        if crate::writer::send_blocking(tx, ledger, e).is_err() {
            // The writer is gone: what was left of these is lost, and counted.
            for _ in events {
                ledger.note_emitted();
                ledger.note_unsent();
            }
            return Err(());
        }
    }
    Ok(())
}

/// A frame as the model's preprocessing reads it: the decoder's planes when
/// the frame is I420 (no RGB copy is made), else packed RGB.
pub(crate) enum ModelImage<'a> {
    I420(I420View<'a>),
    Rgb(ImageView<'a>),
}

impl<'a> ModelImage<'a> {
    /// `None` when the buffer is smaller than the frame's size says.
    pub(crate) fn of(frame: &'a Frame) -> Option<ModelImage<'a>> {
        match frame.i420() {
            Some(p) => {
                let matrix = match p.matrix {
                    vigil_camera::YuvMatrix::Bt601 => YuvMatrix::Bt601,
                    vigil_camera::YuvMatrix::Bt709 => YuvMatrix::Bt709,
                    vigil_camera::YuvMatrix::Bt2020 => YuvMatrix::Bt2020,
                };
                I420View::new(p.y, p.u, p.v, frame.width(), frame.height(), matrix, p.full_range)
                    .map(ModelImage::I420)
            }
            None => ImageView::new(frame.data(), frame.width(), frame.height(), frame.stride())
                .map(ModelImage::Rgb),
        }
    }

    fn prepare(&self, detector: &Detector, prepared: &mut Prepared) {
        match self {
            ModelImage::I420(v) => detector.prepare_i420(v, prepared),
            ModelImage::Rgb(v) => detector.prepare(v, prepared),
        }
    }

    /// Prepares and runs at once, on this thread, stopped at `deadline`
    /// (a self-test must not hang on a model that never finishes).
    pub(crate) fn detect_until(
        &self,
        detector: &Detector,
        scratch: &mut vigil_inference::Scratch,
        deadline: std::time::Instant,
    ) -> Result<Prediction, vigil_inference::InferenceError> {
        self.prepare(detector, &mut scratch.prepared);
        let mut out = detector.run_prepared_until(
            &[&scratch.prepared],
            &mut scratch.run,
            vigil_inference::RunOn::Main,
            deadline,
        )?;
        out.pop()
            .map(|(prediction, _)| prediction)
            .ok_or_else(|| vigil_inference::InferenceError::Run("no prediction".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::{FAILING_WINDOW, failing_runs, input_buffers};
    use crate::scheduler::RunRecord;
    use std::time::{Duration, Instant};

    #[test]
    fn a_model_is_failing_only_while_no_run_succeeds_for_the_window() {
        let now = Instant::now() + Duration::from_secs(60);
        let ago = |s: u64| now - Duration::from_secs(s);
        let err = |at| Some((at, "the model's output on this frame does not fit its decoder".to_owned()));
        // One bad frame among good ones: an error count, not a failing model.
        let mixed = RunRecord { last_ok: Some(ago(1)), last_failure: err(ago(0)), last_panic: None };
        assert!(failing_runs(&mixed, now).is_none());
        // Failing from the start, or with the last success a window ago.
        let never = RunRecord { last_ok: None, last_failure: err(ago(0)), last_panic: None };
        assert_eq!(failing_runs(&never, now).map(|f| f.0), Some(None));
        let long = RunRecord { last_ok: Some(ago(30)), last_failure: err(ago(1)), last_panic: None };
        assert_eq!(failing_runs(&long, now).map(|f| f.0), Some(Some(Duration::from_secs(30))));
        // Failures that stopped (no runs lately: the camera is still): over.
        let old = RunRecord { last_ok: Some(ago(40)), last_failure: err(ago(20)), last_panic: None };
        assert!(FAILING_WINDOW < Duration::from_secs(20) && failing_runs(&old, now).is_none());
    }

    #[test]
    fn a_second_input_buffer_only_where_the_runners_would_wait_for_it() {
        // One camera: preprocessing overlaps the run.
        assert_eq!(input_buffers(1, 1, 1, 1), 2);
        // As many cameras as sessions: each runner has only its camera.
        assert_eq!(input_buffers(2, 2, 1, 1), 2);
        // Four cameras on two sessions: the others' frames fill the gap.
        assert_eq!(input_buffers(4, 2, 1, 1), 1);
        // Four cameras batched four at a time in one session: a batch needs all four.
        assert_eq!(input_buffers(4, 1, 4, 1), 2);
        assert_eq!(input_buffers(5, 1, 4, 1), 1);
        // One camera on two lanes: two frames running, the next being prepared.
        assert_eq!(input_buffers(1, 1, 1, 2), 3);
    }
}
