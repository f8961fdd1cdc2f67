use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use sha2::{Digest, Sha256};

use crate::decode::{Coords, DecodeParams, DecodeScratch, OutTensor, decode};
use crate::manifest::{read_labels_txt, read_manifest};
use crate::plan::{ModelFacts, ModelPlan, Overrides, TensorInfo, plan};
use crate::preprocess::{Geometry, InputBuffers, InputType};
use crate::provider::{Provider, ProviderStatus, register};
use crate::{BBox, DecoderKind, Detection, I420View, ImageView, InferenceError, nms, runtime};

/// How to load a model: config overrides, threads and provider.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    pub overrides: Overrides,
    /// ONNX Runtime intra-op threads (0 = ONNX Runtime's default: one per core).
    pub intra_threads: usize,
    /// Copies of the session (0 or 1: one). Each copy runs on its own, so
    /// that many frames can be in `session.run` at once, each with
    /// `intra_threads` threads.
    pub sessions: usize,
    /// Side-by-side lanes (0 or 1: none): this many more copies of the
    /// session, each with `intra_threads / lanes` threads. The caller picks
    /// per run (`Detector::run_prepared_on`): the main copy with every
    /// thread gives the shortest run, lanes running at once give more runs
    /// per second from the same threads. CPU only.
    pub lanes: usize,
    /// The most frames one run will be given; 0: as many as the model takes.
    /// At 1 every run has the same shape, which lets ONNX Runtime plan its
    /// memory once (see `read_facts_with`) and skips the batch probe.
    pub max_batch: usize,
    pub provider: Provider,
    pub device_id: i32,
    /// Run on CPU, loudly, when the requested provider cannot be registered.
    pub allow_cpu_fallback: bool,
}

/// What Vigil learned about a model when it loaded it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub name: String,
    /// Version within its slot (1: the file the config names; uploads count up).
    pub version: u32,
    pub path: PathBuf,
    /// Of the file's bytes as loaded: names the exact version in every event.
    pub sha256: String,
    pub size_bytes: u64,
    pub plan: ModelPlan,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    pub provider: ProviderStatus,
}

impl ModelInfo {
    pub fn decoder(&self) -> DecoderKind {
        self.plan.decoder
    }
    pub fn labels(&self) -> &[String] {
        &self.plan.labels
    }
    /// Fixed input size (width, height); `None` when fed at the frame's size.
    pub fn input_size(&self) -> Option<(u32, u32)> {
        self.plan.input.size
    }
}

/// A classifier's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassScore {
    pub class_id: u32,
    pub label: Arc<str>,
    pub score: f32,
}

/// An anomaly model's answer; its regions are in [`Prediction::detections`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anomaly {
    pub score: f32,
    pub threshold: f32,
    pub is_anomalous: bool,
}

/// Everything a model said about one image. Boxes are in the image's pixels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prediction {
    pub detections: Vec<Detection>,
    /// Classifiers: the top classes, best first.
    pub classes: Vec<ClassScore>,
    /// Anomaly models: the verdict.
    pub anomaly: Option<Anomaly>,
}

/// Time spent in each stage of one `detect` call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub preprocess: Duration,
    pub run: Duration,
    pub postprocess: Duration,
}

/// One frame preprocessed for a detector, waiting for its run
/// ([`Detector::run_prepared`]). Owned by a camera's worker and reused frame
/// after frame, so the hot path does not allocate its big buffers.
#[derive(Debug, Default)]
pub struct Prepared {
    input: InputBuffers,
    geometry: Option<Geometry>,
    preprocess: Duration,
}

impl Prepared {
    /// How long the last preparation took.
    pub fn preprocess_time(&self) -> Duration {
        self.preprocess
    }
}

/// What whoever runs the model reuses between runs: the stacked input of a
/// batch and the decoders' buffers.
#[derive(Debug, Default)]
pub struct RunScratch {
    stacked: InputBuffers,
    decode: DecodeScratch,
}

/// Both halves, for callers that prepare and run on one thread.
#[derive(Debug, Default)]
pub struct Scratch {
    pub prepared: Prepared,
    pub run: RunScratch,
}

/// A loaded model, ready to run. Shared by every camera that uses it. Runs
/// on one session are serialised (`ort` sessions take `&mut self` to run);
/// with several copies (`ModelOptions::sessions`) as many run at once.
///
/// Copies rather than concurrent runs on one session: ONNX Runtime documents
/// `Run` as thread-safe, but `ort`'s maintainers hold that it is not in
/// practice (GPU providers crash) and made running exclusive on purpose. A
/// copy costs about 13 MiB of resident memory with YOLOv8n (measured: two
/// threads on one shared session ran no faster than on two copies), a small
/// price for not going around that with raw C API calls.
#[derive(Debug)]
pub struct Detector {
    info: Arc<ModelInfo>,
    labels: Vec<Arc<str>>,
    params: DecodeParams,
    /// Per class id: its own threshold when the config or manifest set one.
    class_threshold: Vec<Option<f32>>,
    /// The most frames one run takes: 1, the fixed N of the input's first
    /// dimension, or unbounded when it is dynamic.
    batch_limit: usize,
    /// The input's first dimension is a fixed N > 1: runs are padded to it.
    fixed_batch: Option<usize>,
    /// Copies of the session: runs on different copies go side by side.
    sessions: Vec<Mutex<Session>>,
    next_session: AtomicUsize,
    /// Copies with fewer threads each, for frames that queue
    /// (`ModelOptions::lanes`), loaded the first time they are asked for: a
    /// camera that keeps up never pays their memory (about 30 MiB each with
    /// YOLOv8n: weights and the run's planned memory).
    lanes: OnceLock<Vec<Mutex<Session>>>,
    /// How to load them: `lanes` copies with these options. `None`: no lanes.
    lane_options: Option<ModelOptions>,
    lanes_requested: AtomicBool,
}

/// A small black frame: what a model is test-run on when it loads.
static BLANK: [u8; 64 * 48 * 3] = [0; 64 * 48 * 3];

fn blank_frame() -> ImageView<'static> {
    ImageView::new(&BLANK, 64, 48, 64 * 3).expect("BLANK holds a whole 64x48 frame")
}

/// Where a run goes: a main copy of the session, or one of the lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOn {
    Main,
    Lane(usize),
}

fn dtype_name(t: &TensorElementType) -> String {
    match t {
        TensorElementType::Float32 => "float32",
        TensorElementType::Float16 => "float16",
        TensorElementType::Float64 => "float64",
        TensorElementType::Uint8 => "uint8",
        TensorElementType::Int8 => "int8",
        TensorElementType::Int32 => "int32",
        TensorElementType::Int64 => "int64",
        TensorElementType::Bool => "bool",
        other => return format!("{other:?}").to_lowercase(),
    }
    .to_string()
}

fn tensor_info(o: &ort::value::Outlet) -> TensorInfo {
    match o.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            TensorInfo { name: o.name().to_owned(), dtype: dtype_name(ty), shape: shape.to_vec() }
        }
        other => TensorInfo { name: o.name().to_owned(), dtype: format!("{other:?}"), shape: vec![] },
    }
}

/// Opens a model file with ONNX Runtime and reads what it says about itself,
/// plus its manifest and labels.txt. Used by `load` and `vigil models inspect`.
pub fn read_facts(path: &Path) -> Result<(Vec<u8>, Session, ModelFacts), InferenceError> {
    let (bytes, mut sessions, facts, _) = read_facts_with(path, &ModelOptions::default())?;
    let session = sessions.pop().ok_or_else(|| InferenceError::Run("no session".into()))?;
    Ok((bytes, session, facts))
}

/// ONNX Runtime ends its messages with a full stop; the error adds its own.
fn load_error(path: &Path, reason: String) -> InferenceError {
    InferenceError::ModelLoad { path: path.to_owned(), reason: reason.trim_end_matches('.').to_owned() }
}

/// A session builder with Vigil's settings for `opts` (provider not yet
/// registered).
fn session_builder(
    path: &Path,
    opts: &ModelOptions,
) -> Result<ort::session::builder::SessionBuilder, InferenceError> {
    let env = runtime::environment()?;
    let load_err = |reason: String| load_error(path, reason);
    let mut b = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
    // `All`, not `Level3`: in `ort` Level3 is ORT_ENABLE_LAYOUT, one
    // step short of what ONNX Runtime (and its Python package) does by
    // default. Two one-thread YOLOv8n copies side by side: 41.8 vs 41.0
    // runs/s (three interleaved pairs, all in favour).
    b = b.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| load_err(e.to_string()))?;
    if opts.intra_threads > 0 {
        b = b.with_intra_threads(opts.intra_threads).map_err(|e| load_err(e.to_string()))?;
    }
    // ONNX Runtime's intra-op workers spin between operators, which a
    // run needs, and go on spinning after it has returned, which nothing
    // needs: with one camera at 10 fps on two threads the second thread
    // spun some 30 ms after every run, CPU taken from the decoders and
    // the other cameras. Stopped when the last run returns (the next
    // run restarts it), Vigil's CPU per frame fell from 102-122 ms to
    // 70-78 and the capture-to-publish p99 fell too, in each of six
    // interleaved pairs; flat out, the throughput is the same.
    // inference/tests/idle_spin.rs checks a loaded model idles for free.
    b = b.with_config_entry("session.force_spinning_stop", "1").map_err(|e| load_err(e.to_string()))?;
    // ONNX Runtime's memory pattern lays out every intermediate tensor
    // of a run in one block, planned from the first run of each input
    // shape. Without it each tensor is its own allocation: from the
    // arena that all sessions share, that is a lock taken hundreds of
    // times a run by every session running. YOLOv8n, two one-thread
    // copies side by side: 42.2 runs/s with the pattern, 39.7 without
    // (five interleaved pairs); Vigil's four-camera bench 0.90 vs 0.86
    // of the bare loop, for 22 MiB more peak memory (one camera: 24). A
    // model that runs batches of 1 to N frames would plan N layouts and
    // hold the largest (four cameras in batches: peak RSS 437 MB
    // without the pattern, 548 with it), so batching keeps it off.
    let single_shape = opts.max_batch == 1;
    b = b.with_memory_pattern(single_shape).map_err(|e| load_err(e.to_string()))?;
    if runtime::shared_arena() {
        b = b.with_env_allocators().map_err(|e| load_err(e.to_string()))?;
    }
    Ok(b)
}

fn read_facts_with(
    path: &Path,
    options: &ModelOptions,
) -> Result<(Vec<u8>, Vec<Session>, ModelFacts, ProviderStatus), InferenceError> {
    let bytes = std::fs::read(path)
        .map_err(|e| InferenceError::ModelUnreadable { path: path.to_owned(), reason: e.to_string() })?;
    if bytes.is_empty() {
        return Err(InferenceError::ModelLoad { path: path.to_owned(), reason: "the file is empty".into() });
    }
    let load_err = |reason: String| load_error(path, reason);
    let base = |opts: &ModelOptions| session_builder(path, opts);
    let requested = options.provider;
    let (builder, provider) = match register(base(options)?, requested, options.device_id) {
        Ok(b) => (
            b,
            ProviderStatus {
                requested: requested.ort_name().into(),
                active: requested.ort_name().into(),
                fallback_reason: None,
            },
        ),
        Err(reason) if options.allow_cpu_fallback => {
            tracing::error!(
                model = %path.display(),
                requested = requested.ort_name(),
                %reason,
                "execution provider unavailable: RUNNING ON CPU INSTEAD (allow_cpu_fallback = true)"
            );
            (
                base(options)?,
                ProviderStatus {
                    requested: requested.ort_name().into(),
                    active: Provider::Cpu.ort_name().into(),
                    fallback_reason: Some(reason),
                },
            )
        }
        Err(reason) => {
            return Err(InferenceError::Provider { path: path.to_owned(), reason });
        }
    };
    let mut sessions = Vec::with_capacity(options.sessions.max(1));
    for _ in 0..options.sessions.max(1) {
        let mut b = builder.clone();
        sessions.push(b.commit_from_memory(&bytes).map_err(|e| load_err(e.to_string()))?);
    }
    let session = &sessions[0];
    let mut metadata = BTreeMap::new();
    if let Ok(meta) = session.metadata()
        && let Ok(keys) = meta.custom_keys()
    {
        for k in keys {
            if let Some(v) = meta.custom(&k) {
                metadata.insert(k, v);
            }
        }
    }
    let manifest = read_manifest(path)
        .map_err(|reason| InferenceError::Unsupported { path: path.to_owned(), reason })?;
    let facts = ModelFacts {
        inputs: session.inputs().iter().map(tensor_info).collect(),
        outputs: session.outputs().iter().map(tensor_info).collect(),
        metadata,
        manifest,
        labels_txt: read_labels_txt(path),
    };
    Ok((bytes, sessions, facts, provider))
}

impl Detector {
    /// Loads, inspects and validates a model, then test-runs it once on a
    /// blank frame. Fails with a message that lists what was found when no
    /// decoder fits.
    pub fn load(name: &str, path: &Path, options: ModelOptions) -> Result<Detector, InferenceError> {
        let (bytes, sessions, facts, provider) = read_facts_with(path, &options)?;
        // Lanes are for the CPU; they load the first time they are wanted.
        let lane_options = (options.lanes > 1 && provider.active == Provider::Cpu.ort_name()).then(|| {
            ModelOptions { intra_threads: (options.intra_threads / options.lanes).max(1), ..options.clone() }
        });
        let plan = plan(&facts, &options.overrides).map_err(|reason| InferenceError::Unsupported {
            path: path.to_owned(),
            reason: format!("{reason}; found {}", facts.describe()),
        })?;
        let labels: Vec<Arc<str>> = plan.labels.iter().map(|l| Arc::from(l.as_str())).collect();
        let class_threshold =
            plan.labels.iter().map(|l| plan.thresholds.class_confidence.get(l).copied()).collect();
        let info = ModelInfo {
            name: name.to_owned(),
            version: 1,
            path: path.to_owned(),
            sha256: hex(&Sha256::digest(&bytes)),
            size_bytes: bytes.len() as u64,
            plan: plan.clone(),
            inputs: facts.inputs,
            outputs: facts.outputs,
            metadata: facts.metadata,
            provider,
        };
        // The first input dimension is the batch: -1 (or a name) takes any
        // number of frames, a fixed N takes exactly N (runs are padded), 1
        // takes one. Inputs fed at the frame's own size cannot be stacked.
        let batch_dim = info.inputs.iter().find(|i| i.name == plan.input.name).and_then(|i| i.shape.first());
        let (batch_limit, fixed_batch) = match (batch_dim, plan.input.size) {
            (_, None) => (1, None),
            (Some(&n), _) if n > 1 => (n as usize, Some(n as usize)),
            (Some(&n), _) if n <= 0 => (usize::MAX, None),
            _ => (1, None),
        };
        let mut detector = Detector {
            info: Arc::new(info),
            labels,
            params: plan.decode_params(),
            class_threshold,
            batch_limit,
            fixed_batch,
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next_session: AtomicUsize::new(0),
            lanes: OnceLock::new(),
            lane_options,
            lanes_requested: AtomicBool::new(false),
        };
        let view = blank_frame();
        let mut scratch = Scratch::default();
        detector.detect(&view, &mut scratch).map_err(|e| InferenceError::Unsupported {
            path: path.to_owned(),
            reason: format!("a test run on a blank frame failed: {e}"),
        })?;
        // A model may declare a dynamic batch and still mix its images up (a
        // reshape that folds the batch away): try two frames before trusting
        // it; if that fails, run it one frame at a time.
        if options.max_batch > 0 && detector.fixed_batch.is_none() {
            detector.batch_limit = detector.batch_limit.min(options.max_batch);
        }
        if detector.batch_limit > 1 {
            let mut second = Prepared::default();
            detector.prepare(&view, &mut second);
            if let Err(e) = detector.run_prepared(&[&scratch.prepared, &second], &mut scratch.run) {
                tracing::info!(model = %path.display(), error = %e, "the model does not run batches; it runs one frame at a time");
                detector.batch_limit = 1;
                detector.fixed_batch = None;
            }
        }
        Ok(detector)
    }

    /// A free copy of the session, else the next in turn (waiting for it).
    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>, InferenceError> {
        for s in &self.sessions {
            if let Ok(guard) = s.try_lock() {
                return Ok(guard);
            }
        }
        let i = self.next_session.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        self.sessions[i].lock().map_err(|_| InferenceError::Run("session lock poisoned".into()))
    }

    /// Copies of the session: how many runs can go at once.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Side-by-side lanes for frames that queue (0: none), loaded or not.
    pub fn lanes(&self) -> usize {
        self.lane_options.as_ref().map_or(0, |o| o.lanes)
    }

    /// The lanes are loaded: runs on them go side by side.
    pub fn lanes_ready(&self) -> bool {
        self.lanes.get().is_some()
    }

    /// Starts loading the lanes on a thread of their own, the first time it
    /// is called; runs meant for a lane go to the main copy meanwhile.
    pub fn request_lanes(self: &Arc<Self>) {
        if self.lane_options.is_none() || self.lanes_requested.swap(true, Ordering::AcqRel) {
            return;
        }
        let detector = self.clone();
        let spawned =
            std::thread::Builder::new().name(format!("lanes-{}", self.info.name)).spawn(move || {
                let t0 = Instant::now();
                match detector.load_lanes() {
                    Ok(()) => tracing::info!(
                        model = %detector.info.name,
                        version = detector.info.version,
                        lanes = detector.lanes(),
                        ms = t0.elapsed().as_millis() as u64,
                        "frames come faster than the model runs: lanes loaded, frames now run side by side"
                    ),
                    Err(e) => tracing::warn!(
                        model = %detector.info.name,
                        error = %e,
                        "lanes could not be loaded; frames keep running one at a time"
                    ),
                }
                runtime::release_free_memory();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start loading lanes");
        }
    }

    /// Loads the lanes now (what [`Detector::request_lanes`] does in the
    /// background), from the model's file, which must still hold the bytes
    /// this detector was loaded from, and test-runs each once, so that each
    /// lane's memory is planned here rather than on a camera's frame.
    pub fn load_lanes(&self) -> Result<(), InferenceError> {
        let Some(opts) = &self.lane_options else { return Ok(()) };
        if self.lanes_ready() {
            return Ok(());
        }
        let path = &self.info.path;
        let bytes = std::fs::read(path)
            .map_err(|e| InferenceError::ModelUnreadable { path: path.to_owned(), reason: e.to_string() })?;
        if hex(&Sha256::digest(&bytes)) != self.info.sha256 {
            return Err(load_error(path, "the file changed since the model was loaded".into()));
        }
        let mut b = session_builder(path, opts)?;
        let mut lanes = Vec::with_capacity(opts.lanes);
        for _ in 0..opts.lanes {
            lanes
                .push(Mutex::new(b.commit_from_memory(&bytes).map_err(|e| load_error(path, e.to_string()))?));
        }
        let view = blank_frame();
        let mut scratch = Scratch::default();
        self.prepare(&view, &mut scratch.prepared);
        for lane in &lanes {
            let mut session = lane.lock().map_err(|_| InferenceError::Run("session lock poisoned".into()))?;
            self.run_on(&mut session, &[&scratch.prepared], &mut scratch.run)?;
        }
        let _ = self.lanes.set(lanes);
        Ok(())
    }

    /// The most frames one run takes (see [`Detector::run_prepared`]).
    pub fn batch_limit(&self) -> usize {
        self.batch_limit
    }

    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.info
    }

    /// Records the version this detector is within its slot (it appears in events).
    pub fn set_version(&mut self, version: u32) {
        Arc::make_mut(&mut self.info).version = version;
    }

    /// Runs the model on one image.
    pub fn detect(
        &self,
        img: &ImageView<'_>,
        scratch: &mut Scratch,
    ) -> Result<(Prediction, Timings), InferenceError> {
        self.prepare(img, &mut scratch.prepared);
        let mut out = self.run_prepared(&[&scratch.prepared], &mut scratch.run)?;
        out.pop().ok_or_else(|| InferenceError::Run("no prediction".into()))
    }

    /// Preprocesses `img` into `p`, for a later [`Detector::run_prepared`]
    /// on this detector (a run of another version refuses it only if its
    /// input differs; callers keep the pair together).
    pub fn prepare(&self, img: &ImageView<'_>, p: &mut Prepared) {
        let t0 = Instant::now();
        p.geometry = Some(self.info.plan.input.fill(img, &mut p.input));
        p.preprocess = t0.elapsed();
    }

    /// [`Detector::prepare`] from a YUV 4:2:0 frame, as decoders give it:
    /// no RGB copy of the frame is made.
    pub fn prepare_i420(&self, img: &I420View<'_>, p: &mut Prepared) {
        let t0 = Instant::now();
        p.geometry = Some(self.info.plan.input.fill_i420(img, &mut p.input));
        p.preprocess = t0.elapsed();
    }

    /// Runs the model once on up to [`Detector::batch_limit`] prepared
    /// frames (stacked along the first dimension) and decodes each. One
    /// frame runs straight from its own buffer; a batch is copied into
    /// `scratch` first (a few MB per frame: well under a millisecond against
    /// the tens a CPU run takes). Each frame's timings carry the whole run.
    pub fn run_prepared(
        &self,
        items: &[&Prepared],
        scratch: &mut RunScratch,
    ) -> Result<Vec<(Prediction, Timings)>, InferenceError> {
        self.run_prepared_on(items, scratch, RunOn::Main)
    }

    /// [`Detector::run_prepared`] on a chosen copy: `RunOn::Lane(i)` runs on
    /// lane `i` (one caller at a time per lane; until the lanes are loaded,
    /// or without lanes, on a main copy). Lanes trade a longer run for more runs per
    /// second: two one-thread YOLOv8n runs side by side give 40.7 runs/s on
    /// two cores where one two-thread copy gives 36.4, each run taking 49 ms
    /// instead of 27.
    pub fn run_prepared_on(
        &self,
        items: &[&Prepared],
        scratch: &mut RunScratch,
        on: RunOn,
    ) -> Result<Vec<(Prediction, Timings)>, InferenceError> {
        let lane = match on {
            RunOn::Lane(i) => self.lanes.get().and_then(|lanes| lanes.get(i)),
            RunOn::Main => None,
        };
        let mut session = match lane {
            Some(lane) => lane.lock().map_err(|_| InferenceError::Run("session lock poisoned".into()))?,
            None => self.session()?,
        };
        self.run_on(&mut session, items, scratch)
    }

    fn run_on(
        &self,
        session: &mut Session,
        items: &[&Prepared],
        scratch: &mut RunScratch,
    ) -> Result<Vec<(Prediction, Timings)>, InferenceError> {
        let plan = &self.info.plan;
        let n = items.len();
        if n == 0 || n > self.batch_limit {
            return Err(InferenceError::Run(format!(
                "{n} frames for a model that takes 1 to {}",
                self.batch_limit
            )));
        }
        let geometries: Vec<Geometry> = items
            .iter()
            .map(|p| p.geometry.ok_or_else(|| InferenceError::Run("a frame was not prepared".into())))
            .collect::<Result<_, _>>()?;
        let (in_w, in_h) = geometries[0].input_size();
        if geometries.iter().any(|g| g.input_size() != (in_w, in_h)) {
            return Err(InferenceError::Run("frames of one batch must have one input size".into()));
        }
        let rows = self.fixed_batch.unwrap_or(n);
        let mut shape = plan.input.shape(in_w, in_h);
        shape[0] = rows;
        let t1 = Instant::now();
        let input: &InputBuffers = if rows == 1 {
            &items[0].input
        } else {
            stack(items, rows, plan.input.dtype, &mut scratch.stacked);
            &scratch.stacked
        };
        let name = plan.input.name.as_str();
        let outputs = run_session(session, name, plan.input.dtype, shape, input)?;
        let t2 = Instant::now();

        let mut whole = Vec::with_capacity(plan.roles.len());
        for role in &plan.roles {
            whole.push(match role {
                Some(i) => Some(read_output(&outputs[*i])?),
                None => None,
            });
        }
        let mut results = Vec::with_capacity(n);
        for (i, (item, geometry)) in items.iter().zip(&geometries).enumerate() {
            let t_decode = Instant::now();
            let outs: Vec<Option<OutTensor<'_>>> = if rows == 1 {
                whole.iter().map(|o| o.as_ref().map(OutTensor::borrowed)).collect()
            } else {
                whole
                    .iter()
                    .map(|o| o.as_ref().map(|o| o.row(i, rows)).transpose())
                    .collect::<Result<_, _>>()?
            };
            let mut pred = Prediction::default();
            let coords = decode(
                plan.decoder,
                &outs,
                &self.params,
                &self.labels,
                geometry.frame_size(),
                &mut scratch.decode,
                &mut pred,
            )
            .map_err(InferenceError::Run)?;
            self.finish(&mut pred, coords, geometry);
            results.push((
                pred,
                Timings { preprocess: item.preprocess, run: t2 - t1, postprocess: t_decode.elapsed() },
            ));
        }
        Ok(results)
    }

    /// `session.run` alone, `n` times, on `img` preprocessed once: the
    /// baseline `vigil bench` compares the whole path against.
    pub fn bare_runs(
        &self,
        img: &ImageView<'_>,
        scratch: &mut Scratch,
        n: usize,
    ) -> Result<Vec<Duration>, InferenceError> {
        let plan = &self.info.plan;
        self.prepare(img, &mut scratch.prepared);
        let geometry = scratch.prepared.geometry.ok_or_else(|| InferenceError::Run("not prepared".into()))?;
        let (in_w, in_h) = geometry.input_size();
        let mut shape = plan.input.shape(in_w, in_h);
        let rows = self.fixed_batch.unwrap_or(1);
        shape[0] = rows;
        let buf: &InputBuffers = if rows == 1 {
            &scratch.prepared.input
        } else {
            stack(&[&scratch.prepared], rows, plan.input.dtype, &mut scratch.run.stacked);
            &scratch.run.stacked
        };
        let name = plan.input.name.as_str();
        let mut session = self.session()?;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let outputs = run_session(&mut session, name, plan.input.dtype, shape, buf)?;
            drop(outputs);
            times.push(t.elapsed());
        }
        Ok(times)
    }

    /// Shared by every family: per-class thresholds, NMS where the family
    /// needs it, and boxes into frame pixels.
    fn finish(&self, pred: &mut Prediction, coords: Coords, geometry: &Geometry) {
        let t = &self.info.plan.thresholds;
        if self.class_threshold.iter().any(Option::is_some) || !t.class_confidence.is_empty() {
            pred.detections.retain(|d| {
                let thr =
                    self.class_threshold.get(d.class_id as usize).copied().flatten().unwrap_or(t.confidence);
                d.score > thr
            });
        }
        if self.info.plan.decoder.uses_nms() {
            pred.detections =
                nms(std::mem::take(&mut pred.detections), t.iou, t.class_agnostic, t.max_detections);
        }
        for d in &mut pred.detections {
            let b = d.bbox;
            let ((x1, y1), (x2, y2)) = match coords {
                Coords::Input => (geometry.to_frame(b.x1, b.y1), geometry.to_frame(b.x2, b.y2)),
                Coords::Normalised => {
                    (geometry.normalised_to_frame(b.x1, b.y1), geometry.normalised_to_frame(b.x2, b.y2))
                }
                Coords::Frame => {
                    let (w, h) = geometry.frame_size();
                    (
                        (b.x1.clamp(0.0, w as f32), b.y1.clamp(0.0, h as f32)),
                        (b.x2.clamp(0.0, w as f32), b.y2.clamp(0.0, h as f32)),
                    )
                }
            };
            d.bbox = BBox { x1, y1, x2, y2 };
        }
    }
}

/// One `session.run` on `input` (the vector of its dtype), viewed in place.
fn run_session<'s>(
    session: &'s mut Session,
    name: &str,
    dtype: InputType,
    shape: [usize; 4],
    input: &InputBuffers,
) -> Result<ort::session::SessionOutputs<'s>, InferenceError> {
    let run_err = |e: ort::Error| InferenceError::Run(e.to_string());
    match dtype {
        InputType::Float32 => session
            .run(ort::inputs![name => TensorRef::from_array_view((shape, &input.f32[..])).map_err(run_err)?]),
        InputType::Float16 => session
            .run(ort::inputs![name => TensorRef::from_array_view((shape, &input.f16[..])).map_err(run_err)?]),
        InputType::Uint8 => session
            .run(ort::inputs![name => TensorRef::from_array_view((shape, &input.u8[..])).map_err(run_err)?]),
    }
    .map_err(run_err)
}

/// Copies the frames' tensors one after another into `out`, zero-filling
/// any rows beyond them (a model with a fixed batch larger than the frames).
fn stack(items: &[&Prepared], rows: usize, dtype: InputType, out: &mut InputBuffers) {
    fn rows_of<T: Copy + Default>(parts: Vec<&[T]>, rows: usize, out: &mut Vec<T>) {
        let len = parts.first().map_or(0, |p| p.len());
        out.clear();
        out.reserve(len * rows);
        for p in &parts {
            out.extend_from_slice(p);
        }
        out.resize(len * rows, T::default());
    }
    match dtype {
        InputType::Float32 => rows_of(items.iter().map(|p| &p.input.f32[..]).collect(), rows, &mut out.f32),
        InputType::Float16 => rows_of(items.iter().map(|p| &p.input.f16[..]).collect(), rows, &mut out.f16),
        InputType::Uint8 => rows_of(items.iter().map(|p| &p.input.u8[..]).collect(), rows, &mut out.u8),
    }
}

/// An output as f32: borrowed when it already is f32, converted otherwise
/// (class ids as int64, masks as bool, float16 heads).
fn read_output(v: &DynValue) -> Result<OutTensor<'_>, InferenceError> {
    let err = |e: ort::Error| InferenceError::Run(e.to_string());
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(InferenceError::Run("an output is not a tensor".into()));
    };
    macro_rules! conv {
        ($t:ty, $f:expr) => {{
            let (shape, data) = v.try_extract_tensor::<$t>().map_err(err)?;
            OutTensor { shape: shape.to_vec(), data: Cow::Owned(data.iter().map($f).collect()) }
        }};
    }
    Ok(match ty {
        TensorElementType::Float32 => {
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(err)?;
            OutTensor { shape: shape.to_vec(), data: Cow::Borrowed(data) }
        }
        TensorElementType::Float16 => conv!(half::f16, |x: &half::f16| x.to_f32()),
        TensorElementType::Float64 => conv!(f64, |x: &f64| *x as f32),
        TensorElementType::Int64 => conv!(i64, |x: &i64| *x as f32),
        TensorElementType::Int32 => conv!(i32, |x: &i32| *x as f32),
        TensorElementType::Uint8 => conv!(u8, |x: &u8| f32::from(*x)),
        TensorElementType::Bool => conv!(bool, |x: &bool| if *x { 1.0 } else { 0.0 }),
        other => {
            return Err(InferenceError::Run(format!("outputs of type {other:?} are not supported")));
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
