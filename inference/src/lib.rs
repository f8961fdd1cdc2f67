//! vigil-inference: ONNX models in, predictions out.
//!
//! ```text
//!  model.onnx (+ model.manifest.toml, labels.txt)
//!     │ read_facts: inputs, outputs, metadata      plan: decoder + preprocessing
//!     ▼                                                  + labels + thresholds, with reasons
//!  ImageView (RGB8, any stride)
//!     │ preprocess: cv2-exact resize (letterbox / stretch / none), colour order,
//!     │             scale, mean/std, NCHW/NHWC, f32/f16/u8, into a reused buffer
//!     ▼
//!  ort Session::run (ONNX Runtime loaded at run time; CPU, CUDA, TensorRT, OpenVINO)
//!     │ outputs read in place when they are f32
//!     ▼
//!  decoder (yolov8, yolov5, end2end, ssd, classify, anomalib, customvision, customvision-s1)
//!     → per-class thresholds → NMS (YOLO heads) → boxes in the frame's pixels
//! ```
//!
//! Guards for a box left alone for months: a model that asks for more than
//! the box has is refused before it is fed (`limits`), every run's outputs
//! are checked before they are read (`decode`), and runs can be stopped
//! from another thread or by a deadline (`stop`).
//!
//! The contract for every family is docs/model-families.md. This is the only
//! crate that links `ort`; none of its types leave it.

mod decode;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod image;
mod letterbox;
mod limits;
mod manifest;
mod meta;
mod model;
mod nms;
mod plan;
mod preprocess;
mod provider;
mod quant;
pub mod runtime;
mod session;
mod simd;
mod stop;

pub use decode::DecoderKind;
pub use error::InferenceError;
pub use image::{I420View, ImageView, YuvMatrix};
pub use letterbox::{Letterbox, resize_bilinear_cv};
pub use limits::{
    ModelLimits, WORKING_MEMORY, default_max_batch, default_max_input_pixels, default_max_input_side,
    default_memory_share, default_test_run,
};
pub use manifest::{ColorOrder, Layout, Manifest, PixelScale, ResizeMode, manifest_path};
pub use meta::parse_python_names;
pub use model::{
    Anomaly, ClassScore, Detector, ModelInfo, ModelOptions, Prediction, Prepared, RunOn, RunScratch, Scratch,
    Timings,
};
pub use nms::{BBox, Detection, nms};
pub use plan::{ModelFacts, ModelPlan, Overrides, TensorInfo, Thresholds, plan};
pub use preprocess::{Geometry, InputPlan, InputType};
pub use provider::{Provider, ProviderStatus};
pub use quant::{GraphReadError, Quantization, quantization};
pub use session::read_facts;
pub use stop::RunCancel;
