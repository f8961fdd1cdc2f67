//! What `vigil run` derives from a checked config before it opens anything.
//!
//! ```text
//!  LoadedConfig ──RunSettings::new──▶ durations, byte limits, thread plan,
//!  (vigil check)    (pure, no I/O)     batch policies, camera options, API limits
//!                                          │
//!                                          ▼
//!                              Appliance::start opens models, outbox, broker, cameras
//! ```
//! Every conversion that can panic or overflow (`Duration::from_secs_f64`,
//! megabytes to bytes) lives here and nowhere else, so a property test can
//! run it on every config `check` accepts: a config that passes `check`
//! must never panic at `run`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::LoadedConfig;
use crate::lifecycle::UpdatePolicy;
use crate::outbox::OutboxLimits;
use crate::scheduler::BatchPolicy;
use crate::snapshots::Retention;
use crate::threads::ThreadPlan;

const MB: u64 = 1024 * 1024;

/// The run-time form of a config.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub threads: ThreadPlan,
    /// Per model, by name.
    pub batch: BTreeMap<String, BatchPolicy>,
    pub outbox: OutboxLimits,
    pub retention: Retention,
    pub update: UpdatePolicy,
    pub keep_alive: Duration,
    pub ack_timeout: Duration,
    pub max_event_bytes: usize,
    /// IoT Hub SAS token lifetime and when to renew it (80 % of it).
    pub token_ttl: Duration,
    pub token_renew: Duration,
    /// Per camera, in config order.
    pub cameras: Vec<vigil_camera::CameraOptions>,
    pub max_upload_bytes: u64,
    pub request_timeout: Duration,
    /// Time between two MJPEG frames (1 / `http.mjpeg_fps`).
    pub mjpeg_period: Duration,
}

impl RunSettings {
    /// Converts a config that passed `check`; `cores` is what the box has.
    pub fn new(loaded: &LoadedConfig, cores: usize) -> RunSettings {
        let cfg = &loaded.config;
        let threads = ThreadPlan::new(cfg, cores);
        let batch = cfg
            .models
            .iter()
            .map(|m| {
                let cameras = cfg.cameras.iter().filter(|c| c.model.as_ref() == Some(&m.name)).count();
                let policy = BatchPolicy {
                    // On the CPU, copies of the session running single frames
                    // side by side beat batches (four cameras, YOLOv8n, two
                    // cores: 40 fps unbatched, 37 fps in batches, 30 % more
                    // memory); a GPU wants batches.
                    max_batch: m.batch.unwrap_or(if m.provider == vigil_inference::Provider::Cpu {
                        1
                    } else {
                        cameras.clamp(1, 8)
                    }),
                    wait: Duration::from_millis(m.batch_wait_ms),
                    run_timeout: Duration::from_millis(m.run_timeout_ms),
                };
                (m.name.clone(), policy)
            })
            .collect();
        let ev = &cfg.events;
        let token_ttl = Duration::from_secs(cfg.mqtt.azure_token_ttl_s.max(10));
        RunSettings {
            threads,
            batch,
            outbox: OutboxLimits { max_events: ev.outbox_max_events, max_bytes: ev.outbox_max_mb * MB },
            retention: Retention {
                max_files: ev.snapshot_max_files,
                max_bytes: ev.snapshot_max_mb * MB,
                max_age: Duration::from_secs_f64(ev.snapshot_max_age_h * 3600.0),
            },
            update: UpdatePolicy { interval_s: ev.update_interval_s, min_move: ev.update_min_move },
            keep_alive: Duration::from_secs(cfg.mqtt.keep_alive_s),
            ack_timeout: Duration::from_secs(cfg.mqtt.ack_timeout_s),
            max_event_bytes: usize::try_from(cfg.mqtt.max_event_kb * 1024).unwrap_or(usize::MAX),
            token_ttl,
            token_renew: token_ttl.mul_f64(0.8),
            cameras: cfg.cameras.iter().map(crate::config::CameraConfig::options).collect(),
            max_upload_bytes: cfg.http.max_upload_mb * MB,
            request_timeout: Duration::from_secs(cfg.http.request_timeout_s),
            mjpeg_period: Duration::from_secs_f64(1.0 / cfg.http.mjpeg_fps),
        }
    }
}

/// Configs built from numbers, for `fuzz/` and the property test: every
/// numeric field `check` reads, in a config that is otherwise valid.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use std::collections::BTreeMap;
    use std::fmt::Write;

    #[derive(Clone, Copy)]
    enum Kind {
        Int,
        Float,
    }
    use Kind::{Float, Int};

    /// (table, key, kind). The tables are the ones `config_text` writes.
    const FIELDS: &[(&str, &str, Kind)] = &[
        ("mqtt", "keep_alive_s", Int),
        ("mqtt", "azure_token_ttl_s", Int),
        ("mqtt", "ack_timeout_s", Int),
        ("mqtt", "max_event_kb", Int),
        ("http", "max_upload_mb", Int),
        ("http", "request_timeout_s", Int),
        ("http", "mjpeg_fps", Float),
        ("events", "update_interval_s", Float),
        ("events", "update_min_move", Float),
        ("events", "outbox_max_events", Int),
        ("events", "outbox_max_mb", Int),
        ("events", "snapshot_max_files", Int),
        ("events", "snapshot_max_mb", Int),
        ("events", "snapshot_max_age_h", Float),
        ("models", "confidence", Float),
        ("models", "iou", Float),
        ("models", "max_detections", Int),
        ("models", "threads", Int),
        ("models", "sessions", Int),
        ("models", "lanes", Int),
        ("models", "batch", Int),
        ("models", "batch_wait_ms", Int),
        ("models", "test_run_s", Float),
        ("models", "device_id", Int),
        ("cameras", "fps", Int),
        ("cameras", "width", Int),
        ("cameras", "height", Int),
        ("cameras", "rotate", Int),
        ("cameras", "latency_ms", Int),
        ("cameras", "stall_timeout_s", Float),
        ("cameras", "reconnect_max_s", Float),
        ("cameras.tracker", "high_score", Float),
        ("cameras.tracker", "low_score", Float),
        ("cameras.tracker", "match_iou", Float),
        ("cameras.tracker", "min_hits", Int),
        ("cameras.tracker", "confirm_score", Float),
        ("cameras.tracker", "max_missing_s", Float),
        ("cameras.motion", "threshold", Int),
        ("cameras.motion", "min_area", Float),
        ("cameras.motion", "max_interval_s", Float),
        ("cameras.motion", "idle_interval_s", Float),
        ("cameras.zones", "min_dwell_s", Float),
        ("rules", "interval_s", Float),
        ("rules", "min_score", Float),
    ];

    /// Numbers at and around every edge a check or a conversion has.
    pub const EDGES: &[f64] = &[
        -1.0,
        -0.0,
        0.0,
        // Tiny but positive: 1 / it is infinite (found by fuzz/config).
        5e-324,
        1e-9,
        0.05,
        0.5,
        1.0,
        2.0,
        5.0,
        10.0,
        30.0,
        255.0,
        3600.0,
        86_400.0,
        86_401.0,
        87_600.0,
        65_535.0,
        65_536.0,
        1_048_576.0,
        1_048_577.0,
        4_294_967_296.0,
        1.8e13,
        9.2e18,
        1e300,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];

    /// How many fields there are to pick from.
    pub fn fields() -> usize {
        FIELDS.len()
    }

    /// A config with one model (`model` must be an existing file), one
    /// camera with a zone, one rule, and each `(field, value)` applied
    /// (field taken modulo `fields()`, later picks win).
    pub fn config_text(model: &str, picks: &[(usize, f64)]) -> String {
        let mut set: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
        for &(i, v) in picks {
            let (table, key, kind) = FIELDS[i % FIELDS.len()];
            let text = match kind {
                // A saturating cast: out-of-range integers are still written
                // (and refused by the parser or by `check`).
                Int if v.is_finite() => format!("{}", v.trunc() as i64),
                Int => continue,
                Float if v.is_nan() => "nan".into(),
                Float if v.is_infinite() => if v > 0.0 { "inf" } else { "-inf" }.into(),
                Float => format!("{v:?}"),
            };
            set.entry(table).or_default().insert(key, text);
        }
        let mut out = String::from("device_id = \"d\"\n");
        let mut table = |head: &str, name: &str, fixed: &str| {
            let _ = writeln!(out, "{head}\n{fixed}");
            for (k, v) in set.get(name).into_iter().flatten() {
                let _ = writeln!(out, "{k} = {v}");
            }
        };
        table("[mqtt]", "mqtt", "");
        table("[http]", "http", "listen = \"127.0.0.1:0\"\nauth = \"none\"");
        table("[events]", "events", "");
        table("[[models]]", "models", &format!("name = \"m\"\npath = {model:?}"));
        table("[[cameras]]", "cameras", "name = \"c\"\nsource = \"test://ball\"\nmodel = \"m\"");
        table("[cameras.tracker]", "cameras.tracker", "");
        table("[cameras.motion]", "cameras.motion", "");
        table(
            "[[cameras.zones]]",
            "cameras.zones",
            "name = \"z\"\npolygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]",
        );
        table(
            "[[rules]]",
            "rules",
            "name = \"r\"\ntype = \"inspection\"\ncamera = \"c\"\ntrigger = \"interval\"",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::fuzzing::{EDGES, config_text, fields};
    use super::*;

    fn load(text: &str) -> Result<LoadedConfig, crate::ConfigError> {
        LoadedConfig::from_str(text, Path::new("/etc/vigil/vigil.toml"), Path::new("/etc/vigil"))
    }

    #[test]
    fn the_generated_base_config_passes_check() {
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let loaded = load(&config_text(model, &[])).expect("valid");
        let s = RunSettings::new(&loaded, 4);
        assert_eq!(s.keep_alive, Duration::from_secs(15));
        assert_eq!(s.retention.max_age, Duration::from_secs(168 * 3600));
    }

    #[test]
    fn check_refuses_a_negative_snapshot_age_by_name() {
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let index = (0..fields()).find(|&i| config_text(model, &[(i, 7.0)]).contains("snapshot_max_age_h"));
        let e = load(&config_text(model, &[(index.expect("field"), -1.0)])).expect_err("refused");
        assert!(e.to_string().contains("events.snapshot_max_age_h = -1"), "{e}");
    }

    /// Property: any config `check` accepts converts without a panic.
    /// Values are drawn from every edge a check or a conversion has, several
    /// fields at once, from a fixed seed (so a failure reproduces).
    #[test]
    fn every_config_check_accepts_converts_without_a_panic() {
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut accepted, mut refused) = (0, 0);
        // Every field alone at every edge, then random combinations.
        let mut cases: Vec<Vec<(usize, f64)>> =
            (0..fields()).flat_map(|f| EDGES.iter().map(move |&v| vec![(f, v)])).collect();
        for _ in 0..4000 {
            let n = 1 + (next() % 6) as usize;
            cases.push(
                (0..n).map(|_| (next() as usize % fields(), EDGES[next() as usize % EDGES.len()])).collect(),
            );
        }
        for picks in cases {
            let text = config_text(model, &picks);
            match load(&text) {
                Ok(loaded) => {
                    accepted += 1;
                    let cores = 1 + (next() % 64) as usize;
                    let run = std::panic::catch_unwind(|| RunSettings::new(&loaded, cores));
                    assert!(run.is_ok(), "check accepted a config that panics at run:\n{text}");
                }
                Err(_) => refused += 1,
            }
        }
        // Both sides are exercised, or the property says nothing.
        assert!(accepted > 500 && refused > 500, "accepted {accepted}, refused {refused}");
    }
}
