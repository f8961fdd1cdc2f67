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
static SHARED_ARENA: OnceLock<bool> = OnceLock::new();

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
            let _ = SHARED_ARENA.set(register_shared_arena(&env));
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

/// Whether sessions should allocate from the process-wide CPU arena.
pub fn shared_arena() -> bool {
    SHARED_ARENA.get().copied().unwrap_or(false)
}

/// One CPU memory arena for every session in the process.
///
/// Each session otherwise grows an arena of its own to its peak and keeps it:
/// side-by-side copies of a model and, during a hot swap, the old and the new
/// version each held one. With the arena shared, memory follows the runs that
/// are actually in flight (at most one per runner thread, plus a swap's test
/// run). Measured with YOLOv8n, two copies swapped for two more: peak RSS
/// 356 -> 254 MB, run time unchanged. Growth stays ONNX Runtime's default
/// (next power of two): growing by exactly the request measured no smaller.
#[allow(unsafe_code)] // `ort` has no wrapper for CreateAndRegisterAllocator
fn register_shared_arena(env: &ort::environment::Environment) -> bool {
    use ort::AsPointer;
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    let info = match MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Arena, MemoryType::Default) {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(error = %e, "no shared CPU arena; each session keeps its own");
            return false;
        }
    };
    // SAFETY: both pointers come from live `ort` wrappers (the environment is
    // kept for the life of the process); a null arena config asks for the
    // defaults; ONNX Runtime copies what it needs from `info`.
    let status = unsafe {
        (ort::api().CreateAndRegisterAllocator)(env.ptr().cast_mut(), info.ptr(), std::ptr::null())
    };
    // SAFETY: `status` was just returned by the C API and is consumed once.
    match unsafe { ort::Error::result_from_status(status) } {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "no shared CPU arena; each session keeps its own");
            false
        }
    }
}

/// Sets glibc's allocator up for a long-running process with many threads;
/// call first thing in `main`, before any thread starts.
///
/// glibc gives threads their own heaps (up to eight per core), and memory
/// freed into one is only reused by the threads that land on it: with four
/// cameras' decoders, the runners and the async workers, those heaps held
/// tens of MB of freed frames and tensors. One heap per core keeps the
/// contention low (frames and tensors come from pools and arenas, not from
/// malloc per frame) and measured 380 -> 348 MB peak with four cameras,
/// throughput unchanged.
///
/// Blocks of 128 KiB and more (frames, model inputs, ONNX Runtime's arena
/// chunks, a model file being loaded) are always mapped on their own, so
/// that freeing one gives it back. glibc's default raises that threshold to
/// the largest block freed so far, after which such blocks come from the
/// heap, where a load's garbage stays resident under live data. The big
/// blocks are pooled (frames by GStreamer, inputs per camera, the arena), so
/// the extra mapping costs nothing per frame: four cameras, steady RSS
/// 300 -> 282 MB, CPU per frame unchanged.
#[allow(unsafe_code)] // libc's mallopt; no safe wrapper exists
pub fn tune_allocator(cores: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let heaps = cores.clamp(2, 64) as libc::c_int;
        // SAFETY: mallopt only changes allocator parameters; called before
        // other threads exist, as glibc recommends for M_ARENA_MAX.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, heaps);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = cores;
}

/// Hands memory freed by a dropped model (its sessions, a validation load)
/// back to the system, so the next load starts from the working set instead
/// of on top of the garbage. Takes a few milliseconds; call it off the
/// async runtime, after a load or a swap.
#[allow(unsafe_code)] // libc's malloc_trim; no safe wrapper exists
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
