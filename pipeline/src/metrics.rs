//! Prometheus metrics without a metrics framework: fixed-bucket histograms of
//! atomics (lock-free to observe from the inference threads) and a text
//! renderer for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds in seconds, from 0.5 ms to 5 s.
pub const BUCKETS: [f64; 13] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    /// Sum in nanoseconds (an integer, so it can be atomic).
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends `name_bucket`, `name_sum`, `name_count` lines with `labels`
    /// (already formatted, e.g. `camera="a",stage="inference"`).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Per-camera stage timings.
#[derive(Debug, Default)]
pub struct StageMetrics {
    /// Capture to the inference worker taking the frame.
    pub queue: Histogram,
    pub preprocess: Histogram,
    pub inference: Histogram,
    pub postprocess: Histogram,
    /// Tracker, zones, rules.
    pub events: Histogram,
}

impl StageMetrics {
    pub fn render(&self, camera: &str, out: &mut String) {
        for (stage, h) in [
            ("queue", &self.queue),
            ("preprocess", &self.preprocess),
            ("inference", &self.inference),
            ("postprocess", &self.postprocess),
            ("events", &self.events),
        ] {
            h.render("vigil_stage_seconds", &format!("camera=\"{}\",stage=\"{stage}\"", escape(camera)), out);
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(0.0007);
        h.observe(0.003);
        h.observe(10.0);
        let mut out = String::new();
        h.render("x_seconds", "a=\"b\"", &mut out);
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"0.0005\"} 0\n"));
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"0.001\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"5\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{a=\"b\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count{a=\"b\"} 3\n"));
    }
}
