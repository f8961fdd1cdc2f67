//! A loaded model must cost nothing between frames. ONNX Runtime's intra-op
//! workers spin while a run is in progress, and by default went on spinning
//! for a while after it returned: some 35 ms of CPU in the 200 ms after each
//! run, which a camera at 10 fps paid on every frame.
//!
//! This file holds one test on purpose: it measures the whole process's CPU
//! time, so nothing else may run in the process beside it.

use std::path::PathBuf;
use std::time::Duration;

use vigil_inference::{Detector, ImageView, ModelOptions, Scratch};

/// CPU time of every thread alive in this process, from the scheduler's own
/// nanosecond count (`/proc/self/task/*/schedstat`, first field).
fn process_cpu_time() -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task entry").path().join("schedstat");
        // A thread that ended since the listing has nothing left to count.
        if let Ok(stat) = std::fs::read_to_string(&path) {
            ns += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

#[test]
fn runner_threads_stop_spinning_once_a_run_has_returned() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ball/ball.onnx");
    // Two intra-op threads: one worker besides the calling thread, the one
    // that used to spin.
    let options = ModelOptions { intra_threads: 2, ..ModelOptions::default() };
    let det = Detector::load("ball", &model, options).expect("load the ball model");
    let (w, h) = (640u32, 480u32);
    let img = vec![40u8; (w * h * 3) as usize];
    let view = ImageView::new(&img, w, h, (w * 3) as usize).expect("view");
    let mut scratch = Scratch::default();
    for _ in 0..3 {
        det.detect(&view, &mut scratch).expect("detect");
    }
    // The window itself is the measurement: nothing is awaited, the process
    // is idle by construction, and every CPU nanosecond in it is waste.
    let before = process_cpu_time();
    std::thread::sleep(Duration::from_millis(200));
    let idle = process_cpu_time() - before;
    assert!(
        idle < Duration::from_millis(10),
        "the process burnt {idle:?} of CPU in the 200 ms after a run with nothing to do: \
         ONNX Runtime's workers are still spinning (session.force_spinning_stop)"
    );
}
