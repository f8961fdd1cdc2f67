//! Output decoders: raw output tensors -> candidates, for each model family
//! in docs/model-families.md. Boxes come out in input pixels or normalised
//! coordinates (see [`Coords`]); NMS and mapping to the frame happen in
//! `model.rs`, shared by all families.

mod anomalib;
mod classify;
mod customvision;
mod ssd;
mod yolo;

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub(crate) use yolo::DecodeScratch;

use crate::{Detection, Prediction};

/// Which output layout a model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DecoderKind {
    /// Ultralytics YOLOv8/v9/v11/v12: `[1, 4 + C, N]`.
    #[serde(rename = "yolov8")]
    YoloV8,
    /// YOLOv5 (and v7-style): `[1, N, 5 + C]` with objectness.
    #[serde(rename = "yolov5")]
    YoloV5,
    /// End-to-end (YOLOv10, YOLO26, `nms=True`): `[1, K, 6]`.
    #[serde(rename = "end2end")]
    End2End,
    /// TensorFlow Object Detection API: boxes, scores, classes, count.
    #[serde(rename = "ssd")]
    Ssd,
    /// Image classification: `[1, C]`.
    #[serde(rename = "classify")]
    Classify,
    /// anomalib: `pred_score`, `anomaly_map`, optional `pred_mask`.
    #[serde(rename = "anomalib")]
    Anomalib,
    /// Azure Custom Vision compact: YOLOv2 head `[1, 5 * (5 + C), 13, 13]`.
    #[serde(rename = "customvision")]
    CustomVision,
    /// Azure Custom Vision compact [S1]: `detected_boxes/scores/classes`.
    #[serde(rename = "customvision-s1")]
    CustomVisionS1,
}

impl DecoderKind {
    /// Finds objects with boxes (as opposed to judging the whole image).
    pub fn is_detector(self) -> bool {
        !matches!(self, DecoderKind::Classify | DecoderKind::Anomalib)
    }
}

impl DecoderKind {
    pub const ALL: [DecoderKind; 8] = [
        DecoderKind::YoloV8,
        DecoderKind::YoloV5,
        DecoderKind::End2End,
        DecoderKind::Ssd,
        DecoderKind::Classify,
        DecoderKind::Anomalib,
        DecoderKind::CustomVision,
        DecoderKind::CustomVisionS1,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecoderKind::YoloV8 => "yolov8",
            DecoderKind::YoloV5 => "yolov5",
            DecoderKind::End2End => "end2end",
            DecoderKind::Ssd => "ssd",
            DecoderKind::Classify => "classify",
            DecoderKind::Anomalib => "anomalib",
            DecoderKind::CustomVision => "customvision",
            DecoderKind::CustomVisionS1 => "customvision-s1",
        }
    }

    pub fn parse(s: &str) -> Option<DecoderKind> {
        DecoderKind::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Whether candidates go through NMS after decoding.
    pub(crate) fn uses_nms(self) -> bool {
        matches!(self, DecoderKind::YoloV8 | DecoderKind::YoloV5)
    }

    /// The output roles this decoder reads, in order (see [`OutputRoles`]).
    pub(crate) fn roles(self) -> &'static [&'static str] {
        match self {
            DecoderKind::YoloV8
            | DecoderKind::YoloV5
            | DecoderKind::End2End
            | DecoderKind::Classify
            | DecoderKind::CustomVision => &["output"],
            DecoderKind::Ssd => &["boxes", "scores", "classes", "count"],
            DecoderKind::CustomVisionS1 => &["boxes", "scores", "classes"],
            DecoderKind::Anomalib => &["pred_score", "anomaly_map", "pred_mask"],
        }
    }
}

impl std::fmt::Display for DecoderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// For each role of the decoder, which session output plays it (`None`: an
/// optional role the model does not have).
pub(crate) type OutputRoles = Vec<Option<usize>>;

/// One output tensor as f32, borrowed from ONNX Runtime when it already is f32.
#[derive(Debug)]
pub(crate) struct OutTensor<'a> {
    pub(crate) shape: Vec<i64>,
    pub(crate) data: Cow<'a, [f32]>,
}

impl OutTensor<'_> {
    pub(crate) fn borrowed(&self) -> OutTensor<'_> {
        OutTensor { shape: self.shape.clone(), data: Cow::Borrowed(&self.data) }
    }

    /// Frame `i` of a batch of `rows`, as if the model had run on it alone
    /// (first dimension 1). Every output must carry the batch first.
    pub(crate) fn row(&self, i: usize, rows: usize) -> Result<OutTensor<'_>, crate::InferenceError> {
        if self.shape.first() != Some(&(rows as i64)) || !self.data.len().is_multiple_of(rows) {
            return Err(crate::InferenceError::Run(format!(
                "an output of shape {:?} does not carry the batch of {rows} as its first dimension",
                self.shape
            )));
        }
        let len = self.data.len() / rows;
        let mut shape = self.shape.clone();
        shape[0] = 1;
        Ok(OutTensor { shape, data: Cow::Borrowed(&self.data[i * len..(i + 1) * len]) })
    }
}

/// Thresholds and switches a decoder needs.
#[derive(Debug, Clone)]
pub(crate) struct DecodeParams {
    /// The lowest confidence any class accepts (per-class thresholds filter later).
    pub(crate) conf: f32,
    pub(crate) iou: f32,
    pub(crate) max_det: usize,
    pub(crate) class_offset: i64,
    /// anomalib: NG above this.
    pub(crate) threshold: f32,
    /// The number of classes an output that encodes them in its shape must
    /// have, when the model said so at load (its shape or its labels): a run
    /// whose output says otherwise is not read with the wrong labels.
    pub(crate) classes: Option<usize>,
}

/// What boxes are relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coords {
    /// Model-input pixels.
    Input,
    /// 0..1 of the frame.
    Normalised,
    /// Already frame pixels.
    Frame,
}

/// One model's decoder: its family, settings, labels, and the output shapes
/// the model declared. Every run's outputs are checked before they are read
/// (a data-dependent graph can change them from one frame to the next): a
/// shape that does not fit is an error, never a panic or a read out of bounds.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    pub(crate) kind: DecoderKind,
    pub(crate) params: DecodeParams,
    pub(crate) labels: Vec<Arc<str>>,
    /// Per role, the output's shape as declared (`-1`: dynamic); `None`: an
    /// optional role the model does not have.
    pub(crate) declared: Vec<Option<Vec<i64>>>,
}

impl Decoder {
    /// Decodes the outputs its roles point at into `pred`; detections come
    /// out in the `Coords` returned, all with finite scores and boxes.
    pub(crate) fn decode(
        &self,
        outs: &[Option<OutTensor<'_>>],
        frame: (u32, u32),
        scratch: &mut DecodeScratch,
        pred: &mut Prediction,
    ) -> Result<Coords, String> {
        for (role, (out, declared)) in outs.iter().zip(&self.declared).enumerate() {
            if let (Some(o), Some(d)) = (out, declared) {
                fits_declared(&o.shape, d).map_err(|e| format!("{}: {e}", self.kind.roles()[role]))?;
            }
        }
        let coords = decode(self.kind, outs, &self.params, &self.labels, frame, scratch, pred)
            .map_err(|e| format!("{} decoder: {e}", self.kind))?;
        // NaN and infinity pass no threshold as scores, but a box can still
        // carry them, and JSON has no way to say them.
        pred.detections.retain(|d| {
            let b = d.bbox;
            d.score.is_finite() && [b.x1, b.y1, b.x2, b.y2].iter().all(|v| v.is_finite())
        });
        Ok(coords)
    }
}

/// A run's output shape against the declared one: same rank, and every
/// dimension the model fixed (past the batch, which a run may change) the same.
fn fits_declared(actual: &[i64], declared: &[i64]) -> Result<(), String> {
    if declared.is_empty() {
        return Ok(());
    }
    let fixed_differs = actual.iter().zip(declared).skip(1).any(|(&a, &d)| d > 0 && a != d);
    if actual.len() != declared.len() || fixed_differs {
        return Err(format!("the output is {actual:?}, but the model declares {declared:?}"));
    }
    Ok(())
}

/// The dimensions of an output that must have `R` of them, none negative
/// and none absurd, holding exactly as many values as they multiply to
/// (what makes every index a decoder computes from them valid).
fn dims<const R: usize>(o: &OutTensor<'_>, layout: &str) -> Result<[usize; R], String> {
    let s = o.shape.as_slice();
    let mut d = [0usize; R];
    if s.len() != R {
        return Err(format!("expected {layout}, got {s:?}"));
    }
    let mut values: usize = 1;
    for (d, &v) in d.iter_mut().zip(s) {
        // No real output has a side past 2^31: a zero elsewhere would let
        // such a dimension through with no values to back it.
        *d = usize::try_from(v)
            .ok()
            .filter(|&v| v <= i32::MAX as usize)
            .ok_or_else(|| format!("expected {layout}, got {s:?}"))?;
        values = values.saturating_mul(*d);
    }
    if values != o.data.len() {
        return Err(format!("an output of shape {s:?} came with {} values", o.data.len()));
    }
    Ok(d)
}

/// The class count an output's shape implies, checked against the model's.
fn classes(found: usize, params: &DecodeParams) -> Result<usize, String> {
    match params.classes {
        Some(c) if c != found => {
            Err(format!("the output has {found} classes, but the model was loaded with {c}"))
        }
        _ => Ok(found),
    }
}

/// Runs decoder `kind` over the outputs its roles point at. Detections land
/// in `pred.detections` in `Coords` returned.
#[allow(clippy::too_many_arguments)]
fn decode(
    kind: DecoderKind,
    outs: &[Option<OutTensor<'_>>],
    params: &DecodeParams,
    labels: &[Arc<str>],
    frame: (u32, u32),
    scratch: &mut DecodeScratch,
    pred: &mut Prediction,
) -> Result<Coords, String> {
    let need =
        |i: usize| outs.get(i).and_then(Option::as_ref).ok_or_else(|| format!("output role {i} missing"));
    let dets = &mut pred.detections;
    match kind {
        DecoderKind::YoloV8 => {
            let o = need(0)?;
            let [one, rows, n] = dims(o, "[1, 4+C, N]")?;
            let c = rows
                .checked_sub(4)
                .filter(|&c| c >= 1 && one == 1)
                .ok_or_else(|| format!("expected [1, 4+C, N] with at least one class, got {:?}", o.shape))?;
            yolo::decode_yolov8(&o.data, classes(c, params)?, n, params.conf, labels, scratch, dets);
            Ok(Coords::Input)
        }
        DecoderKind::YoloV5 => {
            let o = need(0)?;
            let [one, n, cols] = dims(o, "[1, N, 5+C]")?;
            let c = cols
                .checked_sub(5)
                .filter(|&c| c >= 1 && one == 1)
                .ok_or_else(|| format!("expected [1, N, 5+C] with at least one class, got {:?}", o.shape))?;
            yolo::decode_yolov5(&o.data, n, classes(c, params)?, params.conf, labels, dets);
            Ok(Coords::Input)
        }
        DecoderKind::End2End => {
            let o = need(0)?;
            let k = match dims(o, "[1, K, 6]")? {
                [1, k, 6] => k,
                _ => return Err(format!("expected [1, K, 6], got {:?}", o.shape)),
            };
            yolo::decode_end2end(&o.data, k, params, labels, dets)?;
            Ok(Coords::Input)
        }
        DecoderKind::Ssd => {
            ssd::decode_ssd(need(0)?, need(1)?, need(2)?, need(3)?, params, labels, dets)?;
            Ok(Coords::Normalised)
        }
        DecoderKind::CustomVisionS1 => {
            ssd::decode_s1(need(0)?, need(1)?, need(2)?, params, labels, dets)?;
            Ok(Coords::Normalised)
        }
        DecoderKind::CustomVision => {
            customvision::decode(need(0)?, params, labels, dets)?;
            Ok(Coords::Normalised)
        }
        DecoderKind::Classify => {
            pred.classes = classify::top_k(need(0)?, params, labels, 5)?;
            Ok(Coords::Frame)
        }
        DecoderKind::Anomalib => {
            let mask = outs.get(2).and_then(Option::as_ref);
            pred.anomaly = Some(anomalib::decode(need(0)?, need(1)?, mask, params.threshold, frame, dets)?);
            Ok(Coords::Frame)
        }
    }
}

/// Numerically stable softmax in f32: `exp(v - max) / sum`.
pub(crate) fn softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn label(labels: &[Arc<str>], class_id: u32) -> Arc<str> {
    labels.get(class_id as usize).cloned().unwrap_or_else(|| Arc::from(format!("class{class_id}")))
}

fn det(class_id: u32, labels: &[Arc<str>], score: f32, x1: f32, y1: f32, x2: f32, y2: f32) -> Detection {
    Detection { class_id, label: label(labels, class_id), score, bbox: crate::BBox { x1, y1, x2, y2 } }
}

#[cfg(test)]
mod tests;
