//! The outbox writer: events from the cameras and the API into the outbox
//! on disk, in order, and none lost without being counted.
//!
//! ```text
//!  workers, API ──events channel (bounded, blocks)──▶ writer ──append, one transaction a batch──▶ outbox
//!   emitted += 1                                        │  refused (disk full, I/O error):
//!                                                       │  held in memory (bounded), retried with backoff
//!                                                       └─▶ recent list, live stream (with their seq)
//! ```
//!
//! When the outbox cannot store a batch, the writer keeps it, and what comes
//! after it, in memory, and tries again after 0.1 s, doubling to 5 s. The
//! cameras never wait on a broken disk (their channel keeps draining), and
//! the batch keeps its place: the order on disk is the order produced. The
//! memory it may hold is bounded ([`PENDING_MAX_EVENTS`],
//! [`PENDING_MAX_BYTES`]); past that the oldest held events are dropped,
//! counted in `lost` and logged, as the outbox itself keeps the most recent
//! history when it is full. At shutdown, a disk that still refuses gets a
//! few more tries; what is left then is counted in `lost` too.
//!
//! Every event is accounted for: `emitted` (counted by the senders) equals
//! `written` + `pending` + `lost`, plus the few in the channel at that
//! instant. Tests check it so that an event lost before it got a sequence
//! number cannot go unnoticed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, mpsc};

use crate::lifecycle::Emitted;
use crate::outbox::Outbox;

/// The most events held in memory while the outbox refuses them: about
/// 80 minutes of a busy camera's 10 events a second.
pub const PENDING_MAX_EVENTS: usize = 50_000;
/// The most bytes of event JSON held in memory meanwhile.
pub const PENDING_MAX_BYTES: usize = 32 * 1024 * 1024;
/// Events per outbox transaction.
const BATCH: usize = 256;
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Tries left once the channel has closed (shutdown) and the disk still
/// refuses; the shutdown deadline bounds them anyway.
const TRIES_AT_SHUTDOWN: u32 = 3;

/// What became of the events produced: shared by the senders (who count
/// them) and the writer.
#[derive(Debug, Default)]
pub struct EventLedger {
    emitted: AtomicU64,
    state: Mutex<LedgerState>,
}

/// The writer's side of the ledger.
#[derive(Debug, Default, Clone)]
pub struct LedgerState {
    /// Taken from the channel, not yet on disk: held in memory while the
    /// outbox refuses them.
    pub pending: u64,
    pub pending_bytes: u64,
    /// Dropped before they were stored (never given a `seq`): held longer
    /// than memory allowed, or still refused at shutdown.
    pub lost: u64,
    /// Appends that failed.
    pub write_errors: u64,
    /// Since when the outbox refuses events, and the last reason; `None`
    /// while it takes them.
    pub failing: Option<(Instant, String)>,
}

impl EventLedger {
    /// Events produced so far (model swaps included).
    pub fn emitted(&self) -> u64 {
        self.emitted.load(Ordering::SeqCst)
    }

    pub fn state(&self) -> LedgerState {
        self.state.lock().clone()
    }

    /// Counted before the send, so `emitted` never trails what was written.
    pub(crate) fn note_emitted(&self) {
        self.emitted.fetch_add(1, Ordering::SeqCst);
    }

    /// An event that could not even be handed to the writer (it is gone:
    /// shutdown).
    pub(crate) fn note_unsent(&self) {
        self.state.lock().lost += 1;
    }
}

/// Hands `e` to the writer, blocking while the channel is full (events are
/// never dropped for being many). `Err` when the writer is gone.
pub(crate) fn send_blocking(tx: &mpsc::Sender<Emitted>, ledger: &EventLedger, e: Emitted) -> Result<(), ()> {
    ledger.note_emitted();
    tx.blocking_send(e).map_err(|_| ledger.note_unsent())
}

/// [`send_blocking`] from async code.
pub(crate) async fn send(tx: &mpsc::Sender<Emitted>, ledger: &EventLedger, e: Emitted) -> Result<(), ()> {
    ledger.note_emitted();
    tx.send(e).await.map_err(|_| ledger.note_unsent())
}

/// Where stored events go besides the disk: the API's recent list and live
/// stream, each with the `seq` the outbox gave it.
pub(crate) struct Listeners {
    pub recent: Arc<Mutex<VecDeque<Arc<serde_json::Value>>>>,
    pub recent_max: usize,
    pub live: broadcast::Sender<Arc<serde_json::Value>>,
}

impl Listeners {
    fn stored(&self, events: &[Emitted], seqs: std::ops::Range<u64>) {
        let mut r = self.recent.lock();
        for (e, seq) in events.iter().zip(seqs) {
            let recorded = crate::event::Recorded { event: &e.event, seq };
            if let Ok(v) = serde_json::to_value(&recorded) {
                let v = Arc::new(v);
                if r.len() >= self.recent_max {
                    r.pop_front();
                }
                r.push_back(v.clone());
                let _ = self.live.send(v);
            }
        }
    }
}

/// The writer task: runs until the channel closes and everything taken from
/// it is stored or counted lost.
pub(crate) async fn run(
    mut rx: mpsc::Receiver<Emitted>,
    outbox: Arc<Outbox>,
    wake: Arc<Notify>,
    listeners: Listeners,
    ledger: Arc<EventLedger>,
) {
    let mut held = Held::default();
    let mut incoming = Vec::with_capacity(BATCH);
    let mut open = true;
    let mut retry = RETRY_FIRST;
    let mut tries_left = TRIES_AT_SHUTDOWN;
    loop {
        if held.events.is_empty() && (!open || rx.recv_many(&mut incoming, BATCH).await == 0) {
            break;
        }
        // Whatever else is there already, without waiting.
        while open && incoming.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => incoming.push(e),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        held.take(&mut incoming, &ledger);

        let n = held.events.len().min(BATCH);
        let rows: Vec<(u64, Vec<u8>)> =
            held.events.iter().take(n).map(|(e, json)| (e.captured_ms, json.clone())).collect();
        let ob = outbox.clone();
        let result = match tokio::task::spawn_blocking(move || ob.append(&rows)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the outbox task failed: {e}")),
        };
        match result {
            Ok(seqs) => {
                let stored: Vec<Emitted> = held
                    .events
                    .drain(..n)
                    .map(|(e, json)| {
                        held.bytes -= json.len();
                        e
                    })
                    .collect();
                listeners.stored(&stored, seqs);
                wake.notify_one();
                retry = RETRY_FIRST;
                let mut st = ledger.state.lock();
                (st.pending, st.pending_bytes) = (held.events.len() as u64, held.bytes as u64);
                if let Some((since, _)) = st.failing.take() {
                    tracing::info!(
                        after_s = since.elapsed().as_secs_f64(),
                        held = held.events.len(),
                        "the outbox stores events again"
                    );
                }
            }
            Err(error) => {
                let first = {
                    let mut st = ledger.state.lock();
                    st.write_errors += 1;
                    let first = st.failing.is_none();
                    let since = st.failing.as_ref().map_or_else(Instant::now, |f| f.0);
                    st.failing = Some((since, error.clone()));
                    first
                };
                // The first failure, then one line a try at most every 5 s.
                if first || retry == RETRY_MAX {
                    tracing::error!(
                        %error,
                        held = held.events.len(),
                        retry_in_ms = retry.as_millis() as u64,
                        "could not store events; they are held in memory and retried"
                    );
                }
                if !open {
                    tries_left = tries_left.saturating_sub(1);
                    if tries_left == 0 {
                        let lost = held.events.len() as u64;
                        tracing::error!(%error, lost, "shutting down: events the outbox never took are lost");
                        let mut st = ledger.state.lock();
                        st.lost += lost;
                        (st.pending, st.pending_bytes) = (0, 0);
                        break;
                    }
                }
                // Wait, taking new events meanwhile so that no camera waits.
                let until = tokio::time::Instant::now() + retry;
                while open {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        got = rx.recv_many(&mut incoming, BATCH) => {
                            if got == 0 {
                                open = false;
                            }
                            held.take(&mut incoming, &ledger);
                        }
                    }
                }
                if !open {
                    tokio::time::sleep_until(until).await;
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Events taken from the channel and not yet stored, oldest first, each
/// with its JSON.
#[derive(Default)]
struct Held {
    events: VecDeque<(Emitted, Vec<u8>)>,
    bytes: usize,
}

impl Held {
    /// Takes `incoming`; past the memory bound, drops the oldest held (counted).
    fn take(&mut self, incoming: &mut Vec<Emitted>, ledger: &EventLedger) {
        for e in incoming.drain(..) {
            // Serialized once, here: its size bounds the memory held.
            let json = e.json();
            self.bytes += json.len();
            self.events.push_back((e, json));
        }
        let mut dropped = 0u64;
        while self.events.len() > PENDING_MAX_EVENTS || self.bytes > PENDING_MAX_BYTES {
            let Some((_, json)) = self.events.pop_front() else { break };
            self.bytes -= json.len();
            dropped += 1;
        }
        let mut st = ledger.state.lock();
        let before = st.lost;
        st.lost += dropped;
        (st.pending, st.pending_bytes) = (self.events.len() as u64, self.bytes as u64);
        drop(st);
        // The first drop, then one line per thousand: this runs at event rate.
        if dropped > 0 && (before == 0 || before / 1000 != (before + dropped) / 1000) {
            tracing::error!(
                dropped,
                max_events = PENDING_MAX_EVENTS,
                max_bytes = PENDING_MAX_BYTES,
                "the outbox has refused events for too long: dropped the oldest held in memory"
            );
        }
    }
}
