//! Shared inference: a queue per model, fed by every camera that uses the
//! model, served by one runner thread per copy of the model's session (see
//! `threads.rs`: one copy, or on the CPU one per camera up to the cores).
//!
//! ```text
//!  camera worker ─ prepare (preprocess, in parallel) ─┐
//!  camera worker ─ prepare ───────────────────────────┼─▶ queue ─▶ runner: one session.run
//!  camera worker ─ prepare ───────────────────────────┘            on up to `batch` frames,
//!        ▲                                                        decode each, reply
//!        └──────────────────── prediction ◀────────────────────────┘
//! ```
//!
//! Fairness comes from the shape of it: a worker has at most one frame with
//! the runners (it prepares the next while that one runs, and submits it
//! only once the answer is in; two with lanes, below, where it is the
//! model's only camera), and the queue is first come, first served; a fast
//! camera cannot crowd out a slow one. When frames come faster than the
//! model runs, each camera's frame slot keeps the newest frame and counts
//! the one it replaced (`frames_dropped_busy`).
//!
//! Batching waits only for frames that are on their way: workers say when
//! they start preparing a frame, and the runner holds a batch open (up to
//! `batch_wait`) only while some are. A single camera, or cameras whose
//! frames are not due, never wait for anyone.
//!
//! Lanes (a CPU model with one camera, see `threads.rs`): the camera may
//! have two frames with the runners, and each lane has its runner. While
//! runs on the main session (every thread) keep up with the camera, its
//! frames run there, one at a time; once its frames come faster, they run
//! side by side on the lanes (see `LaneState`). So a camera that keeps up
//! gets the shortest runs, and one that falls behind gets the most runs per
//! second; the answers go back in the order the frames came.
//!
//! A hot swap can leave frames prepared for the old version in the queue;
//! each batch holds frames of one version only, so every frame is run by the
//! version it was prepared for.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use vigil_inference::{Detector, InferenceError, Prediction, Prepared, RunOn, RunScratch, Timings};

/// How a model's runner batches.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BatchPolicy {
    /// The most frames one run takes (the model may allow fewer).
    pub max_batch: usize,
    /// How long a batch waits for frames that are being prepared.
    pub wait: Duration,
    /// A run still going after this is stopped (ONNX Runtime's terminate
    /// flag): its frames fail with `Stopped`, counted, and the runner takes
    /// the next batch. A model that loops on some pictures costs a camera
    /// those frames, never its runner.
    pub run_timeout: Duration,
}

#[derive(Debug)]
struct Job {
    detector: Arc<Detector>,
    prepared: Prepared,
    reply: mpsc::SyncSender<Done>,
    /// The submitter's count of this frame: answers are handed back in it.
    ticket: u64,
    waker: Option<Waker>,
}

impl Job {
    /// Hands the answer back (the worker may have gone: then it is dropped).
    fn answer(self, result: Result<(Prediction, Timings), InferenceError>) {
        let _ = self.reply.send(Done { prepared: self.prepared, result, ticket: self.ticket });
        if let Some(wake) = &self.waker {
            (wake.0)();
        }
    }
}

/// Called after each answer is sent: wakes a worker that waits for either
/// its next frame or an answer.
#[derive(Clone)]
pub struct Waker(Arc<dyn Fn() + Send + Sync>);

impl Waker {
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Waker {
        Waker(Arc::new(wake))
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

/// A frame's answer, with its buffers back for the next frame.
#[derive(Debug)]
pub struct Done {
    pub prepared: Prepared,
    pub result: Result<(Prediction, Timings), InferenceError>,
    ticket: u64,
}

/// Counters of one model's runner.
#[derive(Debug, Default)]
pub struct RunnerStats {
    pub runs: AtomicU64,
    pub frames: AtomicU64,
    /// Runs that went on a lane, beside another (see the module docs).
    pub lane_runs: AtomicU64,
    /// Runs that failed, all causes; of them, those stopped at
    /// `run_timeout` and those whose output did not fit the decoder.
    pub failed_runs: AtomicU64,
    pub stopped_runs: AtomicU64,
    pub output_errors: AtomicU64,
    /// Panics caught in a runner thread; each was logged and the runner
    /// restarted (its batch answered with an error).
    pub panics: AtomicU64,
    /// When runs last succeeded and failed: health's "every run fails".
    pub last: parking_lot::Mutex<RunRecord>,
}

/// The latest outcomes of a model's runs.
#[derive(Debug, Default, Clone)]
pub struct RunRecord {
    pub last_ok: Option<Instant>,
    pub last_failure: Option<(Instant, String)>,
    pub last_panic: Option<(Instant, String)>,
}

impl RunnerStats {
    fn failed(&self, error: &InferenceError) {
        self.failed_runs.fetch_add(1, Ordering::Relaxed);
        match error {
            InferenceError::Stopped { .. } => self.stopped_runs.fetch_add(1, Ordering::Relaxed),
            InferenceError::Output(_) => self.output_errors.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        self.last.lock().last_failure = Some((Instant::now(), error.to_string()));
    }
}

/// Which runs of a laned model may go: one on the main session (every
/// thread), or up to `lanes` side by side, never both; and which of the two
/// the camera needs now.
///
/// Lanes are for a camera whose frames come faster than a main run takes:
/// then they get more frames through. A camera that a main run keeps up
/// with gets the shorter runs, even when a frame now and then has to wait
/// for the one before (it would otherwise sit on the lanes for good, each
/// frame taking a one-thread run: +20 ms at the median for a live 30 fps
/// camera on two cores).
///
/// Onto the lanes: when frames wait for the main copy, on average, more than
/// half a main run (`ENTER_WAIT`; a camera's first `SETTLE_FRAMES` aside). A
/// rate cannot tell this alone: a camera that delivers frames as fast as
/// they are taken (a file, a backlog) sends them exactly as fast as the
/// main runs end, so the time between frames equals a main run's time
/// however much faster the camera could go; but each of its frames waits
/// for nearly the whole run before it. A live camera that keeps up finds
/// the model idle, or near its capacity waits a few milliseconds now and
/// then. (Counting frames that found it busy at all, as a first cut did,
/// sent a live 30 fps camera whose main runs took 91 % of the time between
/// its frames onto the lanes, doubling its median latency.)
///
/// Back: when a main run takes 3 % less than the time between frames (both
/// moving averages), the camera's own rate, which main runs would then keep
/// up with. On the lanes no main run times itself, and the machine's speed
/// drifts, so every `MAIN_PROBE` frames a probe runs two on the main copy
/// (after the lanes empty; see `Probe`), the second timed. It decides as it
/// ends, against the time between frames before it began (waiting for the
/// lanes to empty, it holds up the frames behind it).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct LaneState {
    main: bool,
    side: usize,
    /// Runners holding a frame that could not start yet.
    waiting: usize,
    on_lanes: bool,
    last_arrival: Option<Instant>,
    interval_s: Option<f64>,
    main_run_s: Option<f64>,
    /// Off the lanes: the moving average of how long frames waited for the
    /// main copy, in seconds.
    wait_s: f64,
    /// Where a probe from the lanes stands.
    probe: Probe,
    /// Frames that reached the runners (up to `u32::MAX`).
    arrivals: u32,
    /// Side runs since the last main run.
    since_main: u32,
}

/// A probe is two main runs in a row: the first warms the main copy up (its
/// weights went cold in the caches while the lanes ran, its threads to
/// sleep: a run 10-25 % slower), the second is timed and decides. Each
/// carries the time between frames from before the probe began.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Probe {
    #[default]
    None,
    Warming(Option<f64>),
    Timing(Option<f64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Main,
    Side,
}

/// Weight of the newest sample in the moving averages (about the last ten
/// frames): one slow run in a VM's hiccup must not send a camera that keeps
/// up onto the lanes.
const RATE_WEIGHT: f64 = 0.1;
/// Onto the lanes when frames wait for the main copy, on average, more than
/// this share of a main run: a backlog's frames wait nearly a whole run
/// each; a live camera's near the main copy's capacity now and then a few
/// milliseconds.
const ENTER_WAIT: f64 = 0.5;
/// A camera's first frames count for nothing: ONNX Runtime's first runs are
/// slow and a stream's first frames come in a burst, so every camera would
/// find its model busy (and load its lanes) at the start.
const SETTLE_FRAMES: u32 = 30;
/// Back off them when a main run over the time between frames is below this.
const LEAVE_LANES: f64 = 0.97;
/// On the lanes, a probe every this many frames (see `LaneState`).
const MAIN_PROBE: u32 = 90;

fn average(avg: Option<f64>, sample: f64, weight: f64) -> Option<f64> {
    Some(avg.map_or(sample, |a| a + weight * (sample - a)))
}

impl LaneState {
    /// A frame reached the runners at `now`.
    fn arrive(&mut self, now: Instant) {
        if let Some(last) = self.last_arrival {
            self.interval_s = average(self.interval_s, (now - last).as_secs_f64(), RATE_WEIGHT);
        }
        self.last_arrival = Some(now);
        self.arrivals = self.arrivals.saturating_add(1);
    }

    /// A frame began its run `waited` after it reached the runners.
    fn started(&mut self, waited: Duration) {
        if self.on_lanes || self.arrivals <= SETTLE_FRAMES {
            return;
        }
        self.wait_s += RATE_WEIGHT * (waited.as_secs_f64() - self.wait_s);
        if let Some(run) = self.main_run_s
            && self.wait_s > ENTER_WAIT * run
        {
            self.on_lanes = true;
            self.since_main = 0;
        }
    }

    /// Where a frame taken now runs, if it can start at all (`None`: it
    /// waits, counted in `waiting`). `waited`: it was refused before. A
    /// frame that arrives while another waits must not start ahead of it.
    fn try_begin(&mut self, waited: bool, lanes: usize) -> Option<Mode> {
        let lanes_now = self.on_lanes && self.since_main < MAIN_PROBE;
        let blocked = self.main
            || self.side >= lanes
            // A main run waits for the lanes to empty.
            || (!lanes_now && self.side > 0)
            || (!waited && self.waiting > 0);
        if blocked {
            if !waited {
                self.waiting += 1;
            }
            return None;
        }
        if waited {
            self.waiting -= 1;
        }
        if lanes_now {
            self.side += 1;
            self.since_main += 1;
            Some(Mode::Side)
        } else {
            self.main = true;
            self.probe = match self.probe {
                _ if !self.on_lanes => Probe::None,
                Probe::None => Probe::Warming(self.interval_s),
                Probe::Warming(before) | Probe::Timing(before) => Probe::Timing(before),
            };
            // After the warm-up the next frame runs on the main copy too.
            if !matches!(self.probe, Probe::Warming(_)) {
                self.since_main = 0;
            }
            Some(Mode::Main)
        }
    }

    fn end(&mut self, mode: Mode, ran: Duration) {
        match mode {
            Mode::Main => {
                self.main = false;
                match std::mem::take(&mut self.probe) {
                    // A cold run says nothing of the main copy's speed.
                    warming @ Probe::Warming(_) => self.probe = warming,
                    Probe::Timing(before) => {
                        // Its own time: the average is as old as the lanes
                        // (and may hold what sent the frames there).
                        let run = ran.as_secs_f64();
                        self.main_run_s = Some(run);
                        if let Some(interval) = before
                            && run < LEAVE_LANES * interval
                        {
                            self.on_lanes = false;
                            self.wait_s = 0.0;
                        }
                    }
                    Probe::None => self.main_run_s = average(self.main_run_s, ran.as_secs_f64(), RATE_WEIGHT),
                }
            }
            Mode::Side => self.side -= 1,
        }
    }
}

#[derive(Debug)]
struct LaneGate {
    lanes: usize,
    state: Mutex<LaneState>,
    changed: Condvar,
}

impl LaneGate {
    fn begin(&self) -> Mode {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let arrived = Instant::now();
        state.arrive(arrived);
        let mut waited = false;
        loop {
            if let Some(mode) = state.try_begin(waited, self.lanes) {
                state.started(if waited { arrived.elapsed() } else { Duration::ZERO });
                // A frame that came while this one waited may start beside it.
                if state.waiting > 0 {
                    self.changed.notify_all();
                }
                return mode;
            }
            waited = true;
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn end(&self, mode: Mode, ran: Duration) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).end(mode, ran);
        self.changed.notify_all();
    }
}

/// The cameras' side of one model's runner.
#[derive(Debug)]
pub struct InferenceQueue {
    tx: mpsc::Sender<Job>,
    preparing: Arc<AtomicUsize>,
    pub stats: Arc<RunnerStats>,
}

impl InferenceQueue {
    /// Starts `runners` runner threads for model `name` (one per copy of
    /// its session: that many runs go at once), or with `lanes` > 1 one per
    /// lane. They end when every `Submitter` is gone. `backlog`: the camera
    /// always has its next frame ready (a recording analysed frame by
    /// frame), so its frames start on the lanes rather than wait to show it.
    pub fn start(
        name: &str,
        policy: BatchPolicy,
        runners: usize,
        lanes: usize,
        backlog: bool,
    ) -> InferenceQueue {
        let (tx, rx) = mpsc::channel();
        let rx = Arc::new(Mutex::new(rx));
        let preparing = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(RunnerStats::default());
        let state = LaneState { on_lanes: backlog, ..LaneState::default() };
        let gate = (lanes > 1)
            .then(|| Arc::new(LaneGate { lanes, state: Mutex::new(state), changed: Condvar::new() }));
        let runners = if lanes > 1 { lanes } else { runners.max(1) };
        for i in 0..runners {
            let runner = Runner {
                rx: rx.clone(),
                preparing: preparing.clone(),
                stats: stats.clone(),
                policy,
                carry: None,
                lane: i,
                gate: gate.clone(),
            };
            std::thread::Builder::new()
                .name(format!("run-{name}-{i}"))
                .spawn(move || runner.run())
                .expect("spawning a model runner thread");
        }
        InferenceQueue { tx, preparing, stats }
    }

    /// A handle for one camera worker that will have at most `in_flight`
    /// frames with the runners. `waker` is called after each answer.
    pub fn submitter(&self, in_flight: usize, waker: Option<Waker>) -> Submitter {
        // Room for every answer: a runner never waits for the worker.
        let (reply, answers) = mpsc::sync_channel(in_flight.max(1));
        Submitter {
            tx: self.tx.clone(),
            preparing: self.preparing.clone(),
            reply,
            answers,
            announced: Cell::new(false),
            submitted: Cell::new(0),
            answered: Cell::new(0),
            early: RefCell::default(),
            abandoned: RefCell::default(),
            waker,
        }
    }
}

/// One camera's way into the runner: prepare, submit, wait for the answers
/// in the order the frames went in.
#[derive(Debug)]
pub struct Submitter {
    tx: mpsc::Sender<Job>,
    preparing: Arc<AtomicUsize>,
    reply: mpsc::SyncSender<Done>,
    answers: mpsc::Receiver<Done>,
    /// Counted in `preparing` until the frame is submitted.
    announced: Cell<bool>,
    /// Frames submitted and answers handed out so far: the next answer due
    /// is ticket `answered`.
    submitted: Cell<u64>,
    answered: Cell<u64>,
    /// Answers that came before an older frame's (lanes finish in any order).
    early: RefCell<Vec<Done>>,
    /// Frames given up on (no answer by their deadline) whose answers have
    /// not come yet: dropped when they do.
    abandoned: RefCell<std::collections::BTreeSet<u64>>,
    waker: Option<Waker>,
}

impl Submitter {
    /// Runs `prepare` (preprocessing, on this thread). With `announce`, the
    /// runner knows a frame is on its way meanwhile and may hold a batch
    /// open for it.
    pub fn prepare(
        &self,
        detector: &Detector,
        prepared: &mut Prepared,
        announce: bool,
        prepare: impl FnOnce(&Detector, &mut Prepared),
    ) {
        if announce && !self.announced.replace(true) {
            self.preparing.fetch_add(1, Ordering::SeqCst);
        }
        prepare(detector, prepared);
    }

    /// Hands a prepared frame to the runner. `false` when the runner is gone.
    pub fn submit(&self, detector: Arc<Detector>, prepared: Prepared) -> bool {
        let ticket = self.submitted.get();
        let job = Job { detector, prepared, reply: self.reply.clone(), ticket, waker: self.waker.clone() };
        let sent = self.tx.send(job).is_ok();
        self.submitted.set(ticket + 1);
        // After the send: the runner never sees "nobody preparing" and an
        // empty queue while this frame is between the two.
        if self.announced.replace(false) {
            self.preparing.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Frames with the runner now: submitted, their answers not yet back
    /// (those given up on included: they still hold the runner).
    pub fn running(&self) -> usize {
        (self.submitted.get() - self.answered.get()) as usize - self.early.borrow().len()
            + self.abandoned.borrow().len()
    }

    /// Files an answer that came: one given up on is dropped.
    fn receive(&self, done: Done) {
        if !self.abandoned.borrow_mut().remove(&done.ticket) {
            self.early.borrow_mut().push(done);
        }
    }

    /// Waits until some frame's answer is back (kept for [`Submitter::wait`]):
    /// its lane is free for the next frame, whichever frame it was. `false`
    /// when the runner is gone.
    pub fn wait_any(&self) -> bool {
        matches!(self.wait_any_until(None), Wait::Answered)
    }

    /// [`Submitter::wait_any`], giving up at `deadline`.
    pub fn wait_any_until(&self, deadline: Option<Instant>) -> Wait {
        let got = match deadline {
            None => self.answers.recv().map_err(|_| Wait::Gone),
            Some(at) => {
                self.answers.recv_timeout(at.saturating_duration_since(Instant::now())).map_err(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => Wait::TimedOut,
                    mpsc::RecvTimeoutError::Disconnected => Wait::Gone,
                })
            }
        };
        match got {
            Ok(done) => {
                self.receive(done);
                Wait::Answered
            }
            Err(w) => w,
        }
    }

    /// Whether the oldest frame's answer is back, so [`Submitter::wait`]
    /// will not block.
    pub fn ready(&self) -> bool {
        while let Ok(done) = self.answers.try_recv() {
            self.receive(done);
        }
        let due = self.answered.get();
        self.early.borrow().iter().any(|d| d.ticket == due)
    }

    /// The answer for the oldest frame not yet answered. `None` when the
    /// runner is gone.
    pub fn wait(&self) -> Option<Done> {
        self.wait_until(None).ok()
    }

    /// [`Submitter::wait`], giving up at `deadline`: then that frame is
    /// given up on ([`Wait::TimedOut`]; its answer, if it ever comes, is
    /// dropped, and it counts in [`Submitter::running`] until then) and
    /// the next call waits for the frame after it.
    pub fn wait_until(&self, deadline: Option<Instant>) -> Result<Done, Wait> {
        let due = self.answered.get();
        loop {
            {
                let mut early = self.early.borrow_mut();
                if let Some(i) = early.iter().position(|d| d.ticket == due) {
                    let done = early.swap_remove(i);
                    self.answered.set(due + 1);
                    return Ok(done);
                }
            }
            match self.wait_any_until(deadline) {
                Wait::Answered => {}
                Wait::TimedOut => {
                    self.abandoned.borrow_mut().insert(due);
                    self.answered.set(due + 1);
                    return Err(Wait::TimedOut);
                }
                Wait::Gone => return Err(Wait::Gone),
            }
        }
    }
}

/// How a wait for an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Answered,
    /// The deadline passed first.
    TimedOut,
    /// The runner is gone.
    Gone,
}

impl Drop for Submitter {
    fn drop(&mut self) {
        if self.announced.get() {
            self.preparing.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[derive(Debug)]
struct Runner {
    /// Shared by the model's runners: whichever is free takes the next batch.
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    preparing: Arc<AtomicUsize>,
    stats: Arc<RunnerStats>,
    policy: BatchPolicy,
    /// A frame for another model version than the batch being gathered: it
    /// opens the next one.
    carry: Option<Job>,
    /// This runner's lane, when the model has lanes (`gate`).
    lane: usize,
    gate: Option<Arc<LaneGate>>,
}

impl Runner {
    /// Serves batches until every submitter is gone. A panic anywhere in a
    /// step (a decoder, ONNX Runtime's bindings, a waker) is caught: logged,
    /// counted, the batch answered with an error, the scratch buffers thrown
    /// away, and the runner goes on with the next batch (a restart in place:
    /// a dead runner would leave its cameras waiting and health saying ok).
    fn run(mut self) {
        let mut scratch = RunScratch::default();
        let mut batch: Vec<Job> = Vec::new();
        loop {
            let mut begun: Option<(Mode, Instant)> = None;
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.step(&mut batch, &mut scratch, &mut begun)
            }));
            match step {
                Ok(true) => {}
                Ok(false) => return,
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    let n = self.stats.panics.fetch_add(1, Ordering::Relaxed) + 1;
                    self.stats.last.lock().last_panic = Some((Instant::now(), message.clone()));
                    tracing::error!(
                        runner = self.lane,
                        panic = %message,
                        panics = n,
                        frames = batch.len(),
                        "model runner panicked; its frames fail and it restarts"
                    );
                    if let (Some(gate), Some((mode, t0))) = (&self.gate, begun) {
                        gate.end(mode, t0.elapsed());
                    }
                    scratch = RunScratch::default();
                    let error = InferenceError::Run(format!("the model runner panicked: {message}"));
                    for job in batch.drain(..) {
                        // A waker that panics again must not take the runner with it.
                        let e = error.clone();
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.answer(Err(e))));
                    }
                }
            }
        }
    }

    /// One batch: gather, run, answer. `false` when every submitter is gone.
    fn step(
        &mut self,
        batch: &mut Vec<Job>,
        scratch: &mut RunScratch,
        begun: &mut Option<(Mode, Instant)>,
    ) -> bool {
        {
            // One runner gathers at a time; the others are running. A
            // runner that panicked while gathering leaves the lock poisoned
            // but the queue intact.
            let shared = self.rx.clone();
            let rx = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let first = match self.carry.take() {
                Some(job) => job,
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                },
            };
            // Lanes run one frame each: the camera's next frame goes
            // beside this one, not into its batch.
            let limit = match self.gate {
                Some(_) => 1,
                None => first.detector.batch_limit().min(self.policy.max_batch).max(1),
            };
            batch.push(first);
            self.gather(&rx, batch, limit);
        }
        match self.gate.clone() {
            Some(gate) => {
                let mode = gate.begin();
                let t0 = Instant::now();
                *begun = Some((mode, t0));
                let on = match mode {
                    Mode::Main => RunOn::Main,
                    Mode::Side => {
                        // Frames come faster than main runs: the lanes
                        // load (once, in the background) and take them.
                        batch[0].detector.request_lanes();
                        RunOn::Lane(self.lane)
                    }
                };
                self.execute(batch, scratch, on);
                *begun = None;
                gate.end(mode, t0.elapsed());
            }
            None => self.execute(batch, scratch, RunOn::Main),
        }
        true
    }

    /// Adds queued frames of the same version, and waits (up to the
    /// deadline) for frames that are being prepared right now.
    fn gather(&mut self, rx: &mpsc::Receiver<Job>, batch: &mut Vec<Job>, limit: usize) {
        let deadline = Instant::now() + self.policy.wait;
        while batch.len() < limit {
            let next = match rx.try_recv() {
                Ok(job) => job,
                Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => {
                    if self.preparing.load(Ordering::SeqCst) == 0 {
                        return;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return;
                    }
                    match rx.recv_timeout(deadline - now) {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                }
            };
            if Arc::ptr_eq(&next.detector, &batch[0].detector) {
                batch.push(next);
            } else {
                self.carry = Some(next);
                return;
            }
        }
    }

    fn execute(&self, batch: &mut Vec<Job>, scratch: &mut RunScratch, on: RunOn) {
        let n = batch.len();
        let detector = batch[0].detector.clone();
        let deadline = Instant::now() + self.policy.run_timeout;
        let result = {
            let items: Vec<&Prepared> = batch.iter().map(|j| &j.prepared).collect();
            detector.run_prepared_until(&items, scratch, on, deadline)
        };
        self.stats.runs.fetch_add(1, Ordering::Relaxed);
        if on != RunOn::Main && detector.lanes_ready() {
            self.stats.lane_runs.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.frames.fetch_add(n as u64, Ordering::Relaxed);
        // Each job leaves the batch only as it is answered: after a panic
        // (in a waker, say) the rest are still there to be answered.
        match result {
            Ok(predictions) => {
                self.stats.last.lock().last_ok = Some(Instant::now());
                for r in predictions {
                    if batch.is_empty() {
                        break;
                    }
                    batch.remove(0).answer(Ok(r));
                }
                let short = InferenceError::Run("the model gave fewer answers than frames".into());
                while !batch.is_empty() {
                    batch.remove(0).answer(Err(short.clone()));
                }
            }
            Err(e) => {
                self.stats.failed(&e);
                while !batch.is_empty() {
                    batch.remove(0).answer(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_inference::{ImageView, ModelOptions};

    /// How a camera's frames reach the runners in `simulate`.
    #[derive(Clone, Copy)]
    enum Camera {
        /// A live camera: a frame every so often; while two are with the
        /// runners the newest waits in the camera's slot.
        Live(Duration),
        /// Frames always ready (a file read as fast as it goes, a backlog):
        /// the next one 1 ms (its preprocessing) after either of the two
        /// with the runners is answered.
        Ready,
    }

    /// `frames` frames of `camera` through a gate of two lanes, the i-th
    /// taking `times(i)` (on the main copy, on a lane), as the camera worker and the
    /// runners drive it (up to two frames with the runners; a refused frame
    /// waits for a run to end): the modes the frames ran in, in order.
    fn simulate(
        s: &mut LaneState,
        t: &mut Instant,
        camera: Camera,
        times: impl Fn(usize) -> (Duration, Duration),
        frames: usize,
    ) -> Vec<Mode> {
        let mut running: Vec<(Instant, Mode, Duration)> = Vec::new();
        // The arrival times of the frames refused so far, in order.
        let mut waiting = std::collections::VecDeque::new();
        let (mut arrived, mut started) = (0usize, Vec::new());
        let mut next_live = *t;
        let mut held = false; // a live frame waits in the slot
        let mut ready_at = *t;
        let start = |m: Mode, at: Instant, started: &mut Vec<Mode>, running: &mut Vec<_>| {
            let (main, side) = times(started.len());
            // A main run right after side runs finds the main copy cold.
            let cold = started.last() == Some(&Mode::Side);
            let took = match m {
                Mode::Main if cold => main * 5 / 4,
                Mode::Main => main,
                Mode::Side => side,
            };
            running.push((at + took, m, took));
            started.push(m);
        };
        while started.len() < frames || !running.is_empty() {
            let with_runners = running.len() + waiting.len();
            let arrival = match camera {
                _ if arrived == frames => None,
                Camera::Live(_) if held && with_runners < 2 => Some(*t),
                Camera::Live(_) if held => None,
                Camera::Live(every) => Some(next_live + every),
                Camera::Ready => (with_runners < 2).then_some(ready_at.max(*t)),
            };
            let end = running.iter().map(|r| r.0).min();
            match (arrival, end) {
                (None, None) => unreachable!("frames left but nothing to do"),
                (Some(at), end) if end.is_none_or(|e| at < e) => {
                    *t = at;
                    if let Camera::Live(every) = camera {
                        if held {
                            // The newest frame in the slot goes; those it
                            // replaced meanwhile were dropped.
                            while next_live + every <= at {
                                next_live += every;
                            }
                            held = false;
                        } else {
                            next_live += every;
                            if with_runners >= 2 {
                                held = true;
                                continue;
                            }
                        }
                    }
                    arrived += 1;
                    s.arrive(at);
                    match s.try_begin(false, 2) {
                        Some(m) => {
                            s.started(Duration::ZERO);
                            start(m, at, &mut started, &mut running);
                        }
                        None => waiting.push_back(at),
                    }
                }
                (_, end) => {
                    let e = end.expect("a run ends first");
                    *t = e;
                    let i = running.iter().position(|r| r.0 == e).expect("the run that ends");
                    let (_, m, took) = running.remove(i);
                    s.end(m, took);
                    ready_at = e + Duration::from_millis(1);
                    while let Some(&came) = waiting.front() {
                        let Some(m) = s.try_begin(true, 2) else { break };
                        waiting.pop_front();
                        s.started(e - came);
                        start(m, e, &mut started, &mut running);
                    }
                }
            }
        }
        started
    }

    fn share_on_lanes(modes: &[Mode]) -> f64 {
        modes.iter().filter(|m| **m == Mode::Side).count() as f64 / modes.len() as f64
    }

    #[test]
    fn frames_go_on_lanes_only_while_they_queue_for_main_runs() {
        let ms = Duration::from_millis;
        // Two cores: a main run 27 ms, a side run (one thread) 48 ms, so two
        // side by side take a frame every 24 ms.
        let fast = |_| (ms(27), ms(48));
        let mut s = LaneState::default();
        let mut t = Instant::now();
        // Its first frames come in a burst to slow first runs: they queue,
        // but a camera's start sends no camera onto the lanes.
        let start = simulate(&mut s, &mut t, Camera::Ready, |_| (ms(46), ms(80)), 20);
        assert!(start.iter().all(|m| *m == Mode::Main), "{start:?}");
        // A live camera at 10 fps: every thread, every time.
        let live10 = simulate(&mut s, &mut t, Camera::Live(ms(100)), fast, 30);
        assert!(live10.iter().all(|m| *m == Mode::Main), "{live10:?}");
        // At 30 fps, a run slowed to 60 ms by a hiccup makes the next two
        // frames wait, but does not send a camera that keeps up onto the lanes.
        let hiccup = |i| if i == 20 { (ms(60), ms(48)) } else { (ms(27), ms(48)) };
        let live30 = simulate(&mut s, &mut t, Camera::Live(ms(33)), hiccup, 40);
        assert!(live30.iter().all(|m| *m == Mode::Main), "{live30:?}");
        assert!(s.wait_s > 0.0, "frames waited for the slow run");
        // The machine slows down (main runs 36 ms): the 30 fps frames queue
        // and soon run on the lanes.
        let slow = simulate(&mut s, &mut t, Camera::Live(ms(33)), |_| (ms(36), ms(60)), 60);
        assert_eq!(slow.iter().position(|m| *m == Mode::Side).map(|i| i < 15), Some(true), "{slow:?}");
        assert!(share_on_lanes(&slow[15..]) > 0.9, "{slow:?}");
        // It speeds up again: the next probe's timed main run keeps up with
        // the camera (its cold first run, 34 ms, would not), and the frames
        // go back to every thread.
        let again = simulate(&mut s, &mut t, Camera::Live(ms(33)), fast, 2 * MAIN_PROBE as usize);
        assert!(again[again.len() - 30..].iter().all(|m| *m == Mode::Main), "{again:?}");
    }

    #[test]
    fn a_camera_with_frames_always_ready_runs_on_the_lanes() {
        // Its frames come exactly as fast as the main runs end, so no rate
        // says it falls behind; each finds the one before still running.
        let ms = Duration::from_millis;
        let mut s = LaneState::default();
        let mut t = Instant::now();
        let modes = simulate(&mut s, &mut t, Camera::Ready, |_| (ms(27), ms(48)), 300);
        let first = modes.iter().position(|m| *m == Mode::Side).expect("onto the lanes");
        assert!(first < SETTLE_FRAMES as usize + 12, "{modes:?}");
        // And it stays there: its probes find main runs slower than its
        // frames come on the lanes.
        assert!(share_on_lanes(&modes[first..]) > 0.95, "{modes:?}");
        let mains = modes[first..].iter().filter(|m| **m == Mode::Main).count();
        let expected = 2 * ((modes.len() - first) / (MAIN_PROBE as usize + 2));
        assert!(mains.abs_diff(expected) <= 2, "{mains} main runs, two every MAIN_PROBE: {modes:?}");
    }

    #[test]
    fn runs_never_mix_and_a_waiting_frame_keeps_its_turn() {
        let mut s = LaneState::default();
        assert_eq!(s.try_begin(false, 2), Some(Mode::Main));
        // Nothing starts beside a main run: the next frame waits for it.
        assert_eq!(s.try_begin(false, 2), None);
        // A frame that comes while one waits does not start ahead of it.
        s.end(Mode::Main, Duration::from_millis(27));
        assert_eq!(s.try_begin(false, 2), None);
        assert_eq!(s.try_begin(true, 2), Some(Mode::Main), "the waiter's turn");
        s.end(Mode::Main, Duration::from_millis(27));
        assert_eq!(s.try_begin(true, 2), Some(Mode::Main));
        s.end(Mode::Main, Duration::from_millis(27));
        assert_eq!(s.waiting, 0);

        // On the lanes: up to two side by side, then wait.
        s.on_lanes = true;
        assert_eq!(s.try_begin(false, 2), Some(Mode::Side));
        assert_eq!(s.try_begin(false, 2), Some(Mode::Side));
        assert_eq!(s.try_begin(false, 2), None);
        // Leaving the lanes: a main run waits until both are done.
        s.on_lanes = false;
        s.end(Mode::Side, Duration::from_millis(50));
        assert_eq!(s.try_begin(true, 2), None);
        s.end(Mode::Side, Duration::from_millis(50));
        assert_eq!(s.try_begin(true, 2), Some(Mode::Main));
        assert_eq!((s.main, s.side, s.waiting), (true, 0, 0));
    }

    /// A white disc on a dark 640x480 frame, its centre at x.
    fn frame(x: f32) -> Vec<u8> {
        let (w, h) = (640usize, 480usize);
        let mut rgb = vec![10u8; w * h * 3];
        for py in 0..h {
            for px in 0..w {
                if (px as f32 - x).powi(2) + (py as f32 - 240.0).powi(2) <= 400.0 {
                    rgb[(py * w + px) * 3..][..3].fill(240);
                }
            }
        }
        rgb
    }

    /// One camera, two frames with the runners at a time, as the camera
    /// worker submits them: the answers come back in the order the frames
    /// went in, each the answer for its own frame, lanes and all.
    #[test]
    fn with_lanes_answers_come_back_in_frame_order() {
        vigil_inference::runtime::init().expect("ONNX Runtime (deploy/bootstrap.sh installs it)");
        let model = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ball/ball.onnx");
        let detector = Arc::new(
            Detector::load("ball", &model, ModelOptions { intra_threads: 2, lanes: 2, ..Default::default() })
                .expect("ball model"),
        );
        detector.load_lanes().expect("lanes");
        let queue = InferenceQueue::start(
            "ball",
            BatchPolicy { max_batch: 1, wait: Duration::ZERO, run_timeout: Duration::from_secs(10) },
            1,
            detector.lanes(),
            true,
        );
        // On the lanes from the first frame, as a backlog starts (whether
        // this tiny model's frames wait long enough to go there is the rule's
        // business, tested above): the order of the answers is what this checks.
        let submitter = queue.submitter(2, None);
        let positions: Vec<f32> = (0..8).map(|i| 60.0 + 70.0 * i as f32).collect();
        let frames: Vec<Vec<u8>> = positions.iter().map(|&x| frame(x)).collect();
        let frames_run = 60;
        let mut spare: Vec<Prepared> = (0..3).map(|_| Prepared::default()).collect();
        let mut sent = std::collections::VecDeque::new();
        let mut answered = Vec::new();
        let mut check = |done: Done, x: f32| {
            let (pred, _) = done.result.expect("run");
            assert_eq!(pred.detections.len(), 1, "{pred:?}");
            let centre = (pred.detections[0].bbox.x1 + pred.detections[0].bbox.x2) / 2.0;
            assert!((centre - x).abs() < 4.0, "the answer for the disc at {x} found one at {centre}");
            answered.push(x);
            done.prepared
        };
        for n in 0..frames_run {
            let x = positions[n % positions.len()];
            let view = ImageView::new(&frames[n % frames.len()], 640, 480, 640 * 3).expect("view");
            let mut prepared = match spare.pop() {
                Some(p) => p,
                None => {
                    let done = submitter.wait().expect("answer");
                    check(done, sent.pop_front().expect("sent"))
                }
            };
            submitter.prepare(&detector, &mut prepared, false, |d, p| d.prepare(&view, p));
            while submitter.running() >= 2 {
                assert!(submitter.wait_any());
            }
            assert!(submitter.submit(detector.clone(), prepared));
            sent.push_back(x);
            while !sent.is_empty() && submitter.ready() {
                let done = submitter.wait().expect("answer");
                spare.push(check(done, sent.pop_front().expect("sent")));
            }
        }
        while let Some(x) = sent.pop_front() {
            let done = submitter.wait().expect("answer");
            spare.push(check(done, x));
        }
        let expected: Vec<f32> = (0..frames_run).map(|n| positions[n % positions.len()]).collect();
        assert_eq!(answered, expected, "answers in frame order");
        let (runs, lane_runs) =
            (queue.stats.runs.load(Ordering::Relaxed), queue.stats.lane_runs.load(Ordering::Relaxed));
        assert_eq!(runs, frames_run as u64);
        // All but the probes' runs went side by side.
        assert!(lane_runs >= runs - 4, "{lane_runs} of {runs} runs on a lane");
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/misbehaving").join(name)
    }

    fn policy(run_timeout: Duration) -> BatchPolicy {
        BatchPolicy { max_batch: 1, wait: Duration::ZERO, run_timeout }
    }

    #[test]
    fn a_runner_that_panics_is_counted_and_restarted_and_goes_on_serving() {
        vigil_inference::runtime::init().expect("ONNX Runtime (deploy/bootstrap.sh installs it)");
        let model = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ball/ball.onnx");
        let detector = Arc::new(
            Detector::load("ball", &model, ModelOptions { intra_threads: 1, ..Default::default() })
                .expect("ball"),
        );
        let queue = InferenceQueue::start("ball", policy(Duration::from_secs(10)), 1, 0, false);
        // The waker runs on the runner thread after an answer: one that
        // panics once is a real panic in the runner, wherever it came from.
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let trigger = armed.clone();
        let submitter = queue.submitter(
            1,
            Some(Waker::new(move || {
                if trigger.swap(false, Ordering::SeqCst) {
                    panic!("a waker that panics once");
                }
            })),
        );
        let img = frame(320.0);
        let view = ImageView::new(&img, 640, 480, 640 * 3).expect("view");
        for i in 0..3 {
            let mut p = Prepared::default();
            submitter.prepare(&detector, &mut p, false, |d, p| d.prepare(&view, p));
            assert!(submitter.submit(detector.clone(), p), "the runner takes frame {i}");
            let done =
                submitter.wait_until(Some(Instant::now() + Duration::from_secs(30))).expect("an answer");
            let (pred, _) = done.result.expect("a prediction");
            assert_eq!(pred.detections.len(), 1, "frame {i}: {pred:?}");
        }
        assert!(!armed.load(Ordering::SeqCst), "the waker panicked");
        assert_eq!(queue.stats.panics.load(Ordering::Relaxed), 1);
        assert_eq!(queue.stats.runs.load(Ordering::Relaxed), 3);
        let record = queue.stats.last.lock().clone();
        assert!(record.last_panic.is_some_and(|(_, m)| m.contains("panics once")));
    }

    #[test]
    fn a_run_past_its_timeout_is_stopped_and_an_answer_late_for_its_worker_is_given_up() {
        vigil_inference::runtime::init().expect("ONNX Runtime (deploy/bootstrap.sh installs it)");
        let detector = Arc::new(
            Detector::load("loop", &fixture("endless_when_bright.onnx"), ModelOptions::default())
                .expect("loads: its test run is on a dark frame"),
        );
        let queue = InferenceQueue::start("loop", policy(Duration::from_millis(1500)), 1, 0, false);
        let submitter = queue.submitter(1, None);
        let prepare = |v: u8| {
            let img = vec![v; 32 * 32 * 3];
            let view = ImageView::new(&img, 32, 32, 32 * 3).expect("view");
            let mut p = Prepared::default();
            detector.prepare(&view, &mut p);
            p
        };
        // A bright frame loops: the worker gives its answer up at its own
        // deadline, and the frame still counts as with the runner.
        assert!(submitter.submit(detector.clone(), prepare(250)));
        let t0 = Instant::now();
        let late = submitter.wait_until(Some(t0 + Duration::from_millis(200)));
        assert!(matches!(late, Err(Wait::TimedOut)), "{late:?}");
        assert!(t0.elapsed() < Duration::from_secs(1), "gave up on time: {:?}", t0.elapsed());
        assert_eq!(submitter.running(), 1);
        // The runner stops the run at its timeout; that answer is dropped.
        assert_eq!(submitter.wait_any_until(Some(t0 + Duration::from_secs(10))), Wait::Answered);
        assert!(t0.elapsed() >= Duration::from_millis(1400), "stopped at its timeout: {:?}", t0.elapsed());
        assert_eq!(submitter.running(), 0);
        assert_eq!(queue.stats.stopped_runs.load(Ordering::Relaxed), 1);
        assert!(queue.stats.last.lock().last_failure.as_ref().is_some_and(|(_, e)| e.contains("stopped")));
        // The runner serves the next frame.
        assert!(submitter.submit(detector.clone(), prepare(10)));
        let done = submitter.wait_until(Some(Instant::now() + Duration::from_secs(10))).expect("answered");
        assert!(done.result.is_ok(), "{:?}", done.result);
    }
}
