//! `vigil bench-cameras`: what each camera costs before inference.
//!
//! For every camera in a config, alone: frames per second, CPU time per frame
//! of decoding and conversion (process CPU time over the window divided by
//! frames; nothing else runs), and the latency from the source's timestamp
//! to the frame reaching the inference side (p50, p99). Then a reconnect soak:
//! a pipeline built, streamed and torn down 200 times, with the resident
//! memory before and after, to show that reconnecting leaks nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vigil_camera::{Camera, CameraOptions, CameraState, FrameSlot, Source};
use vigil_pipeline::LoadedConfig;

#[derive(Debug, clap::Args)]
pub(crate) struct BenchCamerasArgs {
    /// A Vigil config; its cameras are measured one at a time (models are ignored).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Seconds of measurement per camera.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Pipeline rebuilds in the memory soak (0 skips it).
    #[arg(long, default_value_t = 200)]
    pub reconnect_cycles: u64,
    /// The soak's source: it must end by itself after a few frames, so that
    /// each end is a teardown and a rebuild.
    #[arg(
        long,
        default_value = "launch:videotestsrc num-buffers=3 ! video/x-raw,width=640,height=480,framerate=30/1"
    )]
    pub soak_source: String,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

pub(crate) fn run(args: &BenchCamerasArgs) -> anyhow::Result<()> {
    vigil_camera::init()?;
    let loaded = LoadedConfig::load(&args.config)?;
    println!(
        "{:<12} {:>9} {:>9} {:>14} {:>12} {:>16} {:>16}",
        "camera", "size", "fps", "CPU ms/frame", "CPU % core", "latency p50 ms", "latency p99 ms"
    );
    for (c, source) in loaded.config.cameras.iter().zip(&loaded.sources) {
        let Ok(source) = source else {
            println!("{:<12} skipped: {}", c.name, source.as_ref().err().map(String::as_str).unwrap_or(""));
            continue;
        };
        measure(&c.name, source, c.options(), args.seconds)?;
    }
    if args.reconnect_cycles > 0 {
        soak(&args.soak_source, args.reconnect_cycles)?;
    }
    Ok(())
}

fn measure(name: &str, source: &Source, options: CameraOptions, seconds: f64) -> anyhow::Result<()> {
    let slot = FrameSlot::new();
    let mut camera = Camera::start(name, source.clone(), options, slot.clone());
    let t0 = Instant::now();
    while camera.status().state != CameraState::Streaming {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("camera {name} did not stream within 30 s: {:?}", camera.status().last_error);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The consumer stands in for inference: it takes each frame as soon as it
    // can and notes how long after the source captured it that was.
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (slot, done) = (slot.clone(), done.clone());
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(f) = slot.take_timeout(Duration::from_millis(100)) {
                    let handoff = f.captured_instant().elapsed();
                    if let Some(src) = f.source_latency() {
                        lat.push((src + handoff).as_secs_f64() * 1e3);
                    }
                }
            }
            lat
        })
    };
    let cpu0 = cpu_time::ProcessTime::now();
    let frames0 = camera.status().frames_received;
    let wall0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu = cpu0.elapsed();
    let wall = wall0.elapsed();
    let status = camera.status();
    let frames = status.frames_received - frames0;
    done.store(true, Ordering::Relaxed);
    let mut lat = consumer.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))?;
    camera.stop();
    lat.sort_by(f64::total_cmp);
    let size = status.frame_size.map(|(w, h)| format!("{w}x{h}")).unwrap_or_default();
    let per_frame = if frames > 0 { cpu.as_secs_f64() * 1e3 / frames as f64 } else { f64::NAN };
    let (p50, p99) = if lat.is_empty() {
        ("n/a".to_string(), "n/a".to_string())
    } else {
        (format!("{:.2}", percentile(&lat, 0.5)), format!("{:.2}", percentile(&lat, 0.99)))
    };
    println!(
        "{:<12} {:>9} {:>9.1} {:>14.3} {:>11.1}% {:>16} {:>16}",
        name,
        size,
        frames as f64 / wall.as_secs_f64(),
        per_frame,
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        p50,
        p99
    );
    Ok(())
}

/// Builds, streams and tears down a pipeline `cycles` times (a source that
/// ends after a few frames, reconnected at once) and prints resident memory
/// after a warm-up and at the end.
fn soak(source: &str, cycles: u64) -> anyhow::Result<()> {
    let source = Source::parse(source, std::path::Path::new(".")).context("soak source")?;
    let options = CameraOptions {
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        ..CameraOptions::default()
    };
    let slot = FrameSlot::new();
    let mut camera = Camera::start("soak", source, options, slot.clone());
    let wait_for = |camera: &Camera, n: u64| -> anyhow::Result<()> {
        let t0 = Instant::now();
        while camera.status().reconnects < n {
            while slot.take_timeout(Duration::from_millis(1)).is_some() {}
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("soak stuck at {} reconnects", camera.status().reconnects);
            }
        }
        Ok(())
    };
    let warmup = 20;
    wait_for(&camera, warmup)?;
    let before = rss_kib();
    let t0 = Instant::now();
    wait_for(&camera, warmup + cycles)?;
    let after = rss_kib();
    let took = t0.elapsed();
    let frames = camera.status().frames_received;
    camera.stop();
    println!(
        "reconnect soak: {cycles} pipeline rebuilds in {:.1} s ({frames} frames); RSS {:.1} MiB before, {:.1} MiB after ({:+.1} MiB)",
        took.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after as f64 - before as f64) / 1024.0
    );
    Ok(())
}
