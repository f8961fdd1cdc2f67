//! The optional manifest next to a model: `parts.onnx` -> `parts.manifest.toml`.
//! Every field is optional and overrides what Vigil would infer. See
//! docs/model-families.md for what each setting means.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::DecoderKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Ultralytics letterbox: keep aspect ratio, pad with `pad_value`.
    Letterbox,
    /// Resize to the input size, aspect ratio not kept.
    Stretch,
    /// Feed the frame at its own size (inputs with dynamic height and width).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelScale {
    /// `v / 255`: values 0..1.
    Unit,
    /// `v` as a float: values 0..255.
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// `<stem>.manifest.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Output decoder (`yolov8`, `yolov5`, `end2end`, `ssd`, `classify`,
    /// `anomalib`, `customvision`, `customvision-s1`).
    pub decoder: Option<DecoderKind>,
    /// Class names, index = class id.
    pub labels: Option<Vec<String>>,
    /// `[width, height]` for inputs whose size is dynamic.
    pub input_size: Option<[u32; 2]>,
    pub resize: Option<ResizeMode>,
    pub color: Option<ColorOrder>,
    pub scale: Option<PixelScale>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub layout: Option<Layout>,
    pub pad_value: Option<u8>,
    pub confidence: Option<f32>,
    pub iou: Option<f32>,
    pub max_detections: Option<usize>,
    pub class_agnostic: Option<bool>,
    /// Per-label confidence thresholds, overriding `confidence` for those labels.
    pub class_confidence: Option<BTreeMap<String, f32>>,
    /// Anomaly models: score above which a part is NG.
    pub threshold: Option<f32>,
    /// SSD models: subtracted from the class values (1 for 1-based COCO ids).
    pub class_offset: Option<i64>,
}

/// Where the manifest of `model` would be.
pub fn manifest_path(model: &Path) -> PathBuf {
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    model.with_file_name(format!("{stem}.manifest.toml"))
}

/// Reads the manifest next to `model`, if there is one.
pub(crate) fn read_manifest(model: &Path) -> Result<Option<(PathBuf, Manifest)>, String> {
    let path = manifest_path(model);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("manifest {}: {e}", path.display()))?;
    let m: Manifest = toml::from_str(&text)
        .map_err(|e| format!("manifest {}: {}", path.display(), e.message().trim().replace('\n', " ")))?;
    Ok(Some((path, m)))
}

/// `labels.txt` next to the model (Azure Custom Vision exports ship one).
pub(crate) fn read_labels_txt(model: &Path) -> Option<(PathBuf, Vec<String>)> {
    let path = model.with_file_name("labels.txt");
    let text = std::fs::read_to_string(&path).ok()?;
    let labels: Vec<String> = text.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
    Some((path, labels))
}
