use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};
use sha2::{Digest, Sha256};

use crate::decode::{DecodeScratch, decode_yolov8};
use crate::letterbox::ResizeScratch;
use crate::meta::{parse_imgsz, parse_python_names};
use crate::{DecoderKind, Detection, ImageView, InferenceError, Letterbox, nms, runtime};

/// Thresholds and threads for one model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Keep detections scoring strictly above this.
    pub confidence: f32,
    /// NMS drops a box overlapping a better one of the same class by more than this.
    pub iou: f32,
    pub max_detections: usize,
    /// Suppress overlaps across classes too.
    pub class_agnostic: bool,
    /// ONNX Runtime intra-op threads (0 = ONNX Runtime's default: one per core).
    pub intra_threads: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            confidence: 0.25,
            iou: 0.7,
            max_detections: 300,
            class_agnostic: false,
            intra_threads: 0,
        }
    }
}

/// What Vigil learned about a model when it loaded it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    /// Of the file's bytes, as loaded: names the exact version in every event.
    pub sha256: String,
    pub decoder: DecoderKind,
    pub input_name: String,
    pub input_width: u32,
    pub input_height: u32,
    pub output_name: String,
    pub output_shape: Vec<i64>,
    pub labels: Vec<String>,
    /// The execution provider that really runs the model.
    pub provider: String,
    pub metadata: BTreeMap<String, String>,
}

/// Time spent in each stage of one `detect` call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub preprocess: Duration,
    pub run: Duration,
    pub postprocess: Duration,
}

/// Per-worker buffers, reused for every frame so the hot path does not allocate.
#[derive(Debug, Default)]
pub struct Scratch {
    input: Vec<f32>,
    resize: ResizeScratch,
    decode: DecodeScratch,
    candidates: Vec<Detection>,
}

/// A loaded model, ready to run. Shared by every camera that uses it (one
/// copy of the weights); `run` is serialised because ONNX Runtime sessions
/// are not safe to run concurrently from `ort`.
#[derive(Debug)]
pub struct Detector {
    info: Arc<ModelInfo>,
    labels: Vec<Arc<str>>,
    options: ModelOptions,
    classes: usize,
    session: Mutex<Session>,
}

impl Detector {
    /// Loads, inspects and validates a model. Fails with a message that says
    /// what was found when no decoder fits.
    pub fn load(
        name: &str,
        path: &Path,
        options: ModelOptions,
    ) -> Result<Detector, InferenceError> {
        let bytes = std::fs::read(path).map_err(|e| InferenceError::ModelUnreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let env = runtime::environment()?;
        let load_err = |reason: String| InferenceError::ModelLoad {
            path: path.to_owned(),
            reason,
        };
        let mut builder = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
        builder = builder
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(e.to_string()))?;
        if options.intra_threads > 0 {
            builder = builder
                .with_intra_threads(options.intra_threads)
                .map_err(|e| load_err(e.to_string()))?;
        }
        let session = builder
            .commit_from_memory(&bytes)
            .map_err(|e| load_err(e.to_string()))?;

        let metadata = read_metadata(&session);
        let unsupported = |reason: String| InferenceError::Unsupported {
            path: path.to_owned(),
            reason,
        };
        let found = describe_io(&session);

        let [input] = session.inputs() else {
            return Err(unsupported(format!(
                "expected one image input; found {found}"
            )));
        };
        let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
            return Err(unsupported(format!(
                "the input is not a tensor; found {found}"
            )));
        };
        if *ty != TensorElementType::Float32 {
            return Err(unsupported(format!(
                "the input is {ty:?}, Vigil feeds float32 images; found {found}"
            )));
        }
        if shape.len() != 4 || !(shape[1] == 3 || shape[1] == -1) {
            return Err(unsupported(format!(
                "the input must be an NCHW image [1, 3, height, width]; found {found}"
            )));
        }
        let imgsz = metadata.get("imgsz").and_then(|s| parse_imgsz(s));
        let dim = |v: i64, fallback: Option<u32>| if v > 0 { Some(v as u32) } else { fallback };
        let (Some(input_height), Some(input_width)) = (
            dim(shape[2], imgsz.map(|s| s.0).or(Some(640))),
            dim(shape[3], imgsz.map(|s| s.1).or(Some(640))),
        ) else {
            return Err(unsupported(format!(
                "cannot tell the input size; found {found}"
            )));
        };

        let Some(output) = session.outputs().first() else {
            return Err(unsupported(format!(
                "the model has no outputs; found {found}"
            )));
        };
        let out_shape: Vec<i64> = match output.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape,
                ..
            } => shape.to_vec(),
            _ => {
                return Err(unsupported(format!(
                    "the first output is not a float32 tensor; found {found}"
                )));
            }
        };
        // YOLOv8 layout: [1, 4 + C, N], with the anchor count N larger than the row count.
        let decoder = match out_shape.as_slice() {
            [b, rows, n] if (*b == 1 || *b == -1) && *rows > 4 && (*n == -1 || *n > *rows) => {
                DecoderKind::YoloV8
            }
            _ => {
                return Err(unsupported(format!(
                    "no decoder fits the output layout; found {found}. Supported here: YOLOv8-style [1, 4+C, N]"
                )));
            }
        };
        let classes = (out_shape[1] - 4) as usize;

        let labels = match metadata.get("names") {
            Some(names) => parse_python_names(names)
                .map_err(|e| unsupported(format!("its `names` metadata cannot be read ({e})")))?,
            None => (0..classes).map(|i| format!("class{i}")).collect(),
        };
        if labels.len() != classes {
            return Err(unsupported(format!(
                "it has {} labels but its output has {classes} classes; found {found}",
                labels.len()
            )));
        }

        let info = ModelInfo {
            name: name.to_owned(),
            path: path.to_owned(),
            sha256: hex(&Sha256::digest(&bytes)),
            decoder,
            input_name: input.name().to_owned(),
            input_width,
            input_height,
            output_name: output.name().to_owned(),
            output_shape: out_shape,
            labels: labels.clone(),
            provider: "CPUExecutionProvider".into(),
            metadata,
        };
        let detector = Detector {
            info: Arc::new(info),
            labels: labels.into_iter().map(Arc::from).collect(),
            options,
            classes,
            session: Mutex::new(session),
        };
        // Run once on a blank frame: catches models that load but fail at run
        // time (bad shapes inside the graph) before they meet a camera.
        let blank = vec![0u8; 64 * 48 * 3];
        let view =
            ImageView::new(&blank, 64, 48, 64 * 3).ok_or_else(|| unsupported("internal".into()))?;
        detector
            .detect(&view, &mut Scratch::default())
            .map_err(|e| unsupported(format!("a test run failed: {e}")))?;
        Ok(detector)
    }

    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.info
    }

    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// Runs the model on one image. Boxes come back in `img`'s pixels.
    pub fn detect(
        &self,
        img: &ImageView<'_>,
        scratch: &mut Scratch,
    ) -> Result<(Vec<Detection>, Timings), InferenceError> {
        let t0 = Instant::now();
        let (w, h) = (self.info.input_width, self.info.input_height);
        let lb = Letterbox::new(img.width, img.height, w, h);
        scratch.input.resize(3 * w as usize * h as usize, 0.0);
        lb.fill_nchw(img, &mut scratch.input, &mut scratch.resize);
        let t1 = Instant::now();

        let input =
            TensorRef::from_array_view(([1usize, 3, h as usize, w as usize], &scratch.input[..]))
                .map_err(|e| InferenceError::Run(e.to_string()))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| InferenceError::Run("session lock poisoned".into()))?;
        let outputs = session
            .run(ort::inputs![input])
            .map_err(|e| InferenceError::Run(e.to_string()))?;
        let t2 = Instant::now();

        let (shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| InferenceError::Run(e.to_string()))?;
        let (rows, anchors) = match **shape {
            [1, rows, n] if rows as usize == 4 + self.classes => (rows as usize, n as usize),
            _ => {
                return Err(InferenceError::Run(format!(
                    "unexpected output shape {:?}",
                    &**shape
                )));
            }
        };
        debug_assert_eq!(rows * anchors, data.len());
        scratch.candidates.clear();
        match self.info.decoder {
            DecoderKind::YoloV8 => decode_yolov8(
                data,
                self.classes,
                anchors,
                self.options.confidence,
                &self.labels,
                &mut scratch.decode,
                &mut scratch.candidates,
            ),
        }
        drop(outputs);
        drop(session);
        let mut dets = nms(
            std::mem::take(&mut scratch.candidates),
            self.options.iou,
            self.options.class_agnostic,
            self.options.max_detections,
        );
        for d in &mut dets {
            let (x1, y1) = lb.to_source(d.bbox.x1, d.bbox.y1);
            let (x2, y2) = lb.to_source(d.bbox.x2, d.bbox.y2);
            d.bbox = crate::BBox { x1, y1, x2, y2 };
        }
        let t3 = Instant::now();
        Ok((
            dets,
            Timings {
                preprocess: t1 - t0,
                run: t2 - t1,
                postprocess: t3 - t2,
            },
        ))
    }
}

fn read_metadata(session: &Session) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok(meta) = session.metadata()
        && let Ok(keys) = meta.custom_keys()
    {
        for k in keys {
            if let Some(v) = meta.custom(&k) {
                out.insert(k, v);
            }
        }
    }
    out
}

/// "inputs images: float32 [1, 3, 640, 640]; outputs output0: float32 [1, 84, 8400]"
fn describe_io(session: &Session) -> String {
    let one = |o: &ort::value::Outlet| match o.dtype() {
        ValueType::Tensor { ty, shape, .. } => format!("{}: {:?} {:?}", o.name(), ty, &**shape),
        other => format!("{}: {other:?}", o.name()),
    };
    let ins: Vec<String> = session.inputs().iter().map(one).collect();
    let outs: Vec<String> = session.outputs().iter().map(one).collect();
    format!("inputs {}; outputs {}", ins.join(", "), outs.join(", "))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
