//! Shared inference: frames of several cameras batched into one run of one
//! session. A batch must give each frame exactly what a run on it alone
//! gives, and four cameras on one model must each get every frame analysed,
//! a hot swap in the middle included.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;
use vigil_inference::{Detector, ImageView, ModelOptions, Prediction, Prepared, RunScratch, Scratch};

/// 640x480 RGB, dark and slightly textured, with a white disc at (cx, cy).
fn frame_with_ball(cx: f32, cy: f32) -> Vec<u8> {
    let (w, h) = (640usize, 480usize);
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let inside = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) <= 20.0 * 20.0;
            let v = if inside { 240 } else { 10 + ((x * 7 + y * 13) % 9) as u8 };
            rgb[(y * w + x) * 3..][..3].fill(v);
        }
    }
    rgb
}

#[test]
fn a_batch_gives_each_frame_what_a_run_on_it_alone_gives() {
    vigil_inference::runtime::init().expect("ONNX Runtime (deploy/bootstrap.sh installs it)");
    let single = Detector::load("ball", &ball_model(), ModelOptions::default()).expect("ball");
    let dynamic =
        Detector::load("ball", &batched_ball_model(None), ModelOptions::default()).expect("dynamic batch");
    let fixed4 =
        Detector::load("ball", &batched_ball_model(Some(4)), ModelOptions::default()).expect("fixed batch");
    assert_eq!(single.batch_limit(), 1);
    // A dynamic batch is capped by the model limits so one run can't take the box's memory.
    assert_eq!(dynamic.batch_limit(), vigil_inference::default_max_batch());
    assert_eq!(fixed4.batch_limit(), 4);

    let frames: Vec<Vec<u8>> = [(100.0, 100.0), (320.0, 240.0), (560.0, 400.0)]
        .iter()
        .map(|&(x, y)| frame_with_ball(x, y))
        .collect();
    let views: Vec<ImageView<'_>> =
        frames.iter().map(|f| ImageView::new(f, 640, 480, 640 * 3).expect("view")).collect();
    let alone: Vec<_> =
        views.iter().map(|v| single.detect(v, &mut Scratch::default()).expect("single run").0).collect();
    for (i, p) in alone.iter().enumerate() {
        assert_eq!(p.detections.len(), 1, "frame {i}: one ball, alone: {p:?}");
    }

    for (what, detector) in [("dynamic", &dynamic), ("fixed 4, padded", &fixed4)] {
        let mut prepared: Vec<Prepared> = views.iter().map(|_| Prepared::default()).collect();
        for (v, p) in views.iter().zip(&mut prepared) {
            detector.prepare(v, p);
        }
        let items: Vec<&Prepared> = prepared.iter().collect();
        let together = detector.run_prepared(&items, &mut RunScratch::default()).expect("batched run");
        assert_eq!(together.len(), 3);
        for (i, ((batched, _), alone)) in together.iter().zip(&alone).enumerate() {
            assert_same_detections(&format!("{what}, frame {i}"), batched, alone);
        }
    }

    // Capped at one frame a run (the CPU default), a batch-taking model is
    // not probed with two, and ONNX Runtime plans the memory of that one
    // shape once: the same answers, run after run.
    let one_at_a_time = Detector::load(
        "ball",
        &batched_ball_model(None),
        ModelOptions { max_batch: 1, ..ModelOptions::default() },
    )
    .expect("dynamic batch, one frame a run");
    assert_eq!(one_at_a_time.batch_limit(), 1);
    let mut scratch = Scratch::default();
    for _ in 0..2 {
        for (i, (v, alone)) in views.iter().zip(&alone).enumerate() {
            let p = one_at_a_time.detect(v, &mut scratch).expect("run").0;
            assert_same_detections(&format!("one at a time, frame {i}"), &p, alone);
        }
    }

    // More frames than a fixed batch takes is refused, not truncated.
    let mut five: Vec<Prepared> = (0..5).map(|_| Prepared::default()).collect();
    for p in &mut five {
        fixed4.prepare(&views[0], p);
    }
    let items: Vec<&Prepared> = five.iter().collect();
    assert!(fixed4.run_prepared(&items, &mut RunScratch::default()).is_err());
}

/// The same boxes (within 0.05 px) and scores (within 1e-3), in order.
fn assert_same_detections(what: &str, got: &Prediction, expected: &Prediction) {
    assert_eq!(got.detections.len(), expected.detections.len(), "{what}");
    for (b, a) in got.detections.iter().zip(&expected.detections) {
        let d = [b.bbox.x1 - a.bbox.x1, b.bbox.y1 - a.bbox.y1, b.bbox.x2 - a.bbox.x2, b.bbox.y2 - a.bbox.y2];
        assert!(d.iter().all(|d| d.abs() < 0.05), "{what}: {b:?} vs {a:?}");
        assert!((b.score - a.score).abs() < 1e-3, "{what}: {b:?} vs {a:?}");
    }
}

#[test]
fn four_cameras_share_one_model_in_batches_and_a_swap_loses_no_frame() {
    let m = cameras_with_a_swap(4, "batch = 4\nsessions = 1\nthreads = 2", 1);
    let (runs, frames_run) =
        (m["runs"].as_u64().expect("runs"), m["frames_run"].as_u64().expect("frames_run"));
    assert!(frames_run as f64 >= 1.5 * runs as f64, "frames were batched: {frames_run} frames, {runs} runs");
}

#[test]
fn four_cameras_on_side_by_side_sessions_lose_no_frame_to_a_swap() {
    cameras_with_a_swap(4, "sessions = 2\nthreads = 1", 2);
}

/// One camera whose frames come faster than the model runs them: its model
/// gets two lanes (planned for one camera with two threads), its queued
/// frames run side by side, and it still gets every frame analysed, in
/// order, a swap included (the new version loads its own lanes).
#[test]
fn one_camera_runs_queued_frames_on_lanes_in_order_and_a_swap_loses_no_frame() {
    let m = cameras_with_a_swap(1, "threads = 2", 1);
    assert_eq!(m["lanes"], 2, "{m}");
    // Decoding a 320x240 clip takes a fraction of a 640x640 run: frames
    // come faster than main runs.
    assert_eq!(m["lanes_ready"], true, "{m}");
    assert!(m["lane_runs"].as_u64().is_some_and(|n| n > 0), "{m}");
    println!("lanes: {} of {} runs", m["lane_runs"], m["runs"]);
}

/// `cameras` lossless cameras on one model configured by `model_extra`, a
/// swap to v2 mid-run: every frame analysed, by v1 then v2 per camera, in
/// frame order. Returns the model's health.
fn cameras_with_a_swap(cameras: usize, model_extra: &str, sessions: u64) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("ball.mp4");
    // 1200 frames in all: long enough for a swap to land mid-run.
    let frames_per_clip = 1200 / cameras as u32;
    make_clip(&clip, frames_per_clip, 30);
    let model = batched_ball_model(None);

    let broker = Mosquitto::start();
    let device = format!("cams{cameras}x{sessions}");
    let sub = Subscriber::connect(broker.port, &format!("vigil/{device}/detections"));
    let mut config = detections_config(&device, &broker.url(), &model) + model_extra + "\n";
    // Played as fast as they decode, losslessly: every frame must be analysed.
    for i in 1..=cameras {
        config += &format!(
            "[[cameras]]\nname = \"cam{i}\"\nsource = \"file://{}\"\nmodel = \"ball\"\nloop = false\nrealtime = false\nmotion = {{ enabled = false }}\n",
            clip.display()
        );
    }
    let v = Vigil::start(&config);
    let names: Vec<String> = (1..=cameras).map(|i| format!("cam{i}")).collect();
    let processed = |v: &Vigil| -> u64 {
        names.iter().map(|c| camera_health(v, c)["frames_processed"].as_u64().unwrap_or(0)).sum()
    };
    wait_until(Duration::from_secs(60), "a quarter of the frames analysed", || processed(&v) >= 300);

    // Swap mid-run.
    let auth = format!("Bearer {}", v.token.as_deref().expect("token auth is the default"));
    let headers = [("Authorization", auth.as_str())];
    let v2 = model_variant(&model, "vigil batching test v2");
    let (status, _, body) = http_full(
        "POST",
        &format!("{}/api/v1/models/ball/versions?activate=true", v.web),
        &headers,
        Some(&v2),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let at_swap = processed(&v);
    assert!(at_swap < cameras as u64 * u64::from(frames_per_clip), "the swap must land mid-run: {at_swap}");

    wait_until(Duration::from_secs(180), "all four clips decoded to the end", || {
        names.iter().all(|c| camera_health(&v, c)["state"] == "ended")
    });
    // The camera ends when its decoder does; the last frames are still with
    // the model then. A frame lost anywhere would keep this from holding.
    wait_until(Duration::from_secs(30), "every frame decoded to be analysed", || {
        names.iter().all(|c| camera_health(&v, c)["frames_processed"] == frames_per_clip)
    });
    let h = v.health();
    for c in &names {
        let c = camera_health(&v, c);
        assert_eq!(c["frames_received"], frames_per_clip, "{c}");
        assert_eq!(c["frames_processed"], frames_per_clip, "every frame analysed, swap or not: {c}");
        assert_eq!(c["frames_dropped_busy"], 0, "{c}");
        assert_eq!(c["inference_errors"], 0, "{c}");
        // The last frame was analysed after it arrived (ages in whole ms,
        // read one after the other: one ms of slack).
        let (arrived, analysed) = (c["last_frame_age_ms"].as_u64(), c["last_processed_age_ms"].as_u64());
        assert!(analysed.zip(arrived).is_some_and(|(p, f)| p <= f + 1), "{c}");
    }
    let m = &h["models"][0];
    assert_eq!(m["version"], 2, "{m}");
    assert_eq!(m["sessions"], sessions, "{m}");
    let (runs, frames_run) =
        (m["runs"].as_u64().expect("runs"), m["frames_run"].as_u64().expect("frames_run"));
    println!(
        "{frames_run} frames in {runs} runs: {:.2} frames per run, swap after {at_swap}",
        frames_run as f64 / runs as f64
    );
    assert!(frames_run >= cameras as u64 * u64::from(frames_per_clip));

    // Per camera the versions go 1 then 2, never back, and both served;
    // the frames go out in the order they came.
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    while let Some(bytes) = sub.try_next_on(&format!("vigil/{device}/detections"), Duration::from_millis(500))
    {
        let ev: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        let camera = ev["camera"].as_str().expect("camera").to_owned();
        seqs.entry(camera.clone()).or_default().push(ev["frame"]["seq"].as_u64().expect("frame.seq"));
        versions.entry(camera).or_default().push(model_version(&ev));
    }
    let all: Vec<u64> = versions.values().flatten().copied().collect();
    assert!(all.contains(&1) && all.contains(&2), "both versions served");
    for (camera, vs) in &versions {
        assert!(vs.windows(2).all(|w| w[0] <= w[1]), "{camera}: a v1 frame after a v2 frame");
    }
    for (camera, s) in &seqs {
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{camera}: frames out of order");
    }
    m.clone()
}
