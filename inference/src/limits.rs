//! Bounds on what a model may ask for, checked once its plan is known and
//! before anything of its size is allocated: an upload that declares a
//! 40000x40000 input asks for a 17.9 GiB input tensor, which on a 4 GiB box
//! is an OOM kill of the whole appliance, not an error.
//!
//! ```text
//!  plan (input size, dtype, batch) + declared outputs + file size
//!     │ sides and pixels ≤ limits, fixed batch ≤ limit
//!     │ estimate: weights x copies + runs at once x (input + working memory + outputs)
//!     ▼                                        ≤ memory_share x available
//!  available: /proc/meminfo MemAvailable, and the cgroup's limit less its use
//!  (v1 or v2, every level up to the root), whichever is smaller
//! ```
//!
//! The estimate is rough on purpose: ONNX Runtime says nothing about a run's
//! working memory until the run. Its working memory is counted as a multiple
//! of the input, measured on CNN detectors (see [`WORKING_MEMORY`]).

use std::path::Path;
use std::time::Duration;

use crate::plan::{ModelPlan, TensorInfo};
use crate::preprocess::InputType;

/// What a model may ask for. The defaults take any detector or classifier
/// exported for a real camera (even 8K frames at full size) and refuse
/// what no edge box can run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelLimits {
    /// The most pixels on either side of the model's input.
    pub max_input_side: u32,
    /// The most pixels in one frame's input (width x height).
    pub max_input_pixels: u64,
    /// The most frames one run may take: a larger fixed batch is refused, a
    /// dynamic batch is capped to it.
    pub max_batch: usize,
    /// The share of the box's available memory (0..1) the model's estimate
    /// may take when it loads; 0 turns the memory check off.
    pub memory_share: f32,
    /// How long a test run at load may take before it is stopped (a model
    /// that loops for ever would otherwise hang the load, and an upload).
    pub test_run: Duration,
}

impl Default for ModelLimits {
    fn default() -> ModelLimits {
        ModelLimits {
            max_input_side: default_max_input_side(),
            max_input_pixels: default_max_input_pixels(),
            max_batch: default_max_batch(),
            memory_share: default_memory_share(),
            test_run: default_test_run(),
        }
    }
}

/// 16384: beyond any camera's frame side (8K is 7680).
pub fn default_max_input_side() -> u32 {
    16384
}

/// 8192 x 8192 (67 megapixels, 805 MB as float32): an 8K frame fits whole.
pub fn default_max_input_pixels() -> u64 {
    8192 * 8192
}

/// 32 frames a run: DeepStream-style batching of every camera of a large box.
pub fn default_max_batch() -> usize {
    32
}

/// 80 % of what the box has available when the model loads.
pub fn default_memory_share() -> f32 {
    0.8
}

/// 60 s: a first run plans its memory, and a large model on a small ARM
/// board can take seconds; a minute is far beyond any model that works.
pub fn default_test_run() -> Duration {
    Duration::from_secs(60)
}

/// A run's working memory (ONNX Runtime's intermediate tensors), as a
/// multiple of the input tensor's size in float32. Measured as the peak RSS
/// of a load and one run less that of the session alone: YOLOv8n at 640
/// about 5x, the ball detector at 640 about 6x; 8 leaves room for larger
/// heads. Only for the CPU: a GPU provider keeps them in device memory.
pub const WORKING_MEMORY: u64 = 8;

/// How a model will be loaded, for the estimate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loading {
    /// The model file's size: each session copy holds its weights.
    pub(crate) weights: u64,
    /// Session copies, lanes included: as many runs can go at once.
    pub(crate) copies: usize,
    /// The most frames one run will take.
    pub(crate) batch: usize,
    /// Runs on the CPU: its working memory is the box's.
    pub(crate) cpu: bool,
}

/// The box's memory available now, and where the number comes from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Available {
    pub(crate) bytes: u64,
    pub(crate) how: String,
}

/// Refuses a fixed batch beyond the limit, before the check of the plan.
pub(crate) fn check_fixed_batch(name: &str, batch: usize, limits: &ModelLimits) -> Result<(), String> {
    if batch > limits.max_batch {
        return Err(format!(
            "its input {name} takes a fixed batch of {batch} frames a run; Vigil runs at most {} frames \
             a run. Export it with batch=1 or a dynamic batch, or raise max_batch for this model",
            limits.max_batch
        ));
    }
    Ok(())
}

/// Checks the planned input against the limits, then the estimate against
/// `available` (when known). Errors say what the model asked for, the
/// limit, and what to do.
pub(crate) fn check(
    plan: &ModelPlan,
    outputs: &[TensorInfo],
    loading: Loading,
    limits: &ModelLimits,
    available: Option<&Available>,
) -> Result<(), String> {
    let input = &plan.input;
    // Inputs fed at the frame's own size are as big as the camera's frames:
    // nothing to check until a frame comes.
    let Some((w, h)) = input.size else { return Ok(()) };
    let pixels = u64::from(w) * u64::from(h);
    let values = 3 * pixels;
    let (elem, dtype) = match input.dtype {
        InputType::Float32 => (4, "float32"),
        // Preprocessing writes float32, then converts.
        InputType::Float16 => (6, "float16"),
        InputType::Uint8 => (1, "uint8"),
    };
    if w.max(h) > limits.max_input_side || pixels > limits.max_input_pixels {
        return Err(format!(
            "its input {} is {w}x{h} pixels, 3 x {h} x {w} = {values} values ({} a frame as {dtype}) \
             before the model even runs; Vigil takes at most {} pixels a side and {:.1} megapixels a \
             frame. Export the model at the size it was trained for (Ultralytics: imgsz=640), or raise \
             max_input_side / max_input_pixels for this model if the box has the memory",
            input.name,
            human(values.saturating_mul(elem)),
            limits.max_input_side,
            limits.max_input_pixels as f64 / 1e6,
        ));
    }
    let Some(available) = available.filter(|_| limits.memory_share > 0.0) else { return Ok(()) };
    let batch = loading.batch.max(1) as u64;
    let copies = loading.copies.max(1) as u64;
    let frame = values * elem;
    // A batch is stacked into one more buffer; each frame has its own.
    let inputs = batch * frame * if batch > 1 { 2 } else { 1 };
    let working = if loading.cpu { batch * values * 4 * WORKING_MEMORY } else { 0 };
    // ONNX Runtime's outputs, plus Vigil's float32 copy where they are not.
    let outs = batch * outputs.iter().map(declared_bytes).sum::<u64>() * 2;
    let need = copies * loading.weights + copies * (inputs + working + outs);
    let allowed = (available.bytes as f64 * f64::from(limits.memory_share.min(1.0))) as u64;
    if need > allowed {
        let working = if loading.cpu {
            format!(", its working memory about {WORKING_MEMORY}x its input")
        } else {
            String::new()
        };
        return Err(format!(
            "running it needs about {} (weights {} x {copies} session copies; input {} a frame x {batch} \
             frames x {copies} runs at once{working}; outputs {} a frame) and this box has {} available \
             ({}); Vigil loads a model only when its estimate fits in {:.0} % of that. Use a smaller input \
             size, fewer sessions or lanes or a smaller batch, or free memory (memory_share = 0 turns \
             this check off)",
            human(need),
            human(loading.weights),
            human(frame),
            human(outs / batch),
            human(available.bytes),
            available.how,
            limits.memory_share * 100.0,
        ));
    }
    Ok(())
}

/// Bytes of an output as declared, one frame (dimension 0 counts 1), with
/// its dynamic dimensions counted as 1: what is known before a run.
fn declared_bytes(t: &TensorInfo) -> u64 {
    let values = t.shape.iter().skip(1).fold(1u64, |n, &d| n.saturating_mul(d.max(1) as u64));
    values.saturating_mul(4)
}

/// "17.9 GiB", "805.3 MiB", "12 KiB".
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// The box's available memory now: `MemAvailable`, or less where a cgroup
/// (a container, a systemd `MemoryMax=`) allows less. `root` is `/` except
/// in tests. `None` when nothing can be read (not Linux).
pub(crate) fn available_memory(root: &Path) -> Option<Available> {
    let meminfo = std::fs::read_to_string(root.join("proc/meminfo")).ok();
    let mem = meminfo.as_deref().and_then(|m| field(m, "MemAvailable:")).map(|kb| kb * 1024);
    let cgroup = std::fs::read_to_string(root.join("proc/self/cgroup")).ok();
    let limit = cgroup.as_deref().and_then(|c| cgroup_room(root, c));
    match (mem, limit) {
        (Some(m), Some((room, limit))) if room < m => Some(Available {
            bytes: room,
            how: format!("the cgroup's limit {} less what it uses; MemAvailable {}", human(limit), human(m)),
        }),
        (Some(m), _) => Some(Available { bytes: m, how: format!("MemAvailable {}", human(m)) }),
        (None, Some((room, limit))) => Some(Available {
            bytes: room,
            how: format!("the cgroup's limit {} less what it uses", human(limit)),
        }),
        (None, None) => None,
    }
}

/// The first number after `key` in a `/proc/meminfo` or `memory.stat` style text.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The least room left under any memory limit of this process's cgroup and
/// its parents, with that limit: (limit - (usage - inactive file pages),
/// limit). Page cache that can be dropped is not counted as used, as
/// `docker stats` does not count it.
fn cgroup_room(root: &Path, self_cgroup: &str) -> Option<(u64, u64)> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let num = |p: &Path| read(p).and_then(|s| s.trim().parse::<u64>().ok());
    let mut best: Option<(u64, u64)> = None;
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (base, v2) = match controllers {
            "" => (root.join("sys/fs/cgroup"), true),
            c if c.split(',').any(|c| c == "memory") => (root.join("sys/fs/cgroup/memory"), false),
            _ => continue,
        };
        let (limit_file, usage_file, inactive_key) = if v2 {
            ("memory.max", "memory.current", "inactive_file ")
        } else {
            ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file ")
        };
        // In a container the path may name the host's hierarchy; the levels
        // that exist here are the ones that apply.
        let mut dir = base.join(path.trim_start_matches('/'));
        loop {
            // v1 writes "no limit" as a number near 2^63.
            if let Some(limit) = num(&dir.join(limit_file)).filter(|&l| l < 1 << 60)
                && let Some(usage) = num(&dir.join(usage_file))
            {
                let inactive =
                    read(&dir.join("memory.stat")).and_then(|s| field(&s, inactive_key)).unwrap_or(0);
                let room = limit.saturating_sub(usage.saturating_sub(inactive));
                if best.is_none_or(|(r, _)| room < r) {
                    best = Some((room, limit));
                }
            }
            if dir == base || !dir.pop() || !dir.starts_with(&base) {
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests;
