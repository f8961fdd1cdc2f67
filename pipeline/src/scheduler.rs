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
//! only once the answer is in), and the queue is first come, first served; a
//! fast camera cannot crowd out a slow one. When frames come faster than the
//! model runs, each camera's frame slot keeps the newest frame and counts
//! the one it replaced (`frames_dropped_busy`).
//!
//! Batching waits only for frames that are on their way: workers say when
//! they start preparing a frame, and the runner holds a batch open (up to
//! `batch_wait`) only while some are. A single camera, or cameras whose
//! frames are not due, never wait for anyone.
//!
//! A hot swap can leave frames prepared for the old version in the queue;
//! each batch holds frames of one version only, so every frame is run by the
//! version it was prepared for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use vigil_inference::{Detector, InferenceError, Prediction, Prepared, RunScratch, Timings};

/// How a model's runner batches.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BatchPolicy {
    /// The most frames one run takes (the model may allow fewer).
    pub max_batch: usize,
    /// How long a batch waits for frames that are being prepared.
    pub wait: Duration,
}

#[derive(Debug)]
struct Job {
    detector: Arc<Detector>,
    prepared: Prepared,
    reply: mpsc::SyncSender<Done>,
}

/// A frame's answer, with its buffers back for the next frame.
#[derive(Debug)]
pub struct Done {
    pub prepared: Prepared,
    pub result: Result<(Prediction, Timings), InferenceError>,
}

/// Counters of one model's runner.
#[derive(Debug, Default)]
pub struct RunnerStats {
    pub runs: AtomicU64,
    pub frames: AtomicU64,
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
    /// its session: that many runs go at once). They end when every
    /// `Submitter` is gone.
    pub fn start(name: &str, policy: BatchPolicy, runners: usize) -> InferenceQueue {
        let (tx, rx) = mpsc::channel();
        let rx = Arc::new(Mutex::new(rx));
        let preparing = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(RunnerStats::default());
        for i in 0..runners.max(1) {
            let runner = Runner {
                rx: rx.clone(),
                preparing: preparing.clone(),
                stats: stats.clone(),
                policy,
                carry: None,
            };
            std::thread::Builder::new()
                .name(format!("run-{name}-{i}"))
                .spawn(move || runner.run())
                .expect("spawning a model runner thread");
        }
        InferenceQueue { tx, preparing, stats }
    }

    /// A handle for one camera worker.
    pub fn submitter(&self) -> Submitter {
        let (reply, answers) = mpsc::sync_channel(1);
        Submitter {
            tx: self.tx.clone(),
            preparing: self.preparing.clone(),
            reply,
            answers,
            announced: std::cell::Cell::new(false),
        }
    }
}

/// One camera's way into the runner: prepare, submit, wait; one frame in
/// flight at a time.
#[derive(Debug)]
pub struct Submitter {
    tx: mpsc::Sender<Job>,
    preparing: Arc<AtomicUsize>,
    reply: mpsc::SyncSender<Done>,
    answers: mpsc::Receiver<Done>,
    /// Counted in `preparing` until the frame is submitted.
    announced: std::cell::Cell<bool>,
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
        let sent = self.tx.send(Job { detector, prepared, reply: self.reply.clone() }).is_ok();
        // After the send: the runner never sees "nobody preparing" and an
        // empty queue while this frame is between the two.
        if self.announced.replace(false) {
            self.preparing.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// The answer for the frame submitted last. `None` when the runner is gone.
    pub fn wait(&self) -> Option<Done> {
        self.answers.recv().ok()
    }
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
}

impl Runner {
    fn run(mut self) {
        let mut scratch = RunScratch::default();
        let mut batch: Vec<Job> = Vec::new();
        loop {
            {
                // One runner gathers at a time; the others are running.
                let shared = self.rx.clone();
                let Ok(rx) = shared.lock() else { return };
                let first = match self.carry.take() {
                    Some(job) => job,
                    None => match rx.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    },
                };
                let limit = first.detector.batch_limit().min(self.policy.max_batch).max(1);
                batch.push(first);
                self.gather(&rx, &mut batch, limit);
            }
            self.execute(&mut batch, &mut scratch);
        }
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

    fn execute(&self, batch: &mut Vec<Job>, scratch: &mut RunScratch) {
        let n = batch.len();
        let detector = batch[0].detector.clone();
        let result = {
            let items: Vec<&Prepared> = batch.iter().map(|j| &j.prepared).collect();
            detector.run_prepared(&items, scratch)
        };
        self.stats.runs.fetch_add(1, Ordering::Relaxed);
        self.stats.frames.fetch_add(n as u64, Ordering::Relaxed);
        match result {
            Ok(predictions) => {
                for (job, r) in batch.drain(..).zip(predictions) {
                    let _ = job.reply.send(Done { prepared: job.prepared, result: Ok(r) });
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in batch.drain(..) {
                    let _ = job.reply.send(Done {
                        prepared: job.prepared,
                        result: Err(InferenceError::Run(message.clone())),
                    });
                }
            }
        }
    }
}
