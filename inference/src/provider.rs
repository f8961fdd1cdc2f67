//! Execution providers: where ONNX Runtime runs the model.
//!
//! CPU is the default. CUDA, TensorRT and OpenVINO need two things: this
//! crate built with the matching cargo feature, and an ONNX Runtime library
//! that contains the provider (the PyPI CPU wheel does not). When a requested
//! provider fails to register, Vigil refuses the model with the reason, unless
//! the config allows a fallback to CPU; then it warns loudly and health and
//! metrics report the provider really in use. It never falls back silently.

use ort::session::builder::SessionBuilder;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[default]
    Cpu,
    Cuda,
    Tensorrt,
    Openvino,
}

impl Provider {
    /// ONNX Runtime's name for it.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::Tensorrt => "TensorrtExecutionProvider",
            Provider::Openvino => "OpenVINOExecutionProvider",
        }
    }
}

/// The provider a model asked for and the one it got.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderStatus {
    pub requested: String,
    pub active: String,
    /// Why `active` differs from `requested`.
    pub fallback_reason: Option<String>,
}

/// The `ort` execution provider for `provider`; `None` for the CPU (always there).
fn dispatch(
    provider: Provider,
    device_id: i32,
) -> Result<Option<ort::ep::ExecutionProviderDispatch>, String> {
    let _ = device_id;
    match provider {
        Provider::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Provider::Cuda => {
            Ok(Some(ort::ep::CUDA::default().with_device_id(device_id).build().error_on_failure()))
        }
        #[cfg(feature = "tensorrt")]
        Provider::Tensorrt => {
            Ok(Some(ort::ep::TensorRT::default().with_device_id(device_id).build().error_on_failure()))
        }
        #[cfg(feature = "openvino")]
        Provider::Openvino => Ok(Some(ort::ep::OpenVINO::default().build().error_on_failure())),
        #[allow(unreachable_patterns)]
        other => {
            let feature = format!("{other:?}").to_lowercase();
            Err(format!(
                "this vigil was built without the `{feature}` cargo feature; rebuild with `--features {feature}` or use provider = \"cpu\""
            ))
        }
    }
}

/// Registers `provider` on `builder`. Errors are sentences a person can act on.
pub(crate) fn register(
    builder: SessionBuilder,
    provider: Provider,
    device_id: i32,
) -> Result<SessionBuilder, String> {
    let Some(ep) = dispatch(provider, device_id)? else {
        return Ok(builder);
    };
    builder.with_execution_providers([ep]).map_err(|e| {
        format!(
            "{} could not be registered: {e}. The ONNX Runtime library in use must be a build with it \
             (the PyPI CPU wheel is not), and its drivers must be installed",
            provider.ort_name()
        )
    })
}
