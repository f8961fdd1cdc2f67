//! What every decoder fuzz target feeds and checks.
//!
//! A case is the outputs of one run, one per role of the decoder. Each is
//! either missing, *fitting* (the layout that decoder reads, with sizes from
//! the case, so the fuzzer spends its time in the decoding itself), or
//! *wild*: any shape with any number of values (negative, huge or zero
//! dimensions, too few or too many values). Values are any f32, NaN and
//! infinities included. Whatever comes in, a decoder must return (no panic,
//! no read out of bounds: the targets build with AddressSanitizer), quickly
//! and in little memory (libFuzzer's -timeout and -malloc/-rss limits in
//! run.sh), and whatever it finds must be finite and within max_det.

use arbitrary::Arbitrary;
use vigil_inference::DecoderKind;
use vigil_inference::fuzzing::{Settings, decode};

/// The most values a wild tensor gets: enough for every edge, few enough
/// that the decoders whose cost grows with boxes x max_det (Custom Vision's
/// selection) still run thousands of cases a second.
const MAX_VALUES: u64 = 1 << 14;

#[derive(Debug, Arbitrary)]
pub enum Dim {
    /// 0..=63: small enough to be backed by values.
    Small(u8),
    /// Large but plausible as a count: with a zero elsewhere it needs no
    /// values, and a decoder that sizes a buffer by it allocates gigabytes.
    Big(u32),
    /// Anything: negative, huge, `-1` as a dynamic dimension would be.
    Any(i64),
}

#[derive(Debug, Arbitrary)]
pub enum Output {
    Missing,
    /// The decoder's layout for this role, sized by the case's `sizes`.
    Fitting,
    /// Any shape, with as many values as it implies plus `len_delta`.
    Wild {
        dims: Vec<Dim>,
        len_delta: i8,
    },
}

#[derive(Debug, Arbitrary)]
pub enum Declared {
    /// No declared shape (rank unknown).
    Unknown,
    /// The run's own shape, with the dimensions this mask marks as dynamic.
    Same(u8),
    /// Another shape.
    Other(Vec<i64>),
}

#[derive(Debug, Arbitrary)]
pub struct Case {
    outputs: [Output; 4],
    declared: [Declared; 4],
    /// Sizes of the fitting layouts: rows or columns, anchors, height, width.
    sizes: [u8; 4],
    /// Cycled to fill every tensor (zeros when empty).
    values: Vec<f32>,
    conf: f32,
    iou: f32,
    max_det: u16,
    class_offset: i64,
    threshold: f32,
    classes: Option<u16>,
    labels: u8,
    frame: (u16, u16),
}

/// The shape decoder `kind` reads for output `role`, sized by `s`, and
/// often just short of it: fewer rows or columns than a box needs (what
/// made `rows - 4` wrap), no classes, a score tensor one row short. Every
/// size may be 0.
fn fitting(kind: DecoderKind, role: usize, s: [u8; 4]) -> Vec<i64> {
    let [e, n, h, w] = s.map(i64::from);
    // Up to 13x13, Custom Vision's own grid.
    let (h, w) = (h % 14, w % 14);
    let short = e % 2;
    match (kind, role) {
        (DecoderKind::YoloV8, _) => vec![1, e % 12, n],
        (DecoderKind::YoloV5, _) => vec![1, n, e % 13],
        (DecoderKind::End2End, _) => vec![1, n, 5 + e % 3],
        (DecoderKind::Classify, _) => vec![1, e % 8],
        (DecoderKind::CustomVision, _) => vec![1, 5 * (e % 13), h, w],
        (DecoderKind::Ssd | DecoderKind::CustomVisionS1, 0) => vec![1, n, 4],
        (DecoderKind::Ssd, 3) => vec![1],
        (DecoderKind::Ssd | DecoderKind::CustomVisionS1, _) => vec![1, (n - short).max(0)],
        (DecoderKind::Anomalib, 0) => vec![1],
        (DecoderKind::Anomalib, _) if short == 0 => vec![1, 1, h, w],
        (DecoderKind::Anomalib, _) => vec![1, h, w],
    }
}

fn roles(kind: DecoderKind) -> usize {
    match kind {
        DecoderKind::Ssd => 4,
        DecoderKind::CustomVisionS1 | DecoderKind::Anomalib => 3,
        _ => 1,
    }
}

fn tensor(case: &Case, kind: DecoderKind, role: usize) -> Option<(Vec<i64>, Vec<f32>)> {
    let (shape, delta) = match &case.outputs[role] {
        Output::Missing => return None,
        Output::Fitting => (fitting(kind, role, case.sizes), 0),
        Output::Wild { dims, len_delta } => {
            let shape = dims
                .iter()
                .take(6)
                .map(|d| match *d {
                    Dim::Small(n) => i64::from(n % 64),
                    Dim::Big(n) => i64::from(n),
                    Dim::Any(v) => v,
                })
                .collect();
            (shape, i64::from(*len_delta))
        }
    };
    let implied = shape.iter().try_fold(1u64, |n, &d| u64::try_from(d).ok().and_then(|d| n.checked_mul(d)));
    let len = match implied {
        Some(n) if n <= MAX_VALUES => (n as i64 + delta).max(0) as usize,
        _ => case.values.len().min(MAX_VALUES as usize),
    };
    let data = if case.values.is_empty() {
        vec![0.0; len]
    } else {
        case.values.iter().copied().cycle().take(len).collect()
    };
    Some((shape, data))
}

/// Decodes `case` with decoder `kind` and checks what comes out.
pub fn check(kind: DecoderKind, case: &Case) {
    let outputs: Vec<Option<(Vec<i64>, Vec<f32>)>> =
        (0..roles(kind)).map(|r| tensor(case, kind, r)).collect();
    let declared: Vec<Option<Vec<i64>>> = outputs
        .iter()
        .zip(&case.declared)
        .map(|(o, d)| match (d, o) {
            (Declared::Same(mask), Some((shape, _))) => Some(
                shape.iter().enumerate().map(|(k, &d)| if mask >> k & 1 == 1 { -1 } else { d }).collect(),
            ),
            (Declared::Other(shape), _) => Some(shape.iter().copied().take(6).collect()),
            _ => None,
        })
        .collect();
    let settings = Settings {
        conf: case.conf,
        iou: case.iou,
        // Ultralytics' default is the most configs use; more only makes it slower.
        max_det: usize::from(case.max_det % 301),
        class_offset: case.class_offset,
        threshold: case.threshold,
        classes: case.classes.map(|c| usize::from(c % 16)),
        labels: usize::from(case.labels % 16),
    };
    let frame = (u32::from(case.frame.0), u32::from(case.frame.1));
    let Ok(pred) = decode(kind, &outputs, &declared, &settings, frame) else { return };
    for d in &pred.detections {
        let b = d.bbox;
        assert!(
            d.score.is_finite() && [b.x1, b.y1, b.x2, b.y2].iter().all(|v| v.is_finite()),
            "{kind}: a detection that is not finite: {d:?}"
        );
    }
    // Anomaly regions are not capped; every other family keeps max_det.
    if kind != DecoderKind::Anomalib {
        assert!(pred.detections.len() <= settings.max_det, "{kind}: {} detections", pred.detections.len());
    }
    assert!(pred.classes.len() <= 5, "{kind}: {} top classes", pred.classes.len());
    assert!(pred.classes.iter().all(|c| c.score.is_finite()), "{kind}: {:?}", pred.classes);
}
