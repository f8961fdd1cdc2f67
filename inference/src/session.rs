//! Everything that talks to ONNX Runtime's sessions: building them with
//! Vigil's settings, reading what a model says about itself, one run, and
//! its outputs as f32.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session, SessionOutputs};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

use crate::decode::OutTensor;
use crate::manifest::{read_labels_txt, read_manifest};
use crate::model::{ModelOptions, Prepared};
use crate::plan::{ModelFacts, TensorInfo};
use crate::preprocess::{InputBuffers, InputType};
use crate::provider::{Provider, ProviderStatus, register};
use crate::{InferenceError, runtime};

fn dtype_name(t: &TensorElementType) -> String {
    match t {
        TensorElementType::Float32 => "float32",
        TensorElementType::Float16 => "float16",
        TensorElementType::Float64 => "float64",
        TensorElementType::Uint8 => "uint8",
        TensorElementType::Int8 => "int8",
        TensorElementType::Int32 => "int32",
        TensorElementType::Int64 => "int64",
        TensorElementType::Bool => "bool",
        other => return format!("{other:?}").to_lowercase(),
    }
    .to_string()
}

fn tensor_info(o: &ort::value::Outlet) -> TensorInfo {
    match o.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            TensorInfo { name: o.name().to_owned(), dtype: dtype_name(ty), shape: shape.to_vec() }
        }
        other => TensorInfo { name: o.name().to_owned(), dtype: format!("{other:?}"), shape: vec![] },
    }
}

/// Opens a model file with ONNX Runtime and reads what it says about itself,
/// plus its manifest and labels.txt. Used by `load` and `vigil models inspect`.
pub fn read_facts(path: &Path) -> Result<(Vec<u8>, Session, ModelFacts), InferenceError> {
    let opened = open(path, &ModelOptions::default())?;
    Ok((opened.bytes, opened.session, opened.facts))
}

/// A model file opened once: its bytes, a first session, what it says about
/// itself, and the builder that makes more copies like it.
pub(crate) struct Opened {
    pub(crate) bytes: Vec<u8>,
    pub(crate) session: Session,
    pub(crate) facts: ModelFacts,
    pub(crate) provider: ProviderStatus,
    pub(crate) builder: SessionBuilder,
}

/// ONNX Runtime ends its messages with a full stop; the error adds its own.
pub(crate) fn load_error(path: &Path, reason: String) -> InferenceError {
    InferenceError::ModelLoad { path: path.to_owned(), reason: reason.trim_end_matches('.').to_owned() }
}

/// A session builder with Vigil's settings for `opts` (provider not yet
/// registered).
pub(crate) fn session_builder(path: &Path, opts: &ModelOptions) -> Result<SessionBuilder, InferenceError> {
    let env = runtime::environment()?;
    let load_err = |reason: String| load_error(path, reason);
    let mut b = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
    // `All`, not `Level3`: in `ort` Level3 is ORT_ENABLE_LAYOUT, one
    // step short of what ONNX Runtime (and its Python package) does by
    // default. Two one-thread YOLOv8n copies side by side: 41.8 vs 41.0
    // runs/s (three interleaved pairs, all in favour).
    b = b.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| load_err(e.to_string()))?;
    if opts.intra_threads > 0 {
        b = b.with_intra_threads(opts.intra_threads).map_err(|e| load_err(e.to_string()))?;
    }
    // ONNX Runtime's intra-op workers spin between operators, which a
    // run needs, and go on spinning after it has returned, which nothing
    // needs: with one camera at 10 fps on two threads the second thread
    // spun some 30 ms after every run, CPU taken from the decoders and
    // the other cameras. Stopped when the last run returns (the next
    // run restarts it), Vigil's CPU per frame fell from 102-122 ms to
    // 70-78 and the capture-to-publish p99 fell too, in each of six
    // interleaved pairs; flat out, the throughput is the same.
    // inference/tests/idle_spin.rs checks a loaded model idles for free.
    b = b.with_config_entry("session.force_spinning_stop", "1").map_err(|e| load_err(e.to_string()))?;
    // ONNX Runtime's memory pattern lays out every intermediate tensor
    // of a run in one block, planned from the first run of each input
    // shape. Without it each tensor is its own allocation: from the
    // arena that all sessions share, that is a lock taken hundreds of
    // times a run by every session running. YOLOv8n, two one-thread
    // copies side by side: 42.2 runs/s with the pattern, 39.7 without
    // (five interleaved pairs); Vigil's four-camera bench 0.90 vs 0.86
    // of the bare loop, for 22 MiB more peak memory (one camera: 24). A
    // model that runs batches of 1 to N frames would plan N layouts and
    // hold the largest (four cameras in batches: peak RSS 437 MB
    // without the pattern, 548 with it), so batching keeps it off.
    let single_shape = opts.max_batch == 1;
    b = b.with_memory_pattern(single_shape).map_err(|e| load_err(e.to_string()))?;
    if runtime::shared_arena() {
        b = b.with_env_allocators().map_err(|e| load_err(e.to_string()))?;
    }
    Ok(b)
}

/// Opens `path` with one session. Further copies are made only once the
/// model's plan has passed its limits (`Detector::load`).
pub(crate) fn open(path: &Path, options: &ModelOptions) -> Result<Opened, InferenceError> {
    let bytes = std::fs::read(path)
        .map_err(|e| InferenceError::ModelUnreadable { path: path.to_owned(), reason: e.to_string() })?;
    if bytes.is_empty() {
        return Err(InferenceError::ModelLoad { path: path.to_owned(), reason: "the file is empty".into() });
    }
    let load_err = |reason: String| load_error(path, reason);
    let base = |opts: &ModelOptions| session_builder(path, opts);
    let requested = options.provider;
    let (builder, provider) = match register(base(options)?, requested, options.device_id) {
        Ok(b) => (
            b,
            ProviderStatus {
                requested: requested.ort_name().into(),
                active: requested.ort_name().into(),
                fallback_reason: None,
            },
        ),
        Err(reason) if options.allow_cpu_fallback => {
            tracing::error!(
                model = %path.display(),
                requested = requested.ort_name(),
                %reason,
                "execution provider unavailable: RUNNING ON CPU INSTEAD (allow_cpu_fallback = true)"
            );
            (
                base(options)?,
                ProviderStatus {
                    requested: requested.ort_name().into(),
                    active: Provider::Cpu.ort_name().into(),
                    fallback_reason: Some(reason),
                },
            )
        }
        Err(reason) => {
            return Err(InferenceError::Provider { path: path.to_owned(), reason });
        }
    };
    let session = builder.clone().commit_from_memory(&bytes).map_err(|e| load_err(e.to_string()))?;
    let mut metadata = BTreeMap::new();
    if let Ok(meta) = session.metadata()
        && let Ok(keys) = meta.custom_keys()
    {
        for k in keys {
            if let Some(v) = meta.custom(&k) {
                metadata.insert(k, v);
            }
        }
    }
    let manifest = read_manifest(path)
        .map_err(|reason| InferenceError::Unsupported { path: path.to_owned(), reason })?;
    let facts = ModelFacts {
        inputs: session.inputs().iter().map(tensor_info).collect(),
        outputs: session.outputs().iter().map(tensor_info).collect(),
        metadata,
        manifest,
        labels_txt: read_labels_txt(path),
    };
    Ok(Opened { bytes, session, facts, provider, builder })
}

/// One `session.run` on `input` (the vector of its dtype), viewed in place;
/// with `options` when the run may be stopped.
pub(crate) fn run_session<'r, 's: 'r>(
    session: &'s mut Session,
    name: &str,
    dtype: InputType,
    shape: [usize; 4],
    input: &InputBuffers,
    options: Option<&'r RunOptions>,
) -> Result<SessionOutputs<'r>, InferenceError> {
    let run_err = |e: ort::Error| InferenceError::Run(e.to_string());
    let value = match dtype {
        InputType::Float32 => {
            TensorRef::from_array_view((shape, &input.f32[..])).map_err(run_err)?.into_dyn()
        }
        InputType::Float16 => {
            TensorRef::from_array_view((shape, &input.f16[..])).map_err(run_err)?.into_dyn()
        }
        InputType::Uint8 => TensorRef::from_array_view((shape, &input.u8[..])).map_err(run_err)?.into_dyn(),
    };
    let inputs = ort::inputs![name => value];
    match options {
        Some(options) => session.run_with_options(inputs, options),
        None => session.run(inputs),
    }
    .map_err(run_err)
}

/// Copies the frames' tensors one after another into `out`, zero-filling
/// any rows beyond them (a model with a fixed batch larger than the frames).
pub(crate) fn stack(items: &[&Prepared], rows: usize, dtype: InputType, out: &mut InputBuffers) {
    fn rows_of<T: Copy + Default>(parts: Vec<&[T]>, rows: usize, out: &mut Vec<T>) {
        let len = parts.first().map_or(0, |p| p.len());
        out.clear();
        out.reserve(len * rows);
        for p in &parts {
            out.extend_from_slice(p);
        }
        out.resize(len * rows, T::default());
    }
    match dtype {
        InputType::Float32 => rows_of(items.iter().map(|p| &p.input.f32[..]).collect(), rows, &mut out.f32),
        InputType::Float16 => rows_of(items.iter().map(|p| &p.input.f16[..]).collect(), rows, &mut out.f16),
        InputType::Uint8 => rows_of(items.iter().map(|p| &p.input.u8[..]).collect(), rows, &mut out.u8),
    }
}

/// An output as f32: borrowed when it already is f32, converted otherwise
/// (class ids as int64, masks as bool, float16 heads).
pub(crate) fn read_output(v: &DynValue) -> Result<OutTensor<'_>, InferenceError> {
    let err = |e: ort::Error| InferenceError::Run(e.to_string());
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(InferenceError::Run("an output is not a tensor".into()));
    };
    macro_rules! conv {
        ($t:ty, $f:expr) => {{
            let (shape, data) = v.try_extract_tensor::<$t>().map_err(err)?;
            OutTensor { shape: shape.to_vec(), data: Cow::Owned(data.iter().map($f).collect()) }
        }};
    }
    Ok(match ty {
        TensorElementType::Float32 => {
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(err)?;
            OutTensor { shape: shape.to_vec(), data: Cow::Borrowed(data) }
        }
        TensorElementType::Float16 => conv!(half::f16, |x: &half::f16| x.to_f32()),
        TensorElementType::Float64 => conv!(f64, |x: &f64| *x as f32),
        TensorElementType::Int64 => conv!(i64, |x: &i64| *x as f32),
        TensorElementType::Int32 => conv!(i32, |x: &i32| *x as f32),
        TensorElementType::Uint8 => conv!(u8, |x: &u8| f32::from(*x)),
        TensorElementType::Bool => conv!(bool, |x: &bool| if *x { 1.0 } else { 0.0 }),
        other => {
            return Err(InferenceError::Run(format!("outputs of type {other:?} are not supported")));
        }
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
