use std::path::PathBuf;
use std::time::Duration;

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

    /// Refused before anything of the model's size was allocated (see
    /// [`crate::ModelLimits`]).
    #[error("model {path} asks for more than this box allows: {reason}")]
    TooLarge { path: PathBuf, reason: String },

    #[error("model {path}: {reason}")]
    Provider { path: PathBuf, reason: String },

    #[error("inference failed: {0}")]
    Run(String),

    /// A run's output did not fit the decoder (a model whose output shape
    /// follows its input): that run is lost, the model itself still works.
    #[error("the model's output on this frame does not fit its decoder: {0}")]
    Output(String),

    /// A run stopped by its deadline or by a [`crate::RunCancel`]; the
    /// session stays usable.
    #[error("the model run was stopped after {after:.1?}: {why}")]
    Stopped { after: Duration, why: String },
}
