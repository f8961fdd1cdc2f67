//! Azure Custom Vision "compact" object detection: a YOLOv2 head.
//!
//! Decoding and selection follow Custom Vision's own sample code (as described
//! in docs/model-families.md): its selection is not a per-class NMS but a
//! loop that takes the single most probable (box, class), then zeroes that
//! class for every box overlapping it, so an overlapping box can still win
//! with another class.

use std::sync::Arc;

use super::{DecodeParams, OutTensor, classes, det, dims, sigmoid, softmax};
use crate::Detection;

/// Anchor sizes in grid cells.
const ANCHORS: [(f32, f32); 5] = [(0.573, 0.677), (1.87, 2.06), (3.34, 5.47), (7.88, 3.53), (9.77, 9.17)];

pub(crate) fn decode(
    out: &OutTensor<'_>,
    params: &DecodeParams,
    labels: &[Arc<str>],
    dets: &mut Vec<Detection>,
) -> Result<(), String> {
    let [one, ch, gh, gw] = dims(out, "[1, 5 * (5 + C), H, W]")?;
    let na = ANCHORS.len();
    if one != 1 || ch % na != 0 || ch / na < 6 {
        return Err(format!("{:?} is not [1, 5 anchors x (5 + C), H, W]", out.shape));
    }
    let per = ch / na;
    let classes = classes(per - 5, params)?;
    let plane = gh * gw;
    if plane == 0 {
        return Ok(());
    }
    let v = |a: usize, k: usize, i: usize, j: usize| out.data[(a * per + k) * plane + i * gw + j];

    // Boxes (x, y, w, h normalised) and per-class probabilities, enumerated
    // row, column, anchor.
    let n = gh * gw * na;
    let mut boxes = Vec::with_capacity(n);
    let mut probs = Vec::with_capacity(n * classes);
    let mut logits = vec![0f32; classes];
    for i in 0..gh {
        for j in 0..gw {
            for (a, &(aw, ah)) in ANCHORS.iter().enumerate() {
                let x = (sigmoid(v(a, 0, i, j)) + j as f32) / gw as f32;
                let y = (sigmoid(v(a, 1, i, j)) + i as f32) / gh as f32;
                let w = v(a, 2, i, j).exp() * aw / gw as f32;
                let h = v(a, 3, i, j).exp() * ah / gh as f32;
                boxes.push([x - w / 2.0, y - h / 2.0, w, h]);
                let obj = sigmoid(v(a, 4, i, j));
                for (c, l) in logits.iter_mut().enumerate() {
                    *l = v(a, 5 + c, i, j);
                }
                probs.extend(softmax(&logits).into_iter().map(|p| p * obj));
            }
        }
    }

    let argmax = |row: &[f32]| -> (f32, usize) {
        row.iter().enumerate().fold(
            (f32::NEG_INFINITY, 0),
            |(bv, bi), (i, &p)| {
                if p > bv { (p, i) } else { (bv, bi) }
            },
        )
    };
    let mut max_prob: Vec<f32> = Vec::with_capacity(n);
    let mut max_class: Vec<usize> = Vec::with_capacity(n);
    for row in probs.chunks_exact(classes) {
        let (p, c) = argmax(row);
        max_prob.push(p);
        max_class.push(c);
    }
    let area = |b: &[f32; 4]| b[2] * b[3];
    let iou = |a: &[f32; 4], b: &[f32; 4]| {
        let x1 = a[0].max(b[0]);
        let y1 = a[1].max(b[1]);
        let x2 = (a[0] + a[2]).min(b[0] + b[2]);
        let y2 = (a[1] + a[3]).min(b[1] + b[3]);
        let inter = (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
        inter / (area(a) + area(b) - inter)
    };
    let max_det = params.max_det;
    while dets.len() < max_det {
        let (best, i) = argmax(&max_prob);
        // A NaN threshold stops it too (`partial_cmp` is `None`).
        if best.partial_cmp(&params.conf).is_none_or(|o| o.is_lt()) || i >= n {
            break;
        }
        let c = max_class[i];
        let b = boxes[i];
        dets.push(det(c as u32, labels, best, b[0], b[1], b[0] + b[2], b[1] + b[3]));
        for k in 0..n {
            if k == i || iou(&b, &boxes[k]) > params.iou {
                probs[k * classes + c] = 0.0;
                let (p, cc) = argmax(&probs[k * classes..(k + 1) * classes]);
                max_prob[k] = p;
                max_class[k] = cc;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn decodes_one_confident_cell_at_its_grid_position() {
        let (classes, gh, gw) = (2usize, 13usize, 13usize);
        let per = 5 + classes;
        let mut data = vec![-10.0f32; 5 * per * gh * gw];
        let plane = gh * gw;
        // Anchor 2 at row 3, column 7: centred in its cell, size exp(0) * anchor.
        let (a, i, j) = (2usize, 3usize, 7usize);
        let mut set = |k: usize, v: f32| data[(a * per + k) * plane + i * gw + j] = v;
        set(0, 0.0);
        set(1, 0.0);
        set(2, 0.0);
        set(3, 0.0);
        set(4, 10.0);
        set(5, 0.0);
        set(6, 3.0);
        let out = OutTensor { shape: vec![1, (5 * per) as i64, 13, 13], data: Cow::Owned(data) };
        let labels: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        let params = DecodeParams {
            conf: 0.1,
            iou: 0.45,
            max_det: 20,
            class_offset: 0,
            threshold: 0.5,
            classes: None,
        };
        let mut dets = Vec::new();
        decode(&out, &params, &labels, &mut dets).expect("decode");
        assert_eq!(dets.len(), 1, "{dets:?}");
        let d = &dets[0];
        assert_eq!(d.class_id, 1);
        let (cx, cy) = d.bbox.center();
        assert!((cx - 7.5 / 13.0).abs() < 1e-5 && (cy - 3.5 / 13.0).abs() < 1e-5);
        assert!(((d.bbox.x2 - d.bbox.x1) - 3.34 / 13.0).abs() < 1e-5);
        assert!((d.score - 0.9525).abs() < 1e-3, "{}", d.score);
    }
}
