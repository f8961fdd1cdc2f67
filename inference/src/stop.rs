//! Stopping a model run from outside it: a caller's cancel handle, or a
//! deadline.
//!
//! ```text
//!  caller ──cancel()──────────────┐
//!                                 ▼
//!  deadline watcher thread ──► RunOptions terminate flag ──► ONNX Runtime checks it
//!  (one per process, sleeps        (per run: RunCancel)          before every node, also
//!   until the next deadline)                                     inside Loop bodies
//! ```
//!
//! ONNX Runtime cannot be interrupted any other way: a model with a `Loop` of
//! 10^12 trips keeps its thread forever. Its terminate flag ends the run at
//! the next node, within microseconds, with an error; the session stays
//! usable. One watcher thread serves every deadline, so a run with a
//! deadline costs a lock and a condition-variable notify, not a thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ort::session::RunOptions;

use crate::InferenceError;

/// Stops runs from another thread: a run given this handle
/// ([`crate::Detector::run_prepared_cancellable`]) ends soon after
/// [`RunCancel::cancel`] with [`InferenceError::Stopped`]. Once cancelled it
/// stays cancelled (every later run given it stops at once); make a new one
/// for new runs. Cheap to clone: clones share one flag.
#[derive(Debug, Clone)]
pub struct RunCancel {
    inner: Arc<Flag>,
}

struct Flag {
    options: RunOptions,
    /// Set with the terminate flag: whether a failed run was stopped.
    stopped: AtomicBool,
}

impl std::fmt::Debug for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flag").field("stopped", &self.stopped).finish_non_exhaustive()
    }
}

impl Flag {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Err(e) = self.options.terminate() {
            tracing::warn!(error = %e, "ONNX Runtime refused to stop a run");
        }
    }
}

impl RunCancel {
    pub fn new() -> Result<RunCancel, InferenceError> {
        crate::runtime::init()?;
        let options = RunOptions::new().map_err(|e| InferenceError::Runtime(e.to_string()))?;
        Ok(RunCancel { inner: Arc::new(Flag { options, stopped: AtomicBool::new(false) }) })
    }

    /// Stops the runs using this handle now and any started later. Returns
    /// at once; the run ends at its next operator.
    pub fn cancel(&self) {
        self.inner.stop();
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    pub(crate) fn options(&self) -> &RunOptions {
        &self.inner.options
    }

    /// Makes a handle that was stopped usable again. Only for handles this
    /// crate owns and reuses between runs (a deadline's), never a caller's.
    fn rearm(&self) {
        if self.inner.stopped.swap(false, Ordering::SeqCst)
            && let Err(e) = self.inner.options.unterminate()
        {
            tracing::warn!(error = %e, "ONNX Runtime could not clear a run's stop flag");
        }
    }
}

/// How a run may be stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop<'a> {
    /// It runs to the end, however long that is.
    Never,
    /// It is stopped at `Instant` (the `Duration` is its length, for the message).
    Deadline(Instant, Duration),
    /// It is stopped when the caller cancels.
    Handle(&'a RunCancel),
}

/// A run's stop handle, while the run goes; created from a [`Stop`].
pub(crate) struct Armed<'a> {
    cancel: Option<&'a RunCancel>,
    watch: Option<Watch>,
    why: &'static str,
    limit: Option<Duration>,
    start: Instant,
}

impl<'a> Armed<'a> {
    /// Arms `stop`; a deadline uses `reusable` (the caller's scratch handle),
    /// made on first use.
    pub(crate) fn new(
        stop: Stop<'a>,
        reusable: &'a mut Option<RunCancel>,
    ) -> Result<Armed<'a>, InferenceError> {
        let start = Instant::now();
        Ok(match stop {
            Stop::Never => Armed { cancel: None, watch: None, why: "", limit: None, start },
            Stop::Handle(c) => {
                Armed { cancel: Some(c), watch: None, why: "it was cancelled", limit: None, start }
            }
            Stop::Deadline(at, limit) => {
                if reusable.is_none() {
                    *reusable = Some(RunCancel::new()?);
                }
                let cancel =
                    reusable.as_ref().ok_or_else(|| InferenceError::Runtime("no run options".into()))?;
                let watch = watch(at, cancel.inner.clone())?;
                Armed { cancel: Some(cancel), watch: Some(watch), why: "", limit: Some(limit), start }
            }
        })
    }

    pub(crate) fn options(&self) -> Option<&'a RunOptions> {
        self.cancel.map(RunCancel::options)
    }

    /// The run has returned: stops watching its deadline and, when it failed
    /// because it was stopped, says so.
    pub(crate) fn finish(mut self, e: InferenceError) -> InferenceError {
        let stopped = self.settle();
        if !stopped {
            return e;
        }
        let after = self.start.elapsed();
        let why = match self.limit {
            Some(limit) => format!("it ran past its limit of {limit:.1?}"),
            None => self.why.to_owned(),
        };
        InferenceError::Stopped { after, why }
    }

    /// Ends the watch (no stop can come after this) and re-arms a deadline's
    /// handle; returns whether the run was stopped.
    fn settle(&mut self) -> bool {
        let Some(cancel) = self.cancel else { return false };
        drop(self.watch.take());
        let stopped = cancel.is_cancelled();
        if self.limit.is_some() {
            cancel.rearm();
        }
        stopped
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}

/// The watcher's queue: what to stop, by deadline (ties by arrival).
#[derive(Debug, Default)]
struct Queue {
    due: BTreeMap<(Instant, u64), Arc<Flag>>,
    next_id: u64,
}

#[derive(Debug)]
struct Watcher {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// A deadline being watched; dropping it stops the watch.
struct Watch {
    key: (Instant, u64),
    watcher: &'static Watcher,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(mut q) = self.watcher.queue.lock() {
            q.due.remove(&self.key);
        }
    }
}

static WATCHER: OnceLock<Result<&'static Watcher, String>> = OnceLock::new();

fn watcher() -> Result<&'static Watcher, InferenceError> {
    WATCHER
        .get_or_init(|| {
            let w: &'static Watcher =
                Box::leak(Box::new(Watcher { queue: Mutex::new(Queue::default()), wake: Condvar::new() }));
            std::thread::Builder::new()
                .name("run-deadlines".into())
                .spawn(move || watch_loop(w))
                .map(|_| w)
                .map_err(|e| format!("cannot start the run-deadline thread: {e}"))
        })
        .clone()
        .map_err(InferenceError::Runtime)
}

fn watch(at: Instant, flag: Arc<Flag>) -> Result<Watch, InferenceError> {
    let w = watcher()?;
    let mut q = w.queue.lock().map_err(|_| InferenceError::Runtime("deadline queue poisoned".into()))?;
    let key = (at, q.next_id);
    q.next_id += 1;
    let earliest = q.due.keys().next().is_none_or(|k| *k > key);
    q.due.insert(key, flag);
    drop(q);
    if earliest {
        w.wake.notify_one();
    }
    Ok(Watch { key, watcher: w })
}

/// Sleeps until the earliest deadline, stops what is due, and again. Runs
/// for the life of the process (one thread, idle when nothing is watched).
fn watch_loop(w: &'static Watcher) {
    let Ok(mut q) = w.queue.lock() else { return };
    loop {
        let now = Instant::now();
        while let Some(entry) = q.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            entry.remove().stop();
        }
        q = match q.due.keys().next().map(|k| k.0) {
            Some(at) => match w.wake.wait_timeout(q, at.saturating_duration_since(now)) {
                Ok((q, _)) => q,
                Err(_) => return,
            },
            None => match w.wake.wait(q) {
                Ok(q) => q,
                Err(_) => return,
            },
        };
    }
}
