use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ort::session::Session;
use sha2::{Digest, Sha256};

use crate::decode::{Coords, DecodeScratch, Decoder, OutTensor};
use crate::limits::{self, Loading, ModelLimits};
use crate::plan::{ModelPlan, Overrides, TensorInfo, plan};
use crate::preprocess::{Geometry, InputBuffers};
use crate::provider::{Provider, ProviderStatus};
use crate::session::{Opened, hex, load_error, read_output, run_session, session_builder, stack};
use crate::stop::{Armed, RunCancel, Stop};
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
    pub(crate) input: InputBuffers,
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
/// batch, the decoders' buffers, and the stop handle of runs with a deadline.
#[derive(Debug, Default)]
pub struct RunScratch {
    stacked: InputBuffers,
    decode: DecodeScratch,
    deadline: Option<RunCancel>,
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
    decoder: Decoder,
    /// Per class id: its own threshold when the config or manifest set one.
    class_threshold: Vec<Option<f32>>,
    /// The most frames one run takes: 1, the fixed N of the input's first
    /// dimension, or `ModelLimits::max_batch` when it is dynamic.
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
    /// How long each test run (at load, of each lane) may take.
    test_run: Duration,
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

impl Detector {
    /// Loads, inspects and validates a model, then test-runs it once on a
    /// blank frame, within [`ModelLimits::default`]. Fails with a message
    /// that lists what was found when no decoder fits.
    pub fn load(name: &str, path: &Path, options: ModelOptions) -> Result<Detector, InferenceError> {
        Detector::load_with(name, path, options, &ModelLimits::default())
    }

    /// [`Detector::load`] within `limits`: a model that asks for more (input
    /// size, batch, memory) is refused before anything of its size is
    /// allocated, and a test run that takes longer than `limits.test_run` is
    /// stopped, failing the load.
    pub fn load_with(
        name: &str,
        path: &Path,
        options: ModelOptions,
        limits: &ModelLimits,
    ) -> Result<Detector, InferenceError> {
        let Opened { bytes, session, facts, provider, builder } = crate::session::open(path, &options)?;
        // Lanes are for the CPU; they load the first time they are wanted.
        let lane_options = (options.lanes > 1 && provider.active == Provider::Cpu.ort_name()).then(|| {
            ModelOptions { intra_threads: (options.intra_threads / options.lanes).max(1), ..options.clone() }
        });
        let plan = plan(&facts, &options.overrides).map_err(|reason| InferenceError::Unsupported {
            path: path.to_owned(),
            reason: format!("{reason}; found {}", facts.describe()),
        })?;
        // The first input dimension is the batch: -1 (or a name) takes any
        // number of frames, a fixed N takes exactly N (runs are padded), 1
        // takes one. Inputs fed at the frame's own size cannot be stacked.
        let batch_dim = facts.inputs.iter().find(|i| i.name == plan.input.name).and_then(|i| i.shape.first());
        let too_large = |reason: String| InferenceError::TooLarge { path: path.to_owned(), reason };
        let (mut batch_limit, fixed_batch) = match (batch_dim, plan.input.size) {
            (_, None) => (1, None),
            (Some(&n), _) if n > 1 => {
                limits::check_fixed_batch(&plan.input.name, n as usize, limits).map_err(too_large)?;
                (n as usize, Some(n as usize))
            }
            (Some(&n), _) if n <= 0 => (limits.max_batch.max(1), None),
            _ => (1, None),
        };
        if options.max_batch > 0 && fixed_batch.is_none() {
            batch_limit = batch_limit.min(options.max_batch);
        }
        // Before any buffer of the input's size exists (the test run below
        // would make one) and before the other copies load.
        let loading = Loading {
            weights: bytes.len() as u64,
            copies: options.sessions.max(1) + lane_options.as_ref().map_or(0, |o| o.lanes),
            batch: batch_limit,
            cpu: provider.active == Provider::Cpu.ort_name(),
        };
        let available =
            if limits.memory_share > 0.0 { limits::available_memory(Path::new("/")) } else { None };
        limits::check(&plan, &facts.outputs, loading, limits, available.as_ref()).map_err(too_large)?;
        let mut sessions = vec![session];
        for _ in 1..options.sessions.max(1) {
            let copy =
                builder.clone().commit_from_memory(&bytes).map_err(|e| load_error(path, e.to_string()))?;
            sessions.push(copy);
        }
        let labels: Vec<Arc<str>> = plan.labels.iter().map(|l| Arc::from(l.as_str())).collect();
        let class_threshold =
            plan.labels.iter().map(|l| plan.thresholds.class_confidence.get(l).copied()).collect();
        let declared = plan.roles.iter().map(|r| r.map(|i| facts.outputs[i].shape.clone())).collect();
        let decoder = Decoder { kind: plan.decoder, params: plan.decode_params(), labels, declared };
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
        let mut detector = Detector {
            info: Arc::new(info),
            decoder,
            class_threshold,
            batch_limit,
            fixed_batch,
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next_session: AtomicUsize::new(0),
            lanes: OnceLock::new(),
            lane_options,
            lanes_requested: AtomicBool::new(false),
            test_run: limits.test_run,
        };
        let view = blank_frame();
        let mut scratch = Scratch::default();
        detector.prepare(&view, &mut scratch.prepared);
        detector.test_run(None, &[&scratch.prepared], &mut scratch.run).map_err(|e| match e {
            InferenceError::Stopped { .. } => too_large(format!(
                "a test run on a blank {}x{} frame did not finish within {:.1?} and was stopped: a model \
                 that runs that long loops without end or is far too big for this box (if the box is \
                 only slow, raise test_run for this model)",
                view.width, view.height, limits.test_run
            )),
            e => InferenceError::Unsupported {
                path: path.to_owned(),
                reason: format!("a test run on a blank frame failed: {e}"),
            },
        })?;
        // A model may declare a dynamic batch and still mix its images up (a
        // reshape that folds the batch away): try two frames before trusting
        // it; if that fails, run it one frame at a time.
        if detector.batch_limit > 1 {
            let mut second = Prepared::default();
            detector.prepare(&view, &mut second);
            if let Err(e) = detector.test_run(None, &[&scratch.prepared, &second], &mut scratch.run) {
                tracing::info!(model = %path.display(), error = %e, "the model does not run batches; it runs one frame at a time");
                detector.batch_limit = 1;
                detector.fixed_batch = None;
            }
        }
        Ok(detector)
    }

    /// One run within the test-run limit, on `session` or a main copy.
    fn test_run(
        &self,
        session: Option<&mut Session>,
        items: &[&Prepared],
        scratch: &mut RunScratch,
    ) -> Result<Vec<(Prediction, Timings)>, InferenceError> {
        let stop = Stop::Deadline(Instant::now() + self.test_run, self.test_run);
        match session {
            Some(session) => self.run_on(session, items, scratch, stop),
            None => self.run_on(&mut *self.session()?, items, scratch, stop),
        }
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
            self.test_run(Some(&mut session), &[&scratch.prepared], &mut scratch.run)?;
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
        self.run_stoppable(items, scratch, on, Stop::Never)
    }

    /// [`Detector::run_prepared_on`], stopped at `deadline` if it has not
    /// finished by then: it then fails with [`InferenceError::Stopped`]
    /// within about a millisecond of the deadline (ONNX Runtime checks
    /// between operators; one operator is never cut short), and the session
    /// is ready for the next run. Costs no thread: one watcher thread per
    /// process serves every deadline.
    pub fn run_prepared_until(
        &self,
        items: &[&Prepared],
        scratch: &mut RunScratch,
        on: RunOn,
        deadline: Instant,
    ) -> Result<Vec<(Prediction, Timings)>, InferenceError> {
        let limit = deadline.saturating_duration_since(Instant::now());
        self.run_stoppable(items, scratch, on, Stop::Deadline(deadline, limit))
    }

    /// [`Detector::run_prepared_on`], stopped when `cancel` is cancelled
    /// (from any thread, before or during the run): it then fails with
    /// [`InferenceError::Stopped`].
    pub fn run_prepared_cancellable(
        &self,
        items: &[&Prepared],
        scratch: &mut RunScratch,
        on: RunOn,
        cancel: &RunCancel,
    ) -> Result<Vec<(Prediction, Timings)>, InferenceError> {
        self.run_stoppable(items, scratch, on, Stop::Handle(cancel))
    }

    fn run_stoppable(
        &self,
        items: &[&Prepared],
        scratch: &mut RunScratch,
        on: RunOn,
        stop: Stop<'_>,
    ) -> Result<Vec<(Prediction, Timings)>, InferenceError> {
        let lane = match on {
            RunOn::Lane(i) => self.lanes.get().and_then(|lanes| lanes.get(i)),
            RunOn::Main => None,
        };
        let mut session = match lane {
            Some(lane) => lane.lock().map_err(|_| InferenceError::Run("session lock poisoned".into()))?,
            None => self.session()?,
        };
        self.run_on(&mut session, items, scratch, stop)
    }

    fn run_on(
        &self,
        session: &mut Session,
        items: &[&Prepared],
        scratch: &mut RunScratch,
        stop: Stop<'_>,
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
        let armed = Armed::new(stop, &mut scratch.deadline)?;
        let outputs = run_session(session, name, plan.input.dtype, shape, input, armed.options())
            .map_err(|e| armed.finish(e))?;
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
            let coords = self
                .decoder
                .decode(&outs, geometry.frame_size(), &mut scratch.decode, &mut pred)
                .map_err(InferenceError::Output)?;
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
            let outputs = run_session(&mut session, name, plan.input.dtype, shape, buf, None)?;
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
