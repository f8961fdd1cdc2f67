//! Models that do their own selection and return box/score/class tensors:
//! TensorFlow Object Detection API (SSD and friends) and Custom Vision [S1].

use std::sync::Arc;

use super::{DecodeParams, OutTensor, det, dims};
use crate::Detection;

/// The number of rows K from a `[1, K, 4]` boxes tensor, checked against the others.
fn rows(boxes: &OutTensor<'_>, others: &[&OutTensor<'_>]) -> Result<usize, String> {
    let k = match dims(boxes, "boxes [1, K, 4]")? {
        [1, k, 4] => k,
        _ => return Err(format!("boxes must be [1, K, 4], got {:?}", boxes.shape)),
    };
    for o in others {
        if o.data.len() < k {
            return Err(format!("expected {k} values, got shape {:?}", o.shape));
        }
    }
    Ok(k)
}

fn class_id(v: f32, offset: i64) -> Result<u32, String> {
    // `as` saturates (NaN to 0, which `fract` has already refused).
    let id = (v as i64).checked_sub(offset).and_then(|id| u32::try_from(id).ok());
    match id {
        Some(id) if v.fract() == 0.0 => Ok(id),
        _ => Err(format!("class value {v} minus class_offset {offset} is not a class id")),
    }
}

/// Boxes `ymin, xmin, ymax, xmax` normalised; the first `count` rows with a
/// score above `conf`, in order.
pub(crate) fn decode_ssd(
    boxes: &OutTensor<'_>,
    scores: &OutTensor<'_>,
    classes: &OutTensor<'_>,
    count: &OutTensor<'_>,
    params: &DecodeParams,
    labels: &[Arc<str>],
    out: &mut Vec<Detection>,
) -> Result<(), String> {
    let k = rows(boxes, &[scores, classes])?;
    let n = count.data.first().map_or(k, |&c| (c.max(0.0) as usize).min(k));
    for i in 0..n {
        if out.len() >= params.max_det {
            break;
        }
        let s = scores.data[i];
        if s > params.conf {
            let b = &boxes.data[i * 4..i * 4 + 4];
            out.push(det(class_id(classes.data[i], params.class_offset)?, labels, s, b[1], b[0], b[3], b[2]));
        }
    }
    Ok(())
}

/// Custom Vision [S1]: boxes `x1, y1, x2, y2` normalised, rows above `conf` in order.
pub(crate) fn decode_s1(
    boxes: &OutTensor<'_>,
    scores: &OutTensor<'_>,
    classes: &OutTensor<'_>,
    params: &DecodeParams,
    labels: &[Arc<str>],
    out: &mut Vec<Detection>,
) -> Result<(), String> {
    let k = rows(boxes, &[scores, classes])?;
    for i in 0..k {
        if out.len() >= params.max_det {
            break;
        }
        let s = scores.data[i];
        if s > params.conf {
            let b = &boxes.data[i * 4..i * 4 + 4];
            out.push(det(class_id(classes.data[i], 0)?, labels, s, b[0], b[1], b[2], b[3]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::BBox;

    fn t(shape: &[i64], data: Vec<f32>) -> OutTensor<'static> {
        OutTensor { shape: shape.to_vec(), data: Cow::Owned(data) }
    }

    #[test]
    fn ssd_reads_yx_order_counts_and_one_based_classes() {
        let boxes = t(&[1, 3, 4], vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.9, 0.9, 0.0, 0.0, 1.0, 1.0]);
        let scores = t(&[1, 3], vec![0.9, 0.2, 0.8]);
        let classes = t(&[1, 3], vec![1.0, 2.0, 2.0]);
        let labels: Vec<Arc<str>> = vec!["person".into(), "car".into()];
        let params = DecodeParams {
            conf: 0.25,
            iou: 0.5,
            max_det: 100,
            class_offset: 1,
            threshold: 0.5,
            classes: None,
        };
        let mut out = Vec::new();
        // count = 2: the third row is past the count and ignored.
        decode_ssd(&boxes, &scores, &classes, &t(&[1], vec![2.0]), &params, &labels, &mut out).expect("ok");
        assert_eq!(out.len(), 1);
        assert_eq!(&*out[0].label, "person");
        assert_eq!(out[0].bbox, BBox { x1: 0.2, y1: 0.1, x2: 0.4, y2: 0.3 });
        let mut out = Vec::new();
        decode_ssd(&boxes, &scores, &classes, &t(&[1], vec![3.0]), &params, &labels, &mut out).expect("ok");
        assert_eq!(out.iter().map(|d| d.class_id).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn s1_reads_xy_order() {
        let boxes = t(&[1, 2, 4], vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.6, 0.6]);
        let scores = t(&[1, 2], vec![0.05, 0.7]);
        let classes = t(&[1, 2], vec![0.0, 1.0]);
        let labels: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        let params = DecodeParams {
            conf: 0.1,
            iou: 0.5,
            max_det: 100,
            class_offset: 0,
            threshold: 0.5,
            classes: None,
        };
        let mut out = Vec::new();
        decode_s1(&boxes, &scores, &classes, &params, &labels, &mut out).expect("ok");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bbox, BBox { x1: 0.5, y1: 0.5, x2: 0.6, y2: 0.6 });
        assert_eq!(&*out[0].label, "b");
    }
}
