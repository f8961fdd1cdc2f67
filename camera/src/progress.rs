//! Frame counters with the time of the last frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A count of frames with the time of the last one: a camera's frames
/// received (and its last frame's age, which also tells a stall), and the
/// appliance's frames processed per camera. Two relaxed atomics, so the
/// thread counting pays nothing; the time is only ever read as an age.
#[derive(Debug)]
pub struct Progress {
    epoch: Instant,
    count: AtomicU64,
    /// Nanoseconds after `epoch`, plus one (0: nothing yet).
    last_ns: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { epoch: Instant::now(), count: AtomicU64::new(0), last_ns: AtomicU64::new(0) }
    }
}

impl Progress {
    pub fn record(&self) {
        self.record_at(Instant::now());
    }

    /// [`Progress::record`] for a frame that came at `at`.
    pub fn record_at(&self, at: Instant) {
        let ns = at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1;
        self.last_ns.store(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Time since the last [`Progress::record`]; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        match self.last_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch.elapsed().saturating_sub(Duration::from_nanos(ns - 1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_and_ages_from_the_last_record() {
        let p = Progress::default();
        assert_eq!((p.count(), p.age()), (0, None));
        p.record();
        let first = p.age().expect("recorded");
        std::thread::sleep(Duration::from_millis(20));
        let later = p.age().expect("recorded");
        assert!(later >= first + Duration::from_millis(20), "{first:?} then {later:?}");
        p.record();
        assert_eq!(p.count(), 2);
        assert!(p.age().expect("recorded") < later, "a new record resets the age");
    }
}
