//! Models that misbehave on purpose (models/fixtures/make_misbehaving.py),
//! through real ONNX Runtime: an output whose shape follows the picture, and
//! runs that never end (issue #20, items 6 and 7).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vigil_inference::{
    Detector, ImageView, InferenceError, ModelLimits, ModelOptions, Prepared, RunCancel, RunOn, RunScratch,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> PathBuf {
    root().join("models/fixtures/misbehaving").join(name)
}

/// How much later than asked a stop may come on a busy 2-core test box
/// (ONNX Runtime itself stops within a Loop trip, microseconds).
const SLACK: Duration = Duration::from_secs(1);

/// A 32x32 frame, black but for its first `red` pixels (row by row) in full red.
fn red_frame(red: usize) -> Vec<u8> {
    let mut img = vec![0u8; 32 * 32 * 3];
    for px in img.chunks_exact_mut(3).take(red) {
        px[0] = 255;
    }
    img
}

fn grey_frame(v: u8) -> Vec<u8> {
    vec![v; 32 * 32 * 3]
}

fn prepared(det: &Detector, img: &[u8]) -> Prepared {
    let view = ImageView::new(img, 32, 32, 32 * 3).expect("view");
    let mut p = Prepared::default();
    det.prepare(&view, &mut p);
    p
}

#[test]
fn the_misbehaving_models_are_what_their_script_makes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let py = root().join(".deps/venv/bin/python");
    assert!(py.is_file(), "{} missing: run deploy/bootstrap.sh", py.display());
    let status = Command::new(py)
        .arg(root().join("models/fixtures/make_misbehaving.py"))
        .arg(dir.path())
        .status()
        .expect("run the fixture script");
    assert!(status.success(), "the script's self-test failed");
    let mut compared = 0;
    for entry in std::fs::read_dir(dir.path()).expect("read_dir") {
        let rebuilt = entry.expect("entry").path();
        let name = rebuilt.file_name().expect("name").to_owned();
        let committed = std::fs::read(fixture(Path::new(&name).to_str().expect("utf8")))
            .unwrap_or_else(|_| panic!("{name:?} is made by the script but not committed"));
        assert!(
            std::fs::read(&rebuilt).expect("rebuilt") == committed,
            "{name:?} differs; re-run the script"
        );
        compared += 1;
    }
    assert_eq!(compared, 7);
}

/// Detections on a frame as (label, box centre x), or the error.
fn detect(
    det: &Detector,
    scratch: &mut RunScratch,
    img: &[u8],
) -> Result<Vec<(String, f32)>, InferenceError> {
    let p = prepared(det, img);
    let mut out = det.run_prepared(&[&p], scratch)?;
    let (pred, _) = out.pop().expect("one prediction");
    Ok(pred.detections.iter().map(|d| (d.label.to_string(), d.bbox.center().0)).collect())
}

/// The model's output rows follow the number of red pixels: a frame that
/// floods it gives [1, 3, N] (v8) or [1, N, 3] (v5), fewer than a box needs.
fn data_dependent_outputs_are_checked_on_every_frame(model: &str, flooded_shape: &str) {
    let det = Detector::load("dd", &fixture(model), ModelOptions::default()).expect("loads: warm-up fits");
    let mut scratch = RunScratch::default();
    assert_eq!(detect(&det, &mut scratch, &red_frame(0)).expect("dark frame"), vec![]);
    let three = detect(&det, &mut scratch, &red_frame(3)).expect("three red pixels");
    assert_eq!(three, vec![("even".into(), 2.0), ("odd".into(), 6.0), ("even".into(), 10.0)]);
    // 200 red pixels: the output has 3 rows, fewer than a box needs.
    let err = detect(&det, &mut scratch, &red_frame(200)).expect_err("an output no box fits");
    assert!(matches!(err, InferenceError::Output(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("with at least one class") && msg.contains(flooded_shape), "{msg}");
    // The model and the scratch keep working on the frames that fit.
    assert_eq!(detect(&det, &mut scratch, &red_frame(64)).expect("64 red pixels").len(), 64);
    assert_eq!(detect(&det, &mut scratch, &red_frame(1)).expect("one red pixel").len(), 1);
}

#[test]
fn a_yolov8_output_whose_rows_shrink_on_one_frame_is_an_error_for_that_frame_only() {
    data_dependent_outputs_are_checked_on_every_frame("data_dependent_v8.onnx", "[1, 3, 64]");
}

#[test]
fn a_yolov5_output_whose_columns_shrink_on_one_frame_is_an_error_for_that_frame_only() {
    data_dependent_outputs_are_checked_on_every_frame("data_dependent_v5.onnx", "[1, 64, 3]");
}

#[test]
fn a_model_whose_test_run_never_ends_is_refused_once_its_limit_passes() {
    let limits = ModelLimits { test_run: Duration::from_millis(300), ..ModelLimits::default() };
    let t0 = Instant::now();
    let err = Detector::load_with("loop", &fixture("endless_loop.onnx"), ModelOptions::default(), &limits)
        .expect_err("never finishes its test run");
    let took = t0.elapsed();
    assert!(matches!(err, InferenceError::TooLarge { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("did not finish within 300.0ms") && msg.contains("raise test_run"), "{msg}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(300) + SLACK, "took {took:?}");
}

#[test]
fn a_run_past_its_deadline_is_stopped_and_the_next_runs_go_on() {
    let det = Detector::load("loop", &fixture("endless_when_bright.onnx"), ModelOptions::default())
        .expect("a dark frame finishes");
    let (bright, dark) = (prepared(&det, &grey_frame(255)), prepared(&det, &grey_frame(0)));
    let mut scratch = RunScratch::default();
    for _ in 0..2 {
        let limit = Duration::from_millis(200);
        let t0 = Instant::now();
        let err = det
            .run_prepared_until(&[&bright], &mut scratch, RunOn::Main, t0 + limit)
            .expect_err("a bright frame never finishes");
        let took = t0.elapsed();
        assert!(matches!(err, InferenceError::Stopped { .. }), "{err}");
        assert!(err.to_string().contains("ran past its limit of"), "{err}");
        assert!(took >= limit && took < limit + SLACK, "stopped after {took:?}");
        // The same scratch (and its stop handle) runs the next frames.
        let far = Instant::now() + Duration::from_secs(30);
        det.run_prepared_until(&[&dark], &mut scratch, RunOn::Main, far)
            .expect("a dark frame, with a deadline");
        det.run_prepared(&[&dark], &mut scratch).expect("a dark frame");
    }
}

#[test]
fn a_run_is_cancelled_from_another_thread() {
    let det = Detector::load("loop", &fixture("endless_when_bright.onnx"), ModelOptions::default())
        .expect("a dark frame finishes");
    let bright = prepared(&det, &grey_frame(255));
    let cancel = RunCancel::new().expect("handle");
    let canceller = {
        let cancel = cancel.clone();
        // The delay is what is tested (a run cancelled while it goes), not
        // a wait for something: a cancel that came first stops it too.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            cancel.cancel();
            Instant::now()
        })
    };
    let mut scratch = RunScratch::default();
    let err = det
        .run_prepared_cancellable(&[&bright], &mut scratch, RunOn::Main, &cancel)
        .expect_err("a bright frame never finishes");
    let returned = Instant::now();
    let cancelled = canceller.join().expect("canceller");
    assert!(matches!(err, InferenceError::Stopped { .. }) && err.to_string().contains("cancelled"), "{err}");
    assert!(returned.duration_since(cancelled) < SLACK, "ran on {:?} after cancel", returned - cancelled);
    // A cancelled handle stops every run given it; a run without goes on.
    let dark = prepared(&det, &grey_frame(0));
    assert!(det.run_prepared_cancellable(&[&dark], &mut scratch, RunOn::Main, &cancel).is_err());
    det.run_prepared(&[&dark], &mut scratch).expect("a dark frame");
}
