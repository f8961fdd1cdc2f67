//! Event snapshots: annotated JPEGs stored with the events that need one (a
//! track's best frame, an inspection verdict, a safety alert, an arrival),
//! served at `/api/v1/snapshots/{name}`.
//!
//! Encoding happens on one worker thread fed by a small bounded queue, never
//! on the inference thread. A full queue drops the snapshot (counted): a
//! snapshot is a courtesy, the event itself is never held up for it.
//! Retention: at most `max_files`, `max_bytes` and `max_age`, oldest first.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use vigil_camera::Frame;
use vigil_inference::{BBox, Detection, Prediction};

use crate::annotate;

/// How much to keep.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_files: usize,
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// One picture to make.
#[derive(Debug)]
pub struct SnapshotJob {
    /// File name, `[A-Za-z0-9._-]+.jpg`; a job with an existing name replaces it.
    pub name: String,
    pub frame: Frame,
    pub prediction: Prediction,
    /// Drawn alone when set (a track's own box), else every detection.
    pub highlight: Option<BBox>,
}

#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    tx: Mutex<Option<SyncSender<SnapshotJob>>>,
    written: AtomicU64,
    dropped: AtomicU64,
}

/// Whether `name` is a snapshot file name (no paths, no surprises).
pub fn valid_name(name: &str) -> bool {
    name.len() <= 200
        && name.ends_with(".jpg")
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl SnapshotStore {
    /// Creates the directory and starts the worker.
    pub fn start(dir: &Path, retention: Retention) -> std::io::Result<Arc<SnapshotStore>> {
        std::fs::create_dir_all(dir)?;
        let (tx, rx) = sync_channel(16);
        let store = Arc::new(SnapshotStore {
            dir: dir.to_owned(),
            tx: Mutex::new(Some(tx)),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let worker = store.clone();
        std::thread::Builder::new()
            .name("snapshots".into())
            .spawn(move || worker.run(rx, retention))
            .map(|_| store)
    }

    /// Queues a snapshot; `false` (and counted) when the queue is full.
    pub fn submit(&self, job: SnapshotJob) -> bool {
        if !valid_name(&job.name) {
            return false;
        }
        let tx = self.tx.lock();
        let sent = match tx.as_ref() {
            Some(t) => !matches!(t.try_send(job), Err(TrySendError::Full(_) | TrySendError::Disconnected(_))),
            None => false,
        };
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// The file of a stored snapshot, if `name` is one.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        valid_name(name).then(|| self.dir.join(name)).filter(|p| p.is_file())
    }

    /// (written, dropped because the queue was full).
    pub fn counters(&self) -> (u64, u64) {
        (self.written.load(Ordering::Relaxed), self.dropped.load(Ordering::Relaxed))
    }

    /// Stops accepting jobs; the worker finishes the queued ones and exits.
    pub fn close(&self) {
        self.tx.lock().take();
    }

    fn run(&self, rx: Receiver<SnapshotJob>, retention: Retention) {
        let mut index = self.scan();
        for job in rx {
            let f = &job.frame;
            let pred = match job.highlight {
                Some(b) => Prediction {
                    detections: job
                        .prediction
                        .detections
                        .iter()
                        .filter(|d| d.bbox == b)
                        .cloned()
                        .collect::<Vec<Detection>>(),
                    ..job.prediction.clone()
                },
                None => job.prediction.clone(),
            };
            let rgb = annotate::annotated(f, &pred);
            let Ok(jpeg) = annotate::encode_jpeg(&rgb, f.width(), f.height(), 85) else { continue };
            let path = self.dir.join(&job.name);
            let tmp = self.dir.join(format!(".{}.tmp", job.name));
            if std::fs::write(&tmp, &jpeg).and_then(|()| std::fs::rename(&tmp, &path)).is_err() {
                tracing::warn!(file = %path.display(), "could not write a snapshot");
                continue;
            }
            self.written.fetch_add(1, Ordering::Relaxed);
            index.retain(|(n, _, _)| n != &job.name);
            index.push_back((job.name, jpeg.len() as u64, SystemTime::now()));
            self.enforce(&mut index, retention);
        }
    }

    /// Existing snapshots, oldest first.
    fn scan(&self) -> VecDeque<(String, u64, SystemTime)> {
        let mut v: Vec<(String, u64, SystemTime)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let meta = e.metadata().ok()?;
                valid_name(&name)
                    .then(|| (name, meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
            })
            .collect();
        v.sort_by_key(|(_, _, t)| *t);
        v.into()
    }

    fn enforce(&self, index: &mut VecDeque<(String, u64, SystemTime)>, r: Retention) {
        let now = SystemTime::now();
        let mut bytes: u64 = index.iter().map(|(_, b, _)| b).sum();
        while let Some((name, size, at)) = index.front().cloned() {
            let old = now.duration_since(at).unwrap_or_default() > r.max_age;
            if index.len() > r.max_files || bytes > r.max_bytes || old {
                let _ = std::fs::remove_file(self.dir.join(&name));
                bytes -= size;
                index.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_directory() {
        assert!(valid_name("track-cam1-12.jpg"));
        assert!(!valid_name("../etc/passwd.jpg"));
        assert!(!valid_name("a/b.jpg"));
        assert!(!valid_name(".hidden.jpg"));
        assert!(!valid_name("x.png"));
    }

    #[test]
    fn keeps_at_most_max_files_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::start(
            dir.path(),
            Retention { max_files: 3, max_bytes: u64::MAX, max_age: Duration::from_secs(3600) },
        )
        .expect("start");
        for i in 0..6 {
            let frame = Frame::from_rgb("c", i, 8, 8, vec![100; 8 * 8 * 3]);
            assert!(store.submit(SnapshotJob {
                name: format!("s{i}.jpg"),
                frame,
                prediction: Prediction::default(),
                highlight: None
            }));
            // One at a time, so file times order them.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while store.counters().0 < i + 1 {
                assert!(std::time::Instant::now() < deadline, "snapshot {i} not written");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("e").file_name().into_string().expect("utf8"))
            .collect();
        left.sort();
        assert_eq!(left, vec!["s3.jpg", "s4.jpg", "s5.jpg"]);
        assert!(store.path("s5.jpg").is_some() && store.path("s0.jpg").is_none());
    }
}
