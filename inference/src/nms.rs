use std::sync::Arc;

/// An axis-aligned box, corners in pixels (`x1 <= x2`, `y1 <= y2`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }

    /// Intersection over union, as torchvision computes it (no +1 on sizes).
    pub fn iou(&self, o: &BBox) -> f32 {
        let w = (self.x2.min(o.x2) - self.x1.max(o.x1)).max(0.0);
        let h = (self.y2.min(o.y2) - self.y1.max(o.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + o.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    pub fn center(&self) -> (f32, f32) {
        ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)
    }
}

/// One detected object, its box in the original image's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub class_id: u32,
    pub label: Arc<str>,
    pub score: f32,
    pub bbox: BBox,
}

/// Greedy non-maximum suppression, like `torchvision.ops.nms` as Ultralytics
/// calls it: highest score first; a box is dropped when its IoU with a kept box
/// of the same class (of any class when `agnostic`) is above `iou_threshold`.
/// Keeps at most `max_detections`, in descending score order.
pub fn nms(
    mut dets: Vec<Detection>,
    iou_threshold: f32,
    agnostic: bool,
    max_detections: usize,
) -> Vec<Detection> {
    // Stable sort: equal scores keep the decoder's (anchor) order.
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::with_capacity(dets.len().min(max_detections));
    for d in dets {
        if kept.len() >= max_detections {
            break;
        }
        let suppressed = kept
            .iter()
            .any(|k| (agnostic || k.class_id == d.class_id) && k.bbox.iou(&d.bbox) > iou_threshold);
        if !suppressed {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class_id: u32, score: f32, x1: f32, y1: f32, x2: f32, y2: f32) -> Detection {
        Detection { class_id, label: "x".into(), score, bbox: BBox { x1, y1, x2, y2 } }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = BBox { x1: 0.0, y1: 0.0, x2: 10.0, y2: 10.0 };
        let b = BBox { x1: 5.0, y1: 0.0, x2: 15.0, y2: 10.0 };
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&BBox { x1: 20.0, y1: 20.0, x2: 30.0, y2: 30.0 }), 0.0);
        assert_eq!(a.iou(&a), 1.0);
    }

    #[test]
    fn suppresses_overlaps_within_a_class_only() {
        let dets = vec![
            det(0, 0.6, 1.0, 1.0, 11.0, 11.0),
            det(0, 0.9, 0.0, 0.0, 10.0, 10.0),
            det(1, 0.8, 0.0, 0.0, 10.0, 10.0),
            det(0, 0.5, 50.0, 50.0, 60.0, 60.0),
        ];
        let kept = nms(dets.clone(), 0.5, false, 300);
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.8, 0.5]);
        let agnostic = nms(dets, 0.5, true, 300);
        let scores: Vec<f32> = agnostic.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.5]);
    }

    #[test]
    fn caps_the_number_of_detections() {
        let dets: Vec<Detection> = (0..10)
            .map(|i| det(0, i as f32 / 10.0, i as f32 * 20.0, 0.0, i as f32 * 20.0 + 10.0, 10.0))
            .collect();
        let kept = nms(dets, 0.5, false, 3);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0].score, 0.9);
    }
}
