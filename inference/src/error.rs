use std::path::PathBuf;

use thiserror::Error;

/// Errors from loading or running a model. Messages say what to do.
#[derive(Debug, Clone, Error)]
pub enum InferenceError {
    #[error(
        "the ONNX Runtime library was not found at {path}: {reason}. Run deploy/bootstrap.sh, \
         or point ORT_DYLIB_PATH at libonnxruntime.so.1.31.1"
    )]
    RuntimeMissing { path: PathBuf, reason: String },

    #[error("ONNX Runtime could not start: {0}")]
    Runtime(String),

    #[error("model file {path} cannot be read: {reason}")]
    ModelUnreadable { path: PathBuf, reason: String },

    #[error(
        "model {path} could not be loaded by ONNX Runtime: {reason}. Is it a complete .onnx \
         export (not a .pt file, not truncated)?"
    )]
    ModelLoad { path: PathBuf, reason: String },

    #[error("model {path} does not fit any decoder: {reason}")]
    Unsupported { path: PathBuf, reason: String },

    #[error("model {path}: {reason}")]
    Provider { path: PathBuf, reason: String },

    #[error("inference failed: {0}")]
    Run(String),
}
