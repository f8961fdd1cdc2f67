//! vigil-inference: ONNX models in, detections out.
//!
//! ```text
//!  ImageView (RGB8, any stride)
//!     │ letterbox: OpenCV-exact bilinear resize + pad 114, /255, HWC→NCHW,
//!     │            written straight into a reused f32 tensor buffer
//!     ▼
//!  ort Session::run (ONNX Runtime, loaded at run time from the PyPI wheel's library)
//!     │ output tensor read in place (no copy)
//!     ▼
//!  decoder (YOLOv8 [1,4+C,N]) → thresholds → NMS → boxes mapped back to the
//!  original image's pixels
//! ```
//!
//! This is the only crate that links `ort`; none of its types leave it.

mod decode;
mod error;
mod image;
mod letterbox;
mod meta;
mod model;
mod nms;
pub mod runtime;

pub use decode::DecoderKind;
pub use error::InferenceError;
pub use image::ImageView;
pub use letterbox::{Letterbox, resize_bilinear_cv};
pub use meta::parse_python_names;
pub use model::{Detector, ModelInfo, ModelOptions, Scratch, Timings};
pub use nms::{BBox, Detection, nms};
