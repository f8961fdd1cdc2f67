//! Deciding how to run a model: which decoder, which preprocessing, which
//! labels and thresholds, and why. Pure logic over what ONNX Runtime reports
//! about the model, so every rule in docs/model-families.md is unit-tested
//! here without a session.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::DecoderKind;
use crate::decode::{DecodeParams, OutputRoles};
use crate::manifest::{ColorOrder, Layout, Manifest, PixelScale, ResizeMode};
use crate::meta::{parse_imgsz, parse_python_names};
use crate::preprocess::{InputPlan, InputType};

/// One input or output as the model declares it (`-1` = dynamic).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
}

impl std::fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {:?}", self.name, self.dtype, self.shape)
    }
}

/// Settings from the Vigil config that override manifest and defaults.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub decoder: Option<DecoderKind>,
    pub confidence: Option<f32>,
    pub iou: Option<f32>,
    pub max_detections: Option<usize>,
    pub class_agnostic: Option<bool>,
    pub class_confidence: BTreeMap<String, f32>,
}

/// Effective thresholds after config > manifest > family default.
#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    pub confidence: f32,
    pub iou: f32,
    pub max_detections: usize,
    pub class_agnostic: bool,
    /// Per-label confidence, overriding `confidence` for those labels.
    pub class_confidence: BTreeMap<String, f32>,
    /// anomalib: NG above this score.
    pub anomaly_threshold: f32,
    /// SSD: subtracted from class values.
    pub class_offset: i64,
}

/// Everything needed to run and decode a model, with the reasons.
#[derive(Debug, Clone, Serialize)]
pub struct ModelPlan {
    pub decoder: DecoderKind,
    /// Why this decoder: manifest, config, output names, metadata or shapes.
    pub decoder_reason: String,
    pub input: InputPlan,
    /// Decoder role -> output name.
    pub outputs: Vec<(String, Option<String>)>,
    #[serde(skip)]
    pub(crate) roles: OutputRoles,
    pub labels: Vec<String>,
    pub labels_source: String,
    /// Number of classes the output encodes, when its shape says.
    pub classes: Option<usize>,
    pub thresholds: Thresholds,
    pub manifest: Option<PathBuf>,
}

impl ModelPlan {
    pub(crate) fn decode_params(&self) -> DecodeParams {
        let t = &self.thresholds;
        let min_class = t.class_confidence.values().copied().fold(t.confidence, f32::min);
        DecodeParams {
            conf: min_class,
            iou: t.iou,
            max_det: t.max_detections,
            class_offset: t.class_offset,
            threshold: t.anomaly_threshold,
            classes: self.classes.or((!self.labels.is_empty()).then_some(self.labels.len())),
        }
    }
}

/// What the model file says about itself.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    pub manifest: Option<(PathBuf, Manifest)>,
    pub labels_txt: Option<(PathBuf, Vec<String>)>,
}

impl ModelFacts {
    /// "inputs images: float32 [1, 3, 640, 640]; outputs output0: float32 [1, 84, 8400]"
    pub fn describe(&self) -> String {
        let j = |v: &[TensorInfo]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        format!("inputs {}; outputs {}", j(&self.inputs), j(&self.outputs))
    }
}

fn output_named<'a>(outs: &'a [TensorInfo], names: &[&str]) -> Option<(usize, &'a TensorInfo)> {
    outs.iter().enumerate().find(|(_, o)| names.iter().any(|n| o.name == *n))
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|s| matches!(s.trim(), "True" | "true" | "1"))
}

/// Picks the decoder: manifest or config first, then output names, then
/// Ultralytics metadata and output shapes.
fn choose_decoder(f: &ModelFacts, o: &Overrides) -> Result<(DecoderKind, String), String> {
    if let Some(d) = o.decoder {
        return Ok((d, "set in the config (models[].decoder)".into()));
    }
    if let Some((p, m)) = &f.manifest
        && let Some(d) = m.decoder
    {
        return Ok((d, format!("set in the manifest {}", p.display())));
    }
    let outs = &f.outputs;
    let has = |n: &str| outs.iter().any(|o| o.name == n);
    if has("pred_score") && has("anomaly_map") {
        return Ok((DecoderKind::Anomalib, "outputs named pred_score and anomaly_map (anomalib)".into()));
    }
    if has("detected_boxes") && has("detected_scores") && has("detected_classes") {
        return Ok((
            DecoderKind::CustomVisionS1,
            "outputs named detected_boxes/scores/classes (Custom Vision S1)".into(),
        ));
    }
    if has("model_outputs0") {
        return Ok((DecoderKind::CustomVision, "output named model_outputs0 (Custom Vision compact)".into()));
    }
    if has("detection_boxes") && has("detection_scores") {
        return Ok((
            DecoderKind::Ssd,
            "outputs named detection_boxes and detection_scores (TF Object Detection API)".into(),
        ));
    }
    if outs.len() == 4 && ssd_by_shape(outs).is_some() {
        return Ok((
            DecoderKind::Ssd,
            "four outputs shaped like boxes [1,K,4], scores [1,K], classes [1,K], count [1]".into(),
        ));
    }
    let task = f.metadata.get("task").map(String::as_str);
    let end2end = is_true(f.metadata.get("end2end"));
    let [out] = outs.as_slice() else {
        return Err(format!("{} outputs with names no family uses", outs.len()));
    };
    let s = out.shape.as_slice();
    match s {
        [_, k, 6] if end2end => {
            Ok((DecoderKind::End2End, format!("Ultralytics metadata end2end=True and output [1, {k}, 6]")))
        }
        [_, c] if task.is_none_or(|t| t == "classify") => Ok((
            DecoderKind::Classify,
            format!("one output [1, {c}]{}", if task.is_some() { " and task=classify" } else { "" }),
        )),
        [_, rows, n] if *rows > 4 && (*n == -1 || *n > *rows) && task.is_none_or(|t| t == "detect") => {
            Ok((DecoderKind::YoloV8, format!("output [1, 4+C, N] = [1, {rows}, {n}] (YOLOv8-style)")))
        }
        [_, n, cols] if *cols > 5 && (*n == -1 || *n > *cols) && *cols != 6 => {
            Ok((DecoderKind::YoloV5, format!("output [1, N, 5+C] = [1, {n}, {cols}] (YOLOv5-style)")))
        }
        [_, k, 6] if *k > 0 && *k <= 1000 => Ok((
            DecoderKind::End2End,
            format!("output [1, {k}, 6] (end-to-end rows x1,y1,x2,y2,score,class)"),
        )),
        _ => Err(format!(
            "the output layout fits no decoder{}",
            task.map(|t| format!(" (Ultralytics task={t})")).unwrap_or_default()
        )),
    }
}

/// Boxes, scores, classes, count by shape: `[1,K,4]`, two `[1,K]`, `[1]`.
fn ssd_by_shape(outs: &[TensorInfo]) -> Option<OutputRoles> {
    let boxes = outs.iter().position(|o| matches!(o.shape.as_slice(), [1, _, 4]))?;
    let count = outs.iter().position(|o| o.shape.len() == 1)?;
    let pairs: Vec<usize> = (0..outs.len()).filter(|&i| outs[i].shape.len() == 2).collect();
    let [scores, classes] = pairs.as_slice() else {
        return None;
    };
    // Scores are float; classes often are too, so names break the tie when they can.
    let (scores, classes) =
        if outs[*classes].name.contains("score") { (*classes, *scores) } else { (*scores, *classes) };
    Some(vec![Some(boxes), Some(scores), Some(classes), Some(count)])
}

fn roles_for(kind: DecoderKind, outs: &[TensorInfo]) -> Result<OutputRoles, String> {
    let by_name = |names: &[&str]| output_named(outs, names).map(|(i, _)| i);
    let need = |names: &[&str], role: &str| {
        by_name(names).ok_or_else(|| {
            format!("the {kind} decoder needs an output named {} (role {role})", names.join(" or "))
        })
    };
    Ok(match kind {
        DecoderKind::YoloV8 | DecoderKind::YoloV5 | DecoderKind::End2End | DecoderKind::Classify => {
            if outs.len() != 1 {
                return Err(format!("the {kind} decoder needs exactly one output, found {}", outs.len()));
            }
            vec![Some(0)]
        }
        DecoderKind::CustomVision => vec![Some(by_name(&["model_outputs0"]).unwrap_or(0))],
        DecoderKind::Ssd => match (
            by_name(&["detection_boxes"]),
            by_name(&["detection_scores"]),
            by_name(&["detection_classes"]),
            by_name(&["num_detections"]),
        ) {
            (Some(b), Some(s), Some(c), Some(n)) => vec![Some(b), Some(s), Some(c), Some(n)],
            _ => ssd_by_shape(outs)
                .ok_or("the ssd decoder needs boxes [1,K,4], scores [1,K], classes [1,K] and count [1]")?,
        },
        DecoderKind::CustomVisionS1 => vec![
            Some(need(&["detected_boxes"], "boxes")?),
            Some(need(&["detected_scores"], "scores")?),
            Some(need(&["detected_classes"], "classes")?),
        ],
        DecoderKind::Anomalib => vec![
            Some(need(&["pred_score"], "score")?),
            Some(need(&["anomaly_map"], "map")?),
            by_name(&["pred_mask"]),
        ],
    })
}

/// Classes encoded in the output shape, where the layout says.
fn classes_in_output(
    kind: DecoderKind,
    outs: &[TensorInfo],
    roles: &OutputRoles,
) -> Result<Option<usize>, String> {
    let shape = |i: usize| roles.get(i).copied().flatten().map(|o| outs[o].shape.as_slice()).unwrap_or(&[]);
    let known = |v: i64| (v > 0).then_some(v as usize);
    Ok(match (kind, shape(0)) {
        (DecoderKind::YoloV8, [_, rows, _]) => known(*rows).map(|r| r - 4),
        (DecoderKind::YoloV5, [_, _, cols]) => known(*cols).map(|c| c - 5),
        (DecoderKind::Classify, [_, c]) => known(*c),
        (DecoderKind::CustomVision, [_, ch, _, _]) => {
            let ch = known(*ch).ok_or("model_outputs0 has a dynamic channel count")?;
            if ch % 5 != 0 || ch / 5 < 6 {
                return Err(format!("model_outputs0 has {ch} channels, not 5 anchors x (5 + C)"));
            }
            Some(ch / 5 - 5)
        }
        (
            DecoderKind::YoloV8 | DecoderKind::YoloV5 | DecoderKind::Classify | DecoderKind::CustomVision,
            s,
        ) => {
            return Err(format!("the {kind} decoder cannot read an output shaped {s:?}"));
        }
        _ => None,
    })
}

/// Builds the plan, or says precisely why the model cannot run.
pub fn plan(f: &ModelFacts, o: &Overrides) -> Result<ModelPlan, String> {
    let (decoder, decoder_reason) = choose_decoder(f, o)?;
    let roles = roles_for(decoder, &f.outputs)?;
    let classes = classes_in_output(decoder, &f.outputs, &roles)?;
    let m = f.manifest.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();

    // The image input.
    let [input] = f.inputs.as_slice() else {
        return Err(format!("expected one image input, found {}", f.inputs.len()));
    };
    let s = &input.shape;
    if s.len() != 4 {
        return Err(format!(
            "wrong input rank: {} is {:?}, expected an image [N, 3, H, W] or [N, H, W, 3]",
            input.name, s
        ));
    }
    let layout = match (m.layout, s[1], s[3]) {
        (Some(l), _, _) => l,
        (None, 3, _) => Layout::Nchw,
        (None, _, 3) => Layout::Nhwc,
        _ => {
            return Err(format!(
                "input {} is {:?}: no dimension of 3 colour channels in position 1 (NCHW) or 3 (NHWC); set `layout` in the manifest",
                input.name, s
            ));
        }
    };
    let (h, w) = match layout {
        Layout::Nchw => (s[2], s[3]),
        Layout::Nhwc => (s[1], s[2]),
    };
    let dtype = match input.dtype.as_str() {
        "float32" => InputType::Float32,
        "float16" => InputType::Float16,
        "uint8" => InputType::Uint8,
        other => {
            return Err(format!(
                "input {} is {other}; Vigil feeds float32, float16 or uint8 images",
                input.name
            ));
        }
    };
    let dynamic = h <= 0 || w <= 0;
    let yolo = matches!(decoder, DecoderKind::YoloV8 | DecoderKind::YoloV5 | DecoderKind::End2End);
    let resize = m.resize.unwrap_or(match decoder {
        _ if yolo => ResizeMode::Letterbox,
        DecoderKind::Ssd if dynamic => ResizeMode::None,
        _ => ResizeMode::Stretch,
    });
    let size = if !dynamic {
        Some((w as u32, h as u32))
    } else if resize == ResizeMode::None {
        None
    } else if let Some([mw, mh]) = m.input_size {
        Some((mw, mh))
    } else if let Some((ih, iw)) = f.metadata.get("imgsz").and_then(|v| parse_imgsz(v)) {
        Some((iw, ih))
    } else if yolo {
        Some((640, 640))
    } else {
        return Err(format!(
            "input {} has a dynamic size {:?}; set `input_size = [width, height]` or `resize = \"none\"` in the manifest",
            input.name, s
        ));
    };
    // Custom Vision says its pixel conventions in metadata.
    let cv_bgr = f.metadata.get("Image.BitmapPixelFormat").map(|v| v.eq_ignore_ascii_case("Bgr8"));
    let cv_raw = f.metadata.get("Image.NominalPixelRange").map(|v| v.contains("0_255"));
    let custom_vision = matches!(decoder, DecoderKind::CustomVision | DecoderKind::CustomVisionS1);
    let color = m.color.unwrap_or(match (cv_bgr, decoder) {
        (Some(true), _) => ColorOrder::Bgr,
        (Some(false), _) => ColorOrder::Rgb,
        (None, DecoderKind::CustomVision) => ColorOrder::Bgr,
        _ => ColorOrder::Rgb,
    });
    let scale = m.scale.unwrap_or(match (cv_raw, custom_vision) {
        (Some(true), _) | (None, true) => PixelScale::Raw,
        _ => PixelScale::Unit,
    });
    let input_plan = InputPlan {
        name: input.name.clone(),
        layout,
        dtype,
        size,
        resize,
        color,
        scale,
        mean: m.mean.unwrap_or([0.0; 3]),
        std: m.std.unwrap_or([1.0; 3]),
        pad_value: m.pad_value.unwrap_or(114),
    };
    if input_plan.std.contains(&0.0) {
        return Err("manifest std has a 0".into());
    }

    // Labels.
    let meta_names = match f.metadata.get("names") {
        Some(n) => {
            Some(parse_python_names(n).map_err(|e| format!("its `names` metadata cannot be read ({e})"))?)
        }
        None => None,
    };
    let (labels, labels_source) = if let Some(l) = m.labels.clone() {
        (l, "manifest".to_string())
    } else if let Some(l) = meta_names {
        (l, "metadata `names`".to_string())
    } else if let Some((p, l)) = &f.labels_txt {
        (l.clone(), p.display().to_string())
    } else if let Some(c) = classes {
        ((0..c).map(|i| format!("class{i}")).collect(), "none found: numbered".to_string())
    } else {
        (Vec::new(), "none found: numbered".to_string())
    };
    if let Some(c) = classes
        && labels.len() != c
    {
        return Err(format!(
            "it has {} labels (from {labels_source}) but its output has {c} classes",
            labels.len()
        ));
    }

    // Thresholds: config, then manifest, then the family's defaults.
    let cv = decoder == DecoderKind::CustomVision;
    let thresholds = Thresholds {
        confidence: o.confidence.or(m.confidence).unwrap_or(if cv { 0.1 } else { 0.25 }),
        iou: o.iou.or(m.iou).unwrap_or(if cv { 0.45 } else { 0.7 }),
        max_detections: o.max_detections.or(m.max_detections).unwrap_or(if cv { 20 } else { 300 }),
        class_agnostic: o.class_agnostic.or(m.class_agnostic).unwrap_or(false),
        class_confidence: {
            let mut c = m.class_confidence.clone().unwrap_or_default();
            c.extend(o.class_confidence.clone());
            c
        },
        anomaly_threshold: m.threshold.unwrap_or(0.5),
        class_offset: m.class_offset.unwrap_or(0),
    };
    for (label, v) in &thresholds.class_confidence {
        if !labels.iter().any(|l| l == label) {
            return Err(format!(
                "class_confidence names {label:?}, which is not one of the model's labels ({})",
                labels.join(", ")
            ));
        }
        if !(0.0..=1.0).contains(v) {
            return Err(format!("class_confidence for {label:?} is {v}; it must be between 0 and 1"));
        }
    }
    let names = decoder.roles();
    let outputs = names
        .iter()
        .zip(&roles)
        .map(|(r, i)| (r.to_string(), i.map(|i| f.outputs[i].name.clone())))
        .collect();
    Ok(ModelPlan {
        decoder,
        decoder_reason,
        input: input_plan,
        outputs,
        roles,
        labels,
        labels_source,
        classes,
        thresholds,
        manifest: f.manifest.as_ref().map(|(p, _)| p.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, dtype: &str, shape: &[i64]) -> TensorInfo {
        TensorInfo { name: name.into(), dtype: dtype.into(), shape: shape.to_vec() }
    }

    fn facts(inputs: Vec<TensorInfo>, outputs: Vec<TensorInfo>, meta: &[(&str, &str)]) -> ModelFacts {
        ModelFacts {
            inputs,
            outputs,
            metadata: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            manifest: None,
            labels_txt: None,
        }
    }

    fn img() -> TensorInfo {
        t("images", "float32", &[1, 3, 640, 640])
    }

    fn decoder_of(f: &ModelFacts) -> Result<DecoderKind, String> {
        plan(f, &Overrides::default()).map(|p| p.decoder)
    }

    #[test]
    fn tells_the_yolo_layouts_apart_by_shape() {
        let v8 = facts(vec![img()], vec![t("output0", "float32", &[1, 84, 8400])], &[]);
        assert_eq!(decoder_of(&v8), Ok(DecoderKind::YoloV8));
        let v5 = facts(vec![img()], vec![t("output0", "float32", &[1, 25200, 85])], &[]);
        assert_eq!(decoder_of(&v5), Ok(DecoderKind::YoloV5));
        let e2e = facts(vec![img()], vec![t("output0", "float32", &[1, 300, 6])], &[("end2end", "True")]);
        assert_eq!(decoder_of(&e2e), Ok(DecoderKind::End2End));
        let e2e_plain = facts(vec![img()], vec![t("output0", "float32", &[1, 300, 6])], &[]);
        assert_eq!(decoder_of(&e2e_plain), Ok(DecoderKind::End2End));
        let cls = facts(
            vec![t("images", "float32", &[1, 3, 224, 224])],
            vec![t("output0", "float32", &[1, 1000])],
            &[],
        );
        assert_eq!(decoder_of(&cls), Ok(DecoderKind::Classify));
        // Dynamic anchors count (dynamic=True exports).
        let v8dyn = facts(
            vec![t("images", "float32", &[-1, 3, -1, -1])],
            vec![t("output0", "float32", &[-1, 84, -1])],
            &[],
        );
        let p = plan(&v8dyn, &Overrides::default()).expect("plan");
        assert_eq!(p.decoder, DecoderKind::YoloV8);
        assert_eq!(p.input.size, Some((640, 640)));
    }

    #[test]
    fn recognises_families_by_output_names() {
        let anomalib = facts(
            vec![t("input", "float32", &[1, 3, 256, 256])],
            vec![t("pred_score", "float32", &[1]), t("anomaly_map", "float32", &[1, 1, 256, 256])],
            &[],
        );
        let p = plan(&anomalib, &Overrides::default()).expect("plan");
        assert_eq!(p.decoder, DecoderKind::Anomalib);
        assert_eq!(p.roles, vec![Some(0), Some(1), None]);
        let cv = facts(
            vec![t("data", "float32", &[1, 3, 416, 416])],
            vec![t("model_outputs0", "float32", &[1, 35, 13, 13])],
            &[("Image.BitmapPixelFormat", "Bgr8"), ("Image.NominalPixelRange", "NominalRange_0_255")],
        );
        let p = plan(&cv, &Overrides::default()).expect("plan");
        assert_eq!(
            (p.decoder, p.classes, p.input.color, p.input.scale),
            (DecoderKind::CustomVision, Some(2), ColorOrder::Bgr, PixelScale::Raw)
        );
        assert_eq!((p.thresholds.confidence, p.thresholds.iou, p.thresholds.max_detections), (0.1, 0.45, 20));
        let ssd = facts(
            vec![t("input_tensor", "uint8", &[1, -1, -1, 3])],
            vec![
                t("detection_boxes", "float32", &[1, 100, 4]),
                t("detection_classes", "float32", &[1, 100]),
                t("detection_scores", "float32", &[1, 100]),
                t("num_detections", "float32", &[1]),
            ],
            &[],
        );
        let p = plan(&ssd, &Overrides::default()).expect("plan");
        assert_eq!(
            (p.decoder, p.input.layout, p.input.resize, p.input.size),
            (DecoderKind::Ssd, Layout::Nhwc, ResizeMode::None, None)
        );
        assert_eq!(p.roles, vec![Some(0), Some(2), Some(1), Some(3)]);
    }

    #[test]
    fn refuses_what_fits_nothing_and_says_what_it_found() {
        let odd = facts(vec![img()], vec![t("out", "float32", &[1, 7, 7, 7])], &[]);
        let e = decoder_of(&odd).unwrap_err();
        assert!(e.contains("fits no decoder"), "{e}");
        let rank3 = facts(
            vec![t("images", "float32", &[1, 3, 640])],
            vec![t("output0", "float32", &[1, 84, 8400])],
            &[],
        );
        let e = decoder_of(&rank3).unwrap_err();
        assert!(e.contains("wrong input rank") && e.contains("[1, 3, 640]"), "{e}");
        let labels = facts(
            vec![img()],
            vec![t("output0", "float32", &[1, 7, 8400])],
            &[("names", "{0: 'a', 1: 'b'}")],
        );
        let e = decoder_of(&labels).unwrap_err();
        assert!(e.contains("2 labels") && e.contains("3 classes"), "{e}");
        let int_in = facts(
            vec![t("images", "int32", &[1, 3, 64, 64])],
            vec![t("output0", "float32", &[1, 84, 8400])],
            &[],
        );
        assert!(decoder_of(&int_in).unwrap_err().contains("int32"));
    }

    #[test]
    fn config_beats_manifest_beats_defaults() {
        let mut f = facts(
            vec![img()],
            vec![t("output0", "float32", &[1, 6, 8400])],
            &[("names", "{0: 'a', 1: 'b'}")],
        );
        f.manifest = Some((
            PathBuf::from("m.manifest.toml"),
            Manifest { confidence: Some(0.4), iou: Some(0.5), ..Manifest::default() },
        ));
        let o = Overrides { confidence: Some(0.6), ..Overrides::default() };
        let p = plan(&f, &o).expect("plan");
        assert_eq!((p.thresholds.confidence, p.thresholds.iou, p.thresholds.max_detections), (0.6, 0.5, 300));
        let mut o = Overrides::default();
        o.class_confidence.insert("b".into(), 0.1);
        let p = plan(&f, &o).expect("plan");
        assert_eq!(p.decode_params().conf, 0.1);
        o.class_confidence.insert("zebra".into(), 0.1);
        assert!(plan(&f, &o).unwrap_err().contains("zebra"));
    }
}
