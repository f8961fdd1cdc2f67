//! Output decoders: raw output tensors to candidate detections in model-input
//! pixels (before NMS and before mapping back to the source image).

use std::sync::Arc;

use crate::{BBox, Detection};

/// Which output layout a model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderKind {
    /// Ultralytics YOLOv8/v9/v11/v12 detection head: one output
    /// `[1, 4 + C, N]`, rows `cx, cy, w, h` then C class scores (already
    /// sigmoid-ed), one column per anchor.
    YoloV8,
}

impl DecoderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecoderKind::YoloV8 => "yolov8",
        }
    }
}

/// Per-anchor best class, kept between frames to avoid allocating.
#[derive(Debug, Default)]
pub(crate) struct DecodeScratch {
    best_score: Vec<f32>,
    best_class: Vec<u32>,
}

/// Decodes a YOLOv8 `[1, 4 + C, N]` output. Like Ultralytics (`multi_label=False`),
/// each anchor votes for its single best class and is kept when that score is
/// strictly above `conf`.
pub(crate) fn decode_yolov8(
    data: &[f32],
    classes: usize,
    anchors: usize,
    conf: f32,
    labels: &[Arc<str>],
    scratch: &mut DecodeScratch,
    out: &mut Vec<Detection>,
) {
    debug_assert_eq!(data.len(), (4 + classes) * anchors);
    let best = &mut scratch.best_score;
    let cls = &mut scratch.best_class;
    best.clear();
    best.resize(anchors, f32::NEG_INFINITY);
    cls.clear();
    cls.resize(anchors, 0);
    // Class-major scan: each class row is contiguous, so this streams memory
    // once instead of striding across rows for every anchor.
    for c in 0..classes {
        let row = &data[(4 + c) * anchors..(5 + c) * anchors];
        for ((b, k), &s) in best.iter_mut().zip(cls.iter_mut()).zip(row) {
            if s > *b {
                *b = s;
                *k = c as u32;
            }
        }
    }
    let (xs, rest) = data.split_at(anchors);
    let (ys, rest) = rest.split_at(anchors);
    let (ws, rest) = rest.split_at(anchors);
    let hs = &rest[..anchors];
    for n in 0..anchors {
        let s = best[n];
        if s > conf {
            let (cx, cy, w, h) = (xs[n], ys[n], ws[n], hs[n]);
            let class_id = cls[n];
            out.push(Detection {
                class_id,
                label: labels[class_id as usize].clone(),
                score: s,
                bbox: BBox {
                    x1: cx - w / 2.0,
                    y1: cy - h / 2.0,
                    x2: cx + w / 2.0,
                    y2: cy + h / 2.0,
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_best_class_of_each_anchor_above_the_threshold() {
        // 3 anchors, 2 classes. Anchor 0: class 1 wins; anchor 1: below
        // threshold; anchor 2: class 0 wins.
        #[rustfmt::skip]
        let data = vec![
            10.0, 20.0, 30.0, // cx
            10.0, 20.0, 30.0, // cy
            4.0, 4.0, 6.0,    // w
            2.0, 2.0, 8.0,    // h
            0.1, 0.2, 0.9,    // class 0
            0.7, 0.1, 0.3,    // class 1
        ];
        let labels: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        let mut out = Vec::new();
        decode_yolov8(
            &data,
            2,
            3,
            0.25,
            &labels,
            &mut DecodeScratch::default(),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].class_id, &*out[0].label, out[0].score),
            (1, "b", 0.7)
        );
        assert_eq!(
            out[0].bbox,
            BBox {
                x1: 8.0,
                y1: 9.0,
                x2: 12.0,
                y2: 11.0
            }
        );
        assert_eq!((out[1].class_id, out[1].score), (0, 0.9));
        assert_eq!(
            out[1].bbox,
            BBox {
                x1: 27.0,
                y1: 26.0,
                x2: 33.0,
                y2: 34.0
            }
        );
    }

    #[test]
    fn finds_objects_of_every_class_not_only_class_zero() {
        let classes = 80;
        let anchors = 5;
        let mut data = vec![0.0f32; (4 + classes) * anchors];
        for n in 0..anchors {
            let c = 17 * n % classes; // classes 0, 17, 34, 51, 68
            data[(4 + c) * anchors + n] = 0.8;
        }
        let labels: Vec<Arc<str>> = (0..classes).map(|i| Arc::from(format!("c{i}"))).collect();
        let mut out = Vec::new();
        decode_yolov8(
            &data,
            classes,
            anchors,
            0.25,
            &labels,
            &mut DecodeScratch::default(),
            &mut out,
        );
        let ids: Vec<u32> = out.iter().map(|d| d.class_id).collect();
        assert_eq!(ids, vec![0, 17, 34, 51, 68]);
    }
}
