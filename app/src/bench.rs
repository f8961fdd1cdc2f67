//! `vigil bench`: where the time goes for one model. Runs the full path
//! (preprocess, `session.run`, post-process) on a 640x480 and a 1920x1080
//! frame, then `session.run` alone on the same thread count, and prints
//! median and p99 of each stage.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use vigil_inference::{Detector, ImageView, ModelOptions, Scratch};

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
        provider: crate::infer::provider(&args.provider)?,
        ..ModelOptions::default()
    };
    let detector = Detector::load("bench", &args.model, options)?;
    let info = detector.info();
    let iterations = args.iterations.max(1);
    let mut cases = Vec::new();
    for (w, h) in [(640u32, 480u32), (1920, 1080)] {
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
        let (pre, run, post, bare) = (stat(pre), stat(run), stat(post), stat(bare));
        let overhead = (pre.p50_ms + post.p50_ms) / run.p50_ms * 100.0;
        cases.push(Case {
            input: format!("{w}x{h}"),
            preprocess: pre,
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
        "{:<10} {:>17} {:>17} {:>17} {:>17} {:>12}",
        "frame", "preprocess ms", "session.run ms", "postprocess ms", "bare run ms", "pre+post"
    );
    println!(
        "{:<10} {:>17} {:>17} {:>17} {:>17} {:>12}",
        "", "p50 / p99", "p50 / p99", "p50 / p99", "p50 / p99", "% of run"
    );
    for c in &cases {
        let f = |s: &Stat| format!("{:.3} / {:.3}", s.p50_ms, s.p99_ms);
        println!(
            "{:<10} {:>17} {:>17} {:>17} {:>17} {:>11.2}%",
            c.input,
            f(&c.preprocess),
            f(&c.run),
            f(&c.postprocess),
            f(&c.bare_run),
            c.overhead_percent
        );
    }
    Ok(())
}
