//! The decoders as fuzzers and property tests reach them (feature
//! `fuzzing`; fuzz/ at the repository root): arbitrary output tensors in,
//! a prediction or an error out, through the same checks as every run.

use std::borrow::Cow;
use std::sync::Arc;

use crate::decode::{DecodeParams, DecodeScratch, Decoder, OutTensor};
use crate::{DecoderKind, Prediction};

/// A decoder's settings, as the config and the model's plan would give them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub conf: f32,
    pub iou: f32,
    pub max_det: usize,
    pub class_offset: i64,
    pub threshold: f32,
    /// The class count the model was loaded with, when known.
    pub classes: Option<usize>,
    /// How many labels the model has.
    pub labels: usize,
}

/// Decodes `outputs` (per role of `kind`: a shape and its values, or none)
/// against the `declared` shapes, then NMS for the families that use it.
pub fn decode(
    kind: DecoderKind,
    outputs: &[Option<(Vec<i64>, Vec<f32>)>],
    declared: &[Option<Vec<i64>>],
    settings: &Settings,
    frame: (u32, u32),
) -> Result<Prediction, String> {
    let decoder = Decoder {
        kind,
        params: DecodeParams {
            conf: settings.conf,
            iou: settings.iou,
            max_det: settings.max_det,
            class_offset: settings.class_offset,
            threshold: settings.threshold,
            classes: settings.classes,
        },
        labels: (0..settings.labels).map(|i| Arc::from(format!("c{i}"))).collect(),
        declared: declared.to_vec(),
    };
    let outs: Vec<Option<OutTensor<'_>>> = outputs
        .iter()
        .map(|o| {
            o.as_ref().map(|(shape, data)| OutTensor { shape: shape.clone(), data: Cow::Borrowed(data) })
        })
        .collect();
    let mut pred = Prediction::default();
    decoder.decode(&outs, frame, &mut DecodeScratch::default(), &mut pred)?;
    if kind.uses_nms() {
        pred.detections =
            crate::nms(std::mem::take(&mut pred.detections), settings.iou, false, settings.max_det);
    }
    Ok(pred)
}
