//! Finding and starting ONNX Runtime.
//!
//! `ort` is built with `load-dynamic`: the C library is opened at run time,
//! so one Vigil binary works with whichever ONNX Runtime build the box has
//! (CPU from the PyPI wheel, or a GPU build). Where it looks, in order:
//!
//! 1. `ORT_DYLIB_PATH` (the variable `ort` itself documents), when set;
//! 2. `libonnxruntime.so` beside the `vigil` executable (a packaged install);
//! 3. the path `deploy/bootstrap.sh` used, baked in at build time through
//!    `.cargo/config.toml` (`VIGIL_ORT_DYLIB`), so a checkout just works;
//! 4. `/usr/local/lib/libonnxruntime.so`, `/usr/lib/libonnxruntime.so`.
//!
//! A missing library is an error with instructions: with `load-dynamic`,
//! `ort` would otherwise panic at its first API call.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::InferenceError;

/// Where ONNX Runtime was loaded from.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    pub library: PathBuf,
}

static RUNTIME: OnceLock<Result<RuntimeInfo, InferenceError>> = OnceLock::new();
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// Candidate library paths, in search order. The first that exists is used;
/// an explicit `ORT_DYLIB_PATH` is used (or fails) on its own.
pub fn candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        out.push(dir.join("libonnxruntime.so"));
    }
    if let Some(baked) = option_env!("VIGIL_ORT_DYLIB") {
        out.push(PathBuf::from(baked));
    }
    out.push(PathBuf::from("/usr/local/lib/libonnxruntime.so"));
    out.push(PathBuf::from("/usr/lib/libonnxruntime.so"));
    out
}

/// Loads ONNX Runtime once per process; later calls return the first result.
pub fn init() -> Result<RuntimeInfo, InferenceError> {
    RUNTIME
        .get_or_init(|| {
            let candidates = candidates();
            let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
                let path = candidates.first().cloned().unwrap_or_default();
                let searched: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
                return Err(InferenceError::RuntimeMissing {
                    path,
                    reason: format!("no such file (searched {})", searched.join(", ")),
                });
            };
            let builder = ort::init_from(&path)
                .map_err(|e| InferenceError::RuntimeMissing { path: path.clone(), reason: e.to_string() })?;
            let env =
                builder.with_name("vigil").build().map_err(|e| InferenceError::Runtime(e.to_string()))?;
            let _ = ENVIRONMENT.set(env);
            tracing::debug!(library = %path.display(), "ONNX Runtime loaded");
            Ok(RuntimeInfo { library: path })
        })
        .clone()
}

pub(crate) fn environment() -> Result<&'static ort::environment::Environment, InferenceError> {
    init()?;
    ENVIRONMENT.get().ok_or_else(|| InferenceError::Runtime("environment missing after init".into()))
}
