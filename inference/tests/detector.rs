//! The detector through real ONNX Runtime, on the committed ball fixture.

use std::path::PathBuf;

use vigil_inference::{Detector, ImageView, InferenceError, ModelOptions, RunOn, Scratch};

fn ball_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ball/ball.onnx")
}

/// A white disk of radius `r` centred on (cx, cy), on black, packed RGB with
/// `pad` spare bytes at the end of each row.
fn disk_image(w: usize, h: usize, pad: usize, disks: &[(f32, f32, f32)]) -> Vec<u8> {
    let stride = w * 3 + pad;
    let mut img = vec![0u8; stride * h];
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            if disks.iter().any(|&(cx, cy, r)| (px - cx).powi(2) + (py - cy).powi(2) <= r * r) {
                img[y * stride + x * 3..y * stride + x * 3 + 3].fill(255);
            }
        }
    }
    img
}

fn options() -> ModelOptions {
    let mut o = ModelOptions::default();
    o.overrides.confidence = Some(0.5);
    o.overrides.iou = Some(0.45);
    o
}

/// Letterbox exactness: a ball drawn at a known place in frames of many
/// non-square sizes (landscape and portrait, exact 2x and arbitrary scales,
/// padded rows) comes back at that place within one pixel.
#[test]
fn finds_the_ball_where_it_is_in_non_square_images_within_one_pixel() {
    let det = Detector::load("ball", &ball_model(), options()).expect("load");
    assert_eq!(det.info().labels(), ["ball".to_string()]);
    assert_eq!(det.info().input_size(), Some((640, 640)));
    assert_eq!(det.info().sha256.len(), 64);
    let mut scratch = Scratch::default();
    let sizes = [
        (1280usize, 720usize, 4usize),
        (1000, 700, 0),
        (1920, 1080, 0),
        (480, 640, 8),
        (333, 517, 1),
        (641, 479, 0),
    ];
    for (w, h, pad) in sizes {
        // A ball about 40 px across once letterboxed to 640.
        let gain = (640.0 / w as f32).min(640.0 / h as f32);
        let r = 20.0 / gain;
        for (fx, fy) in [(0.3f32, 0.3f32), (0.77, 0.81), (0.5, 0.5)] {
            let (cx, cy) = (fx * w as f32, fy * h as f32);
            let img = disk_image(w, h, pad, &[(cx, cy, r)]);
            let view = ImageView::new(&img, w as u32, h as u32, w * 3 + pad).expect("view");
            let dets = det.detect(&view, &mut scratch).expect("detect").0.detections;
            assert_eq!(dets.len(), 1, "{w}x{h} ball at {cx},{cy}: {dets:?}");
            let (bx, by) = dets[0].bbox.center();
            assert!(
                (bx - cx).abs() <= 1.0 && (by - cy).abs() <= 1.0,
                "{w}x{h}: ball at ({cx}, {cy}), box centre ({bx}, {by})"
            );
            let bw = dets[0].bbox.x2 - dets[0].bbox.x1;
            assert!((bw - 2.0 * r).abs() <= 2.0 / gain, "{w}x{h}: box width {bw}, ball {}", 2.0 * r);
        }
    }
}

#[test]
fn finds_two_balls_and_nothing_in_an_empty_frame() {
    let det = Detector::load("ball", &ball_model(), options()).expect("load");
    let mut scratch = Scratch::default();
    let img = disk_image(640, 480, 0, &[(100.0, 100.0, 20.0), (500.0, 300.0, 20.0)]);
    let view = ImageView::new(&img, 640, 480, 640 * 3).expect("view");
    let dets = det.detect(&view, &mut scratch).expect("detect").0.detections;
    assert_eq!(dets.len(), 2, "{dets:?}");
    let empty = vec![0u8; 640 * 480 * 3];
    let view = ImageView::new(&empty, 640, 480, 640 * 3).expect("view");
    let dets = det.detect(&view, &mut scratch).expect("detect").0.detections;
    assert!(dets.is_empty(), "{dets:?}");
}

#[test]
fn refuses_files_that_are_not_models_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"this is not a model").expect("write");
    let err = Detector::load("junk", &junk, options()).expect_err("junk must not load");
    assert!(matches!(err, InferenceError::ModelLoad { .. }), "{err}");
    assert!(err.to_string().contains("not a .pt file, not truncated"), "{err}");

    let truncated = dir.path().join("truncated.onnx");
    let bytes = std::fs::read(ball_model()).expect("read");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    assert!(matches!(Detector::load("t", &truncated, options()), Err(InferenceError::ModelLoad { .. })));

    let missing = dir.path().join("missing.onnx");
    let err = Detector::load("m", &missing, options()).expect_err("missing");
    assert!(matches!(err, InferenceError::ModelUnreadable { .. }), "{err}");
}

/// Session copies allocate from the one CPU arena the process registers
/// (what keeps a swap from growing a second set of arenas); runs on two
/// copies at once, from two threads, find what one session alone finds.
#[test]
fn session_copies_share_the_arena_and_agree_when_run_at_once() {
    let single = Detector::load("ball", &ball_model(), options()).expect("load");
    assert!(
        vigil_inference::runtime::shared_arena(),
        "the shared CPU arena was not registered with ONNX Runtime"
    );
    let copies = Detector::load("ball", &ball_model(), ModelOptions { sessions: 2, ..options() })
        .expect("load two copies");
    assert_eq!(copies.sessions(), 2);
    let (w, h) = (800usize, 600usize);
    let images: Vec<Vec<u8>> = (0..4)
        .map(|i| disk_image(w, h, 0, &[(150.0 + 120.0 * i as f32, 200.0 + 50.0 * i as f32, 30.0)]))
        .collect();
    let boxes = |det: &Detector, img: &[u8], scratch: &mut Scratch| {
        let view = ImageView::new(img, w as u32, h as u32, w * 3).expect("view");
        let dets = det.detect(&view, scratch).expect("detect").0.detections;
        dets.iter().map(|d| [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2]).collect::<Vec<_>>()
    };
    let mut scratch = Scratch::default();
    let expected: Vec<_> = images.iter().map(|img| boxes(&single, img, &mut scratch)).collect();
    assert!(expected.iter().all(|b| b.len() == 1), "one ball per image: {expected:?}");
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|t| {
                let (copies, images, expected, boxes) = (&copies, &images, &expected, &boxes);
                s.spawn(move || {
                    let mut scratch = Scratch::default();
                    for round in 0..10 {
                        let i = (round + t) % images.len();
                        assert_eq!(boxes(copies, &images[i], &mut scratch), expected[i], "image {i}");
                    }
                })
            })
            .collect();
        for r in runs {
            r.join().expect("runner thread");
        }
    });
}

/// Lanes load when asked, not before; on them a frame gets exactly what the
/// main copy gives it, and two lanes run at once from two threads agree.
#[test]
fn lanes_load_when_asked_and_give_what_the_main_copy_gives() {
    let det = Detector::load("ball", &ball_model(), ModelOptions { intra_threads: 2, lanes: 2, ..options() })
        .expect("load");
    assert_eq!(det.lanes(), 2);
    assert!(!det.lanes_ready(), "lanes load the first time frames queue, not with the model");
    let (w, h) = (800usize, 600usize);
    let images: Vec<Vec<u8>> = (0..4)
        .map(|i| disk_image(w, h, 0, &[(150.0 + 120.0 * i as f32, 200.0 + 50.0 * i as f32, 30.0)]))
        .collect();
    let boxes = |img: &[u8], on: RunOn, scratch: &mut Scratch| {
        let view = ImageView::new(img, w as u32, h as u32, w * 3).expect("view");
        det.prepare(&view, &mut scratch.prepared);
        let (pred, _) =
            det.run_prepared_on(&[&scratch.prepared], &mut scratch.run, on).expect("run").pop().expect("one");
        pred.detections.iter().map(|d| [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2]).collect::<Vec<_>>()
    };
    let mut scratch = Scratch::default();
    let expected: Vec<_> = images.iter().map(|img| boxes(img, RunOn::Main, &mut scratch)).collect();
    assert!(expected.iter().all(|b| b.len() == 1), "one ball per image: {expected:?}");
    // Not loaded yet: a run meant for a lane goes to the main copy.
    assert_eq!(boxes(&images[0], RunOn::Lane(1), &mut scratch), expected[0]);

    det.load_lanes().expect("lanes load");
    assert!(det.lanes_ready());
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|lane| {
                let (images, expected, boxes) = (&images, &expected, &boxes);
                s.spawn(move || {
                    let mut scratch = Scratch::default();
                    for round in 0..10 {
                        let i = (round + lane) % images.len();
                        assert_eq!(
                            boxes(&images[i], RunOn::Lane(lane), &mut scratch),
                            expected[i],
                            "image {i}"
                        );
                    }
                })
            })
            .collect();
        for r in runs {
            r.join().expect("lane thread");
        }
    });
}

/// Lanes are loaded from the model's file when frames first queue: a file
/// changed since then is refused (the lanes would run another model), and
/// the model keeps running on its main copy.
#[test]
fn lanes_refuse_a_model_file_changed_since_it_was_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ball.onnx");
    std::fs::copy(ball_model(), &path).expect("copy");
    let det = Detector::load("ball", &path, ModelOptions { intra_threads: 2, lanes: 2, ..options() })
        .expect("load");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(&[(6 << 3) | 2, 2, b'v', b'2']); // a doc_string: same graph, other bytes
    std::fs::write(&path, bytes).expect("write");
    let e = det.load_lanes().expect_err("a changed file must be refused");
    assert!(e.to_string().contains("changed since the model was loaded"), "{e}");
    assert!(!det.lanes_ready());
    let img = disk_image(640, 480, 0, &[(320.0, 240.0, 20.0)]);
    let view = ImageView::new(&img, 640, 480, 640 * 3).expect("view");
    let mut scratch = Scratch::default();
    det.prepare(&view, &mut scratch.prepared);
    let out =
        det.run_prepared_on(&[&scratch.prepared], &mut scratch.run, RunOn::Lane(0)).expect("runs on main");
    assert_eq!(out[0].0.detections.len(), 1);
}
