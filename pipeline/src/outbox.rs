//! The durable outbox: every event is on disk before it is published and
//! stays there until the broker acknowledges it.
//!
//! ```text
//!  rules ──events channel (bounded, blocks)──▶ writer: one redb transaction per batch (fsync)
//!                                                 │ notify
//!                                                 ▼
//!                                   MQTT link: publish in sequence order, QoS 1
//!                                   PUBACK ──▶ delete (batched)
//!  reconnect / restart / crash ──▶ publish again from the oldest event still stored
//! ```
//!
//! Storage is `redb`, an embedded, crash-safe, pure-Rust key-value store:
//! keys are a monotonic sequence number (publish order), values are
//! 8 bytes of capture time (unix ms, for latency at publish) + the event JSON.
//!
//! Bound: at most `max_events` and `max_bytes`. When a new batch would exceed
//! either, the oldest events are deleted to make room, counted in `dropped`
//! and logged: a box that cannot reach its broker for weeks keeps its most
//! recent history rather than stopping the line or filling the disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// `next_seq` lives here too, so sequence numbers keep rising across
/// restarts even when the outbox was empty (consumers use them to spot gaps).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Limits on what the outbox holds.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub max_events: u64,
    pub max_bytes: u64,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub seq: u64,
    pub captured_ms: u64,
    pub json: Vec<u8>,
}

#[derive(Debug)]
struct Meta {
    next_seq: u64,
    count: u64,
    bytes: u64,
}

/// Why the outbox could not do something.
#[derive(Debug, thiserror::Error)]
#[error("outbox {what}: {reason}")]
pub struct OutboxError {
    what: &'static str,
    reason: String,
}

fn err(what: &'static str) -> impl Fn(String) -> OutboxError {
    move |reason| OutboxError { what, reason }
}

#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    /// `None` after a failed reopen. redb latches an I/O error (a full disk,
    /// say): every later operation fails with `PreviousIo` until the
    /// database is closed and opened again, which the next append does.
    db: RwLock<Option<Database>>,
    /// An operation failed: the next append reopens the database first.
    broken: AtomicBool,
    meta: Mutex<Meta>,
    limits: OutboxLimits,
    written: AtomicU64,
    dropped: AtomicU64,
    deleted: AtomicU64,
}

/// Opens (or creates) the database and reads its bookkeeping.
fn open_db(path: &Path) -> Result<(Database, Meta), OutboxError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("directory")(format!("{}: {e}", dir.display())))?;
    }
    let db = Database::create(path).map_err(|e| err("open")(format!("{}: {e}", path.display())))?;
    let w = db.begin_write().map_err(|e| err("open")(e.to_string()))?;
    w.open_table(EVENTS).map_err(|e| err("open")(e.to_string()))?;
    w.open_table(META).map_err(|e| err("open")(e.to_string()))?;
    w.commit().map_err(|e| err("open")(e.to_string()))?;
    let r = db.begin_read().map_err(|e| err("open")(e.to_string()))?;
    let t = r.open_table(EVENTS).map_err(|e| err("open")(e.to_string()))?;
    let count = t.len().map_err(|e| err("open")(e.to_string()))?;
    let mut bytes = 0u64;
    for row in t.iter().map_err(|e| err("open")(e.to_string()))? {
        let (_, v) = row.map_err(|e| err("open")(e.to_string()))?;
        bytes += v.value().len() as u64;
    }
    let after_last =
        t.last().map_err(|e| err("open")(e.to_string()))?.map(|(k, _)| k.value() + 1).unwrap_or(1);
    let m = r.open_table(META).map_err(|e| err("open")(e.to_string()))?;
    let stored = m.get("next_seq").map_err(|e| err("open")(e.to_string()))?.map(|v| v.value()).unwrap_or(1);
    let next_seq = after_last.max(stored);
    drop(m);
    drop(t);
    drop(r);
    Ok((db, Meta { next_seq, count, bytes }))
}

impl Outbox {
    /// Opens (or creates) the outbox file; what a previous run left unsent is
    /// picked up where it was.
    pub fn open(path: &Path, limits: OutboxLimits) -> Result<Outbox, OutboxError> {
        let (db, meta) = open_db(path)?;
        Ok(Outbox {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
            broken: AtomicBool::new(false),
            meta: Mutex::new(meta),
            limits,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
        })
    }

    /// Runs `f` on the database; an error marks it for reopening.
    fn with_db<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Database) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        let guard = self.db.read();
        let Some(db) = guard.as_ref() else {
            return Err(err(what)("closed after a storage error (the next write reopens it)".into()));
        };
        let r = f(db);
        if r.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        r
    }

    /// Closes and reopens the database after an error: redb refuses
    /// everything after one I/O error until then. What was committed is
    /// all there; the sequence numbers go on from the highest given.
    fn reopen(&self) -> Result<(), OutboxError> {
        let mut db = self.db.write();
        // The old handle must be gone first: redb locks the file.
        drop(db.take());
        let (fresh, m) = open_db(&self.path)?;
        *db = Some(fresh);
        let mut meta = self.meta.lock();
        meta.next_seq = meta.next_seq.max(m.next_seq);
        meta.count = m.count;
        meta.bytes = m.bytes;
        self.broken.store(false, Ordering::SeqCst);
        tracing::info!(path = %self.path.display(), waiting = m.count, "outbox reopened after a storage error");
        Ok(())
    }

    /// Stores a batch in one transaction (one fsync) and returns the sequence
    /// numbers given to it. Makes room by dropping the oldest when full.
    /// Nothing changes unless it commits: a failed batch can be given again.
    pub fn append(&self, events: &[(u64, Vec<u8>)]) -> Result<std::ops::Range<u64>, OutboxError> {
        if self.broken.load(Ordering::SeqCst) {
            self.reopen()?;
        }
        self.with_db("write", |db| {
            let mut meta = self.meta.lock();
            let add_bytes: u64 = events.iter().map(|(_, j)| j.len() as u64 + 8).sum();
            let w = db.begin_write().map_err(|e| err("write")(e.to_string()))?;
            let first = meta.next_seq;
            let (mut next_seq, mut count, mut bytes) = (meta.next_seq, meta.count, meta.bytes);
            let mut dropped = 0u64;
            {
                let mut t = w.open_table(EVENTS).map_err(|e| err("write")(e.to_string()))?;
                while count > 0
                    && (count + events.len() as u64 > self.limits.max_events
                        || bytes + add_bytes > self.limits.max_bytes)
                {
                    let Some((_, v)) = t.pop_first().map_err(|e| err("write")(e.to_string()))? else {
                        break;
                    };
                    count -= 1;
                    bytes -= v.value().len() as u64;
                    dropped += 1;
                }
                let mut buf = Vec::new();
                for (captured_ms, json) in events {
                    buf.clear();
                    buf.extend_from_slice(&captured_ms.to_le_bytes());
                    buf.extend_from_slice(json);
                    t.insert(next_seq, buf.as_slice()).map_err(|e| err("write")(e.to_string()))?;
                    next_seq += 1;
                    count += 1;
                    bytes += buf.len() as u64;
                }
                let mut m = w.open_table(META).map_err(|e| err("write")(e.to_string()))?;
                m.insert("next_seq", next_seq).map_err(|e| err("write")(e.to_string()))?;
            }
            w.commit().map_err(|e| err("write")(e.to_string()))?;
            *meta = Meta { next_seq, count, bytes };
            self.written.fetch_add(events.len() as u64, Ordering::Relaxed);
            if dropped > 0 {
                self.dropped.fetch_add(dropped, Ordering::Relaxed);
                tracing::error!(
                    dropped,
                    max_events = self.limits.max_events,
                    max_bytes = self.limits.max_bytes,
                    "outbox full: dropped the oldest undelivered events to make room"
                );
            }
            Ok(first..next_seq)
        })
    }

    /// Up to `max` events with a sequence number above `after`, in order.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<Stored>, OutboxError> {
        self.with_db("read", |db| {
            let r = db.begin_read().map_err(|e| err("read")(e.to_string()))?;
            let t = r.open_table(EVENTS).map_err(|e| err("read")(e.to_string()))?;
            let mut out = Vec::new();
            for row in t.range(after.saturating_add(1)..).map_err(|e| err("read")(e.to_string()))?.take(max) {
                let (k, v) = row.map_err(|e| err("read")(e.to_string()))?;
                let v = v.value();
                if v.len() < 8 {
                    continue;
                }
                let captured_ms = u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
                out.push(Stored { seq: k.value(), captured_ms, json: v[8..].to_vec() });
            }
            Ok(out)
        })
    }

    /// Forgets acknowledged events, in one transaction.
    ///
    /// Without an fsync: a delete lost in a crash only means that event is
    /// sent again after the restart (delivery is at least once, and the id
    /// lets consumers drop the repeat); the next append's durable commit
    /// persists it anyway. This keeps acknowledgements cheap at high rates.
    pub fn remove(&self, seqs: &[u64]) -> Result<(), OutboxError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.with_db("delete", |db| {
            let mut meta = self.meta.lock();
            let mut w = db.begin_write().map_err(|e| err("delete")(e.to_string()))?;
            w.set_durability(redb::Durability::None).map_err(|e| err("delete")(e.to_string()))?;
            let (mut n, mut count, mut bytes) = (0, meta.count, meta.bytes);
            {
                let mut t = w.open_table(EVENTS).map_err(|e| err("delete")(e.to_string()))?;
                for s in seqs {
                    if let Some(v) = t.remove(*s).map_err(|e| err("delete")(e.to_string()))? {
                        count -= 1;
                        bytes -= v.value().len() as u64;
                        n += 1;
                    }
                }
            }
            w.commit().map_err(|e| err("delete")(e.to_string()))?;
            (meta.count, meta.bytes) = (count, bytes);
            self.deleted.fetch_add(n, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Events waiting for the broker.
    pub fn len(&self) -> u64 {
        self.meta.lock().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.meta.lock().bytes
    }

    /// Counters: written, delivered (deleted after PUBACK), dropped (full).
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.deleted.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OutboxLimits {
        OutboxLimits { max_events: 1000, max_bytes: 1 << 20 }
    }

    #[test]
    fn keeps_order_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.redb");
        {
            let o = Outbox::open(&path, limits()).expect("open");
            let seqs = o.append(&[(1, b"{\"a\":1}".to_vec()), (2, b"{\"a\":2}".to_vec())]).expect("append");
            assert_eq!(seqs, 1..3);
            o.append(&[(3, b"{\"a\":3}".to_vec())]).expect("append");
            o.remove(&[1]).expect("remove");
        }
        // A restart (or a crash after commit) finds what was not acknowledged.
        let o = Outbox::open(&path, limits()).expect("reopen");
        assert_eq!(o.len(), 2);
        let got = o.read_after(0, 10).expect("read");
        assert_eq!(got.iter().map(|s| (s.seq, s.captured_ms)).collect::<Vec<_>>(), vec![(2, 2), (3, 3)]);
        assert_eq!(got[0].json, b"{\"a\":2}");
        assert_eq!(o.read_after(2, 10).expect("read").len(), 1);
        // New events continue the sequence, even after the outbox emptied.
        assert_eq!(o.append(&[(4, b"{}".to_vec())]).expect("append"), 4..5);
        o.remove(&[2, 3, 4]).expect("remove");
        drop(o);
        let o = Outbox::open(&path, limits()).expect("reopen empty");
        assert!(o.is_empty());
        assert_eq!(o.append(&[(5, b"{}".to_vec())]).expect("append"), 5..6);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Outbox::open(&dir.path().join("o.redb"), OutboxLimits { max_events: 3, max_bytes: 1 << 20 })
            .expect("open");
        for i in 0..5u64 {
            o.append(&[(i, format!("{{\"i\":{i}}}").into_bytes())]).expect("append");
        }
        assert_eq!(o.len(), 3);
        let seqs: Vec<u64> = o.read_after(0, 10).expect("read").iter().map(|s| s.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(o.counters(), (5, 0, 2));
    }

    /// A tmpfs of 4 MiB (the tests run as root), unmounted on drop.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn mount() -> SmallDisk {
            let dir = tempfile::tempdir().expect("tempdir");
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "mounting a tmpfs needs root (the tests run as root)");
            SmallDisk(dir)
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }

    #[test]
    fn after_a_full_disk_the_refused_batch_is_stored_once_space_frees_and_the_sequence_has_no_gap() {
        use std::io::Write;
        let disk = SmallDisk::mount();
        let o = Outbox::open(
            &disk.0.path().join("outbox.redb"),
            OutboxLimits { max_events: 1 << 20, max_bytes: 1 << 30 },
        )
        .expect("open");
        assert_eq!(o.append(&[(1, b"{}".to_vec())]).expect("append"), 1..2);
        // Fill the disk.
        let filler = disk.0.path().join("filler");
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![1u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..512]).is_ok() {}
        drop(f);
        // Batches of 64 KiB of events until the disk refuses one.
        let batch: Vec<(u64, Vec<u8>)> = (0..64).map(|i| (i, vec![b'x'; 1024])).collect();
        let mut stored = 1u64;
        let refused = (0..200).find_map(|_| match o.append(&batch) {
            Ok(r) => {
                stored += r.end - r.start;
                None
            }
            Err(e) => Some(e),
        });
        let refused = refused.expect("a full disk refuses a batch");
        assert!(o.append(&batch).is_err(), "still full: {refused}");
        assert_eq!(o.len(), stored, "a refused batch changes nothing");
        // Space again: the same batch goes in, numbered right after the last stored.
        std::fs::remove_file(&filler).expect("free");
        let r = o.append(&batch).expect("stored once there is room");
        assert_eq!(r, stored + 1..stored + 65);
        assert_eq!(o.len(), stored + 64);
        let seqs: Vec<u64> = o.read_after(0, 100_000).expect("read").iter().map(|s| s.seq).collect();
        assert_eq!(seqs, (1..=stored + 64).collect::<Vec<_>>());
        o.remove(&[1]).expect("remove works again too");
    }
}
