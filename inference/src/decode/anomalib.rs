//! anomalib exports: an image score and a per-pixel anomaly map. The verdict
//! comes from the score; the regions from the mask (or the thresholded map),
//! as boxes around each 8-connected component.

use super::{OutTensor, dims};
use crate::{Anomaly, BBox, Detection};

pub(crate) fn decode(
    score: &OutTensor<'_>,
    map: &OutTensor<'_>,
    mask: Option<&OutTensor<'_>>,
    threshold: f32,
    frame: (u32, u32),
    dets: &mut Vec<Detection>,
) -> Result<Anomaly, String> {
    let s = *score.data.first().ok_or("pred_score is empty")?;
    // A NaN would pass no threshold: a broken model would say OK for ever.
    if s.is_nan() {
        return Err("pred_score is NaN".into());
    }
    let layout = "anomaly_map [1, 1, H, W] or [1, H, W]";
    let (h, w) = match map.shape.len() {
        4 => match dims::<4>(map, layout)? {
            [1, 1, h, w] => (h, w),
            _ => return Err(format!("expected {layout}, got {:?}", map.shape)),
        },
        _ => match dims::<3>(map, layout)? {
            [1, h, w] => (h, w),
            _ => return Err(format!("expected {layout}, got {:?}", map.shape)),
        },
    };
    let values = &map.data[..h * w];
    let on: Vec<bool> = match mask {
        Some(m) if m.data.len() >= h * w => m.data[..h * w].iter().map(|&v| v > 0.5).collect(),
        Some(m) => {
            return Err(format!("pred_mask {:?} does not match anomaly_map {:?}", m.shape, map.shape));
        }
        None => values.iter().map(|&v| v > threshold).collect(),
    };
    let (fw, fh) = (frame.0 as f32 / w as f32, frame.1 as f32 / h as f32);
    let label: std::sync::Arc<str> = "anomaly".into();
    let mut seen = vec![false; h * w];
    let mut stack = Vec::new();
    let mut regions = Vec::new();
    for start in 0..h * w {
        if !on[start] || seen[start] {
            continue;
        }
        // Flood fill one 8-connected component.
        let (mut x0, mut y0, mut x1, mut y1, mut peak) = (usize::MAX, usize::MAX, 0, 0, f32::NEG_INFINITY);
        seen[start] = true;
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (y, x) = (p / w, p % w);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
            peak = peak.max(values[p]);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                    if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if on[q] && !seen[q] {
                        seen[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
        regions.push(Detection {
            class_id: 0,
            label: label.clone(),
            score: peak,
            bbox: BBox {
                x1: x0 as f32 * fw,
                y1: y0 as f32 * fh,
                x2: (x1 + 1) as f32 * fw,
                y2: (y1 + 1) as f32 * fh,
            },
        });
    }
    regions.sort_by(|a, b| b.score.total_cmp(&a.score));
    dets.extend(regions);
    Ok(Anomaly { score: s, threshold, is_anomalous: s > threshold })
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn boxes_each_connected_region_and_judges_by_score() {
        // 4x6 map with two regions: a diagonal pair (8-connected) and a single pixel.
        #[rustfmt::skip]
        let map = vec![
            0.9, 0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.7, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.95, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        let map = OutTensor { shape: vec![1, 1, 4, 6], data: Cow::Owned(map) };
        let score = OutTensor { shape: vec![1], data: Cow::Owned(vec![0.8]) };
        let mut dets = Vec::new();
        let a = decode(&score, &map, None, 0.5, (60, 40), &mut dets).expect("ok");
        assert!(a.is_anomalous);
        assert_eq!(dets.len(), 2);
        assert_eq!(dets[0].score, 0.95);
        assert_eq!(dets[0].bbox, BBox { x1: 40.0, y1: 20.0, x2: 50.0, y2: 30.0 });
        assert_eq!(dets[1].bbox, BBox { x1: 0.0, y1: 0.0, x2: 20.0, y2: 20.0 });
        let ok = OutTensor { shape: vec![1], data: Cow::Owned(vec![0.3]) };
        assert!(!decode(&ok, &map, None, 0.5, (60, 40), &mut Vec::new()).expect("ok").is_anomalous);
    }
}
