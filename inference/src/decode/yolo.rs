//! The Ultralytics families: YOLOv8-style, YOLOv5-style and end-to-end heads.

use std::sync::Arc;

use super::{DecodeParams, det};
use crate::Detection;

/// Per-anchor best score, kept between frames to avoid allocating.
#[derive(Debug, Default)]
pub(crate) struct DecodeScratch {
    best_score: Vec<f32>,
}

/// `[1, 4 + C, N]`: each anchor votes for its best class (the first on a tie)
/// and is kept when that score is strictly above `conf`.
pub(crate) fn decode_yolov8(
    data: &[f32],
    classes: usize,
    anchors: usize,
    conf: f32,
    labels: &[Arc<str>],
    scratch: &mut DecodeScratch,
    out: &mut Vec<Detection>,
) {
    crate::simd::dispatch!(
        decode_yolov8_avx2(data, classes, anchors, conf, labels, scratch, out),
        decode_yolov8_portable(data, classes, anchors, conf, labels, scratch, out)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn decode_yolov8_avx2(
    data: &[f32],
    classes: usize,
    anchors: usize,
    conf: f32,
    labels: &[Arc<str>],
    scratch: &mut DecodeScratch,
    out: &mut Vec<Detection>,
) {
    decode_yolov8_portable(data, classes, anchors, conf, labels, scratch, out)
}

#[inline(always)]
fn decode_yolov8_portable(
    data: &[f32],
    classes: usize,
    anchors: usize,
    conf: f32,
    labels: &[Arc<str>],
    scratch: &mut DecodeScratch,
    out: &mut Vec<Detection>,
) {
    // The caller checked the shape; an empty output has nothing to find
    // (and its class count backs no values).
    if anchors == 0 || data.len() != (4 + classes) * anchors {
        return;
    }
    // Pass 1: each anchor's best score. A plain running max over contiguous
    // class rows vectorises; which class won is only needed for the few
    // anchors above the threshold, so it is found afterwards.
    let best = &mut scratch.best_score;
    best.clear();
    best.resize(anchors, f32::NEG_INFINITY);
    for c in 0..classes {
        let row = &data[(4 + c) * anchors..(5 + c) * anchors];
        for (b, &s) in best.iter_mut().zip(row) {
            *b = b.max(s);
        }
    }
    let (xs, rest) = data.split_at(anchors);
    let (ys, rest) = rest.split_at(anchors);
    let (ws, rest) = rest.split_at(anchors);
    let hs = &rest[..anchors];
    for n in 0..anchors {
        if best[n] > conf {
            // Pass 2: the first class holding that score.
            let class = (0..classes).find(|&c| data[(4 + c) * anchors + n] == best[n]).unwrap_or(0) as u32;
            let (cx, cy, w, h) = (xs[n], ys[n], ws[n], hs[n]);
            out.push(det(class, labels, best[n], cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0));
        }
    }
}

/// `[1, N, 5 + C]`: an anchor counts when its objectness is above `conf`; its
/// class scores are multiplied by the objectness and the best product must
/// also be above `conf` (YOLOv5's `non_max_suppression`).
pub(crate) fn decode_yolov5(
    data: &[f32],
    anchors: usize,
    classes: usize,
    conf: f32,
    labels: &[Arc<str>],
    out: &mut Vec<Detection>,
) {
    let cols = 5 + classes;
    for row in data.chunks_exact(cols).take(anchors) {
        let obj = row[4];
        if obj <= conf {
            continue;
        }
        let (mut best, mut k) = (f32::NEG_INFINITY, 0u32);
        for (c, &s) in row[5..].iter().enumerate() {
            let p = s * obj;
            if p > best {
                best = p;
                k = c as u32;
            }
        }
        if best > conf {
            let (cx, cy, w, h) = (row[0], row[1], row[2], row[3]);
            out.push(det(k, labels, best, cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0));
        }
    }
}

/// `[1, K, 6]` rows `x1, y1, x2, y2, score, class`, already selected by the
/// model: kept in order when the score is above `conf`, no NMS.
pub(crate) fn decode_end2end(
    data: &[f32],
    rows: usize,
    params: &DecodeParams,
    labels: &[Arc<str>],
    out: &mut Vec<Detection>,
) -> Result<(), String> {
    for r in data.chunks_exact(6).take(rows) {
        if out.len() >= params.max_det {
            break;
        }
        if r[4] > params.conf {
            let class = r[5];
            if !(class >= 0.0 && class.fract() == 0.0 && class < 4_294_967_296.0) {
                return Err(format!("class value {class} is not a class id"));
            }
            out.push(det(class as u32, labels, r[4], r[0], r[1], r[2], r[3]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BBox;

    fn labels(n: usize) -> Vec<Arc<str>> {
        (0..n).map(|i| Arc::from(format!("c{i}"))).collect()
    }

    #[test]
    fn yolov8_picks_the_best_class_of_each_anchor_above_the_threshold() {
        #[rustfmt::skip]
        let data = vec![
            10.0, 20.0, 30.0, // cx
            10.0, 20.0, 30.0, // cy
            4.0, 4.0, 6.0,    // w
            2.0, 2.0, 8.0,    // h
            0.1, 0.2, 0.9,    // class 0
            0.7, 0.1, 0.3,    // class 1
        ];
        let mut out = Vec::new();
        decode_yolov8(&data, 2, 3, 0.25, &labels(2), &mut DecodeScratch::default(), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].class_id, &*out[0].label, out[0].score), (1, "c1", 0.7));
        assert_eq!(out[0].bbox, BBox { x1: 8.0, y1: 9.0, x2: 12.0, y2: 11.0 });
        assert_eq!((out[1].class_id, out[1].score), (0, 0.9));
    }

    /// The AVX2 and portable compilations find the same detections, to the
    /// bit, on a YOLOv8n-sized output of noise with ties and NaNs in it.
    #[test]
    fn yolov8_vector_and_portable_loops_agree() {
        let (classes, anchors) = (80, 8400);
        let mut seed = 12345u32;
        let data: Vec<f32> = (0..(4 + classes) * anchors)
            .map(|i| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                match i % 997 {
                    0 => f32::NAN,
                    1 => 0.5,
                    _ => (seed >> 8) as f32 / (1 << 24) as f32,
                }
            })
            .collect();
        let run = || {
            let mut out = Vec::new();
            decode_yolov8(
                &data,
                classes,
                anchors,
                0.9,
                &labels(classes),
                &mut DecodeScratch::default(),
                &mut out,
            );
            out.iter()
                .map(|d| (d.class_id, d.score.to_bits(), d.bbox.x1.to_bits(), d.bbox.y2.to_bits()))
                .collect::<Vec<_>>()
        };
        let vector = run();
        assert!(vector.len() > 100, "the noise should pass the threshold often: {}", vector.len());
        assert_eq!(vector, crate::simd::portable_only(run));
    }

    #[test]
    fn yolov8_finds_every_class_not_only_class_zero() {
        let (classes, anchors) = (80, 5);
        let mut data = vec![0.0f32; (4 + classes) * anchors];
        for n in 0..anchors {
            data[(4 + 17 * n % classes) * anchors + n] = 0.8;
        }
        let mut out = Vec::new();
        decode_yolov8(
            &data,
            classes,
            anchors,
            0.25,
            &labels(classes),
            &mut DecodeScratch::default(),
            &mut out,
        );
        let ids: Vec<u32> = out.iter().map(|d| d.class_id).collect();
        assert_eq!(ids, vec![0, 17, 34, 51, 68]);
    }

    #[test]
    fn yolov5_gates_on_objectness_then_on_the_product() {
        #[rustfmt::skip]
        let data = vec![
            // cx, cy, w, h, obj, c0, c1
            10.0, 10.0, 2.0, 2.0, 0.9, 0.2, 0.8,  // 0.72 class 1: kept
            20.0, 20.0, 2.0, 2.0, 0.2, 1.0, 1.0,  // objectness too low
            30.0, 30.0, 2.0, 2.0, 0.5, 0.4, 0.3,  // best product 0.2: dropped
        ];
        let mut out = Vec::new();
        decode_yolov5(&data, 3, 2, 0.25, &labels(2), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].class_id, 1);
        assert!((out[0].score - 0.72).abs() < 1e-6);
        assert_eq!(out[0].bbox, BBox { x1: 9.0, y1: 9.0, x2: 11.0, y2: 11.0 });
    }

    #[test]
    fn end2end_keeps_rows_in_order_above_the_threshold() {
        #[rustfmt::skip]
        let data = vec![
            1.0, 2.0, 3.0, 4.0, 0.9, 2.0,
            5.0, 6.0, 7.0, 8.0, 0.1, 0.0,
            9.0, 9.0, 12.0, 12.0, 0.5, 1.0,
        ];
        let params = DecodeParams {
            conf: 0.25,
            iou: 0.7,
            max_det: 300,
            class_offset: 0,
            threshold: 0.5,
            classes: None,
        };
        let mut out = Vec::new();
        decode_end2end(&data, 3, &params, &labels(3), &mut out).expect("decode");
        let got: Vec<(u32, f32)> = out.iter().map(|d| (d.class_id, d.score)).collect();
        assert_eq!(got, vec![(2, 0.9), (1, 0.5)]);
        let bad = vec![1.0, 2.0, 3.0, 4.0, 0.9, 1.5];
        assert!(decode_end2end(&bad, 1, &params, &labels(3), &mut Vec::new()).is_err());
    }
}
