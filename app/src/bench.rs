//! `vigil bench`: where the time goes for one model. Runs the full path
//! (preprocess, `session.run`, post-process) on a 640x480, a 1280x720 and a
//! 1920x1080 frame, then `session.run` alone on the same thread count, and
//! prints median and p99 of each stage. Preprocessing is also timed from the
//! frame as a decoder gives it (I420 planes), which is what cameras feed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use vigil_inference::{Detector, I420View, ImageView, ModelOptions, Prepared, Scratch, YuvMatrix};

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The ONNX model.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Measured runs per case.
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    /// Unmeasured runs first (caches, lazy allocations).
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// ONNX Runtime threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Execution provider: cpu, cuda, tensorrt, openvino.
    #[arg(long, default_value = "cpu")]
    pub provider: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Stat {
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Case {
    input: String,
    preprocess: Stat,
    /// The same frame as I420 planes (what a camera's decoder gives).
    preprocess_i420: Stat,
    run: Stat,
    postprocess: Stat,
    bare_run: Stat,
    /// (preprocess + postprocess) / run, medians, in percent.
    overhead_percent: f64,
}

fn stat(mut v: Vec<Duration>) -> Stat {
    v.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let p99 = v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1];
    Stat { p50_ms: ms(v[v.len() / 2]), p99_ms: ms(p99) }
}

/// A deterministic test card: smooth gradients with fine noise, so resizing
/// does real work and no two rows are alike.
fn test_frame(w: u32, h: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let mut v = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h {
        for x in 0..w {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let n = state & 31;
            v.push(((x * 255 / w + n) & 255) as u8);
            v.push(((y * 255 / h + n) & 255) as u8);
            v.push((((x + y) * 255 / (w + h) + n) & 255) as u8);
        }
    }
    v
}

pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let options = ModelOptions {
        intra_threads: args.threads,
        // One frame per run, as the appliance runs on the CPU.
        max_batch: 1,
        provider: crate::infer::provider(&args.provider)?,
        ..ModelOptions::default()
    };
    let detector = Detector::load("bench", &args.model, options)?;
    let info = detector.info();
    let iterations = args.iterations.max(1);
    let mut cases = Vec::new();
    for (w, h) in [(640u32, 480u32), (1280, 720), (1920, 1080)] {
        let frame = test_frame(w, h);
        let view = ImageView::new(&frame, w, h, w as usize * 3).context("test frame")?;
        let mut scratch = Scratch::default();
        for _ in 0..args.warmup {
            detector.detect(&view, &mut scratch)?;
        }
        let (mut pre, mut run, mut post) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iterations {
            let (_, t) = detector.detect(&view, &mut scratch)?;
            pre.push(t.preprocess);
            run.push(t.run);
            post.push(t.postprocess);
        }
        let bare = detector.bare_runs(&view, &mut scratch, iterations)?;
        let pre_i420 = time_i420(&detector, &frame, w, h, iterations)?;
        let (pre, run, post, bare) = (stat(pre), stat(run), stat(post), stat(bare));
        let overhead = (pre.p50_ms + post.p50_ms) / run.p50_ms * 100.0;
        cases.push(Case {
            input: format!("{w}x{h}"),
            preprocess: pre,
            preprocess_i420: pre_i420,
            run,
            postprocess: post,
            bare_run: bare,
            overhead_percent: (overhead * 100.0).round() / 100.0,
        });
    }
    let threads =
        if args.threads == 0 { "ONNX Runtime default".to_string() } else { args.threads.to_string() };
    if args.json {
        let j = serde_json::json!({
            "model": args.model,
            "decoder": info.decoder().as_str(),
            "input": info.input_size(),
            "provider": info.provider.active,
            "threads": threads,
            "iterations": iterations,
            "cases": cases,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let size = info.input_size().map(|(w, h)| format!("{w}x{h}")).unwrap_or_else(|| "dynamic".into());
    println!(
        "model {} ({}, input {size}, {}, threads: {threads}, {iterations} runs per case)",
        args.model.display(),
        info.decoder(),
        info.provider.active
    );
    println!(
        "{:<10} {:>17} {:>17} {:>17} {:>17} {:>17} {:>12}",
        "frame",
        "preprocess ms",
        "from I420 ms",
        "session.run ms",
        "postprocess ms",
        "bare run ms",
        "pre+post"
    );
    println!(
        "{:<10} {:>17} {:>17} {:>17} {:>17} {:>17} {:>12}",
        "", "p50 / p99", "p50 / p99", "p50 / p99", "p50 / p99", "p50 / p99", "% of run"
    );
    for c in &cases {
        let f = |s: &Stat| format!("{:.3} / {:.3}", s.p50_ms, s.p99_ms);
        println!(
            "{:<10} {:>17} {:>17} {:>17} {:>17} {:>17} {:>11.2}%",
            c.input,
            f(&c.preprocess),
            f(&c.preprocess_i420),
            f(&c.run),
            f(&c.postprocess),
            f(&c.bare_run),
            c.overhead_percent
        );
    }
    Ok(())
}

/// Preprocessing timed from I420 planes of `rgb` (BT.601 studio swing,
/// chroma from the top-left pixel of each 2x2 block: the values do not
/// matter to the timing, only the work).
fn time_i420(detector: &Detector, rgb: &[u8], w: u32, h: u32, iterations: usize) -> anyhow::Result<Stat> {
    let (wu, hu) = (w as usize, h as usize);
    let (cw, ch) = (wu.div_ceil(2), hu.div_ceil(2));
    let px = |x: usize, y: usize| {
        let p = &rgb[(y * wu + x) * 3..(y * wu + x) * 3 + 3];
        (f32::from(p[0]), f32::from(p[1]), f32::from(p[2]))
    };
    let luma: Vec<u8> = (0..hu)
        .flat_map(|y| (0..wu).map(move |x| (y, x)))
        .map(|(y, x)| {
            let (r, g, b) = px(x, y);
            (16.0 + 0.257 * r + 0.504 * g + 0.098 * b) as u8
        })
        .collect();
    let chroma = |f: fn(f32, f32, f32) -> f32| -> Vec<u8> {
        (0..ch)
            .flat_map(|y| (0..cw).map(move |x| (y, x)))
            .map(|(y, x)| {
                let (r, g, b) = px(2 * x, 2 * y);
                f(r, g, b).clamp(0.0, 255.0) as u8
            })
            .collect()
    };
    let u = chroma(|r, g, b| 128.0 - 0.148 * r - 0.291 * g + 0.439 * b);
    let v = chroma(|r, g, b| 128.0 + 0.439 * r - 0.368 * g - 0.071 * b);
    let view = I420View::new((&luma, wu), (&u, cw), (&v, cw), w, h, YuvMatrix::Bt601, false)
        .context("I420 test frame")?;
    let mut prepared = Prepared::default();
    detector.prepare_i420(&view, &mut prepared);
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        detector.prepare_i420(&view, &mut prepared);
        times.push(prepared.preprocess_time());
    }
    Ok(stat(times))
}
