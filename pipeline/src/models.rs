//! Model slots and hot swaps.
//!
//! ```text
//!  slot "parts" ── ArcSwap<Detector> ◀── workers load it once per frame
//!     │                                   (a frame is processed wholly by one version)
//!     ├─ v1: the file the config names
//!     ├─ v2: uploaded ─▶ <data_dir>/models/parts/v2.onnx
//!     └─ state.json: versions, active, previous (survives restarts)
//!
//!  upload ─▶ stream to disk (size limit, sha256, optional Ed25519 signature)
//!         ─▶ load + validate (decoder fits, rule labels exist) ─▶ kept, or refused 4xx
//!  activate ─▶ load ─▶ validate ─▶ warm up + self-test on the cameras' latest frames
//!           ─▶ one atomic store ─▶ model.activated event
//! ```
//! Everything before the store runs off the hot path, on a blocking thread,
//! while the old version keeps serving; a failure at any step leaves it in
//! place and the caller gets the reason. Rollback swaps the previous version
//! back in from memory, at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vigil_inference::{Detector, ModelInfo, ModelOptions, Scratch};

/// Why a model operation was refused; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The file is not a model Vigil can run here.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

impl ModelError {
    /// The same kind of error with its message rewritten.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> ModelError {
        match self {
            ModelError::BadRequest(m) => ModelError::BadRequest(f(m)),
            ModelError::TooLarge(m) => ModelError::TooLarge(f(m)),
            ModelError::Forbidden(m) => ModelError::Forbidden(f(m)),
            ModelError::NotFound(m) => ModelError::NotFound(f(m)),
            ModelError::Conflict(m) => ModelError::Conflict(f(m)),
            ModelError::Invalid(m) => ModelError::Invalid(f(m)),
            ModelError::Internal(m) => ModelError::Internal(f(m)),
        }
    }
}

/// One stored version of a slot's model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u32,
    pub sha256: String,
    pub file: PathBuf,
    pub size_bytes: u64,
    /// `config` (the file the config names) or `upload`.
    pub origin: String,
    pub added_at: u64,
    pub decoder: String,
    pub labels: Vec<String>,
    pub input: Option<[u32; 2]>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SlotState {
    versions: BTreeMap<u32, VersionRecord>,
    active: u32,
    previous: Option<u32>,
}

/// What a successful activation reports.
#[derive(Debug, Clone, Serialize)]
pub struct Activation {
    pub slot: String,
    pub version: u32,
    pub sha256: String,
    pub previous: Option<String>,
    /// Load, validation, warm-up and self-test, off the hot path.
    pub prepare_ms: f64,
    /// The swap itself.
    pub switch_ms: f64,
}

/// A model slot: the active detector, the versions, the cameras using it.
pub struct ModelSlot {
    pub name: String,
    current: ArcSwap<Detector>,
    previous: Mutex<Option<Arc<Detector>>>,
    state: Mutex<SlotState>,
    dir: PathBuf,
    options: ModelOptions,
    pub cameras: Vec<String>,
    /// Labels the rules on this slot's cameras rely on: a new version must have them.
    pub required_labels: Vec<String>,
    /// Serialises uploads and activations on this slot.
    busy: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ModelSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSlot").field("name", &self.name).field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn record(version: u32, file: &Path, origin: &str, info: &ModelInfo) -> VersionRecord {
    VersionRecord {
        version,
        sha256: info.sha256.clone(),
        file: file.to_owned(),
        size_bytes: info.size_bytes,
        origin: origin.into(),
        added_at: now_s(),
        decoder: info.decoder().as_str().into(),
        labels: info.labels().to_vec(),
        input: info.input_size().map(|(w, h)| [w, h]),
    }
}

impl ModelSlot {
    /// Opens the slot: the version recorded as active last time (if the
    /// config still names the same file), else the config's file as version 1
    /// (or as a new version when the config's file changed).
    pub fn open(
        name: &str,
        config_path: &Path,
        options: ModelOptions,
        data_dir: &Path,
        cameras: Vec<String>,
        required_labels: Vec<String>,
    ) -> Result<ModelSlot, vigil_inference::InferenceError> {
        let dir = data_dir.join("models").join(name);
        let mut state: SlotState = std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let config_sha = std::fs::read(config_path).map(|b| hex(&Sha256::digest(&b))).unwrap_or_default();
        let known_config = state.versions.values().any(|v| v.origin == "config" && v.sha256 == config_sha);
        let active_file = state.versions.get(&state.active).map(|v| v.file.clone()).filter(|f| f.is_file());
        let (detector, version, file) = match (known_config, active_file) {
            (true, Some(file)) => {
                let mut d = Detector::load(name, &file, options.clone())?;
                d.set_version(state.active);
                tracing::info!(
                    slot = name,
                    version = state.active,
                    "model slot restored to its active version"
                );
                (d, state.active, file)
            }
            _ => {
                // First start, or the config now names another file: the config wins.
                let version = state.versions.keys().max().map_or(1, |v| v + 1);
                let mut d = Detector::load(name, config_path, options.clone())?;
                d.set_version(version);
                state.versions.insert(version, record(version, config_path, "config", d.info()));
                state.previous = (state.active != 0).then_some(state.active);
                state.active = version;
                (d, version, config_path.to_owned())
            }
        };
        let _ = (version, file);
        tracing::debug!(slot = name, "model slot open");
        let slot = ModelSlot {
            name: name.into(),
            current: ArcSwap::from_pointee(detector),
            previous: Mutex::new(None),
            state: Mutex::new(state),
            dir,
            options,
            cameras,
            required_labels,
            busy: tokio::sync::Mutex::new(()),
        };
        slot.persist();
        Ok(slot)
    }

    /// The detector serving now (one atomic load; hold it for a whole frame).
    pub fn current(&self) -> Arc<Detector> {
        self.current.load_full()
    }

    pub fn versions(&self) -> Vec<VersionRecord> {
        self.state.lock().versions.values().cloned().collect()
    }

    pub fn active_version(&self) -> u32 {
        self.state.lock().active
    }

    pub fn previous_version(&self) -> Option<u32> {
        self.state.lock().previous
    }

    fn persist(&self) {
        let st = self.state.lock();
        if let Err(e) = std::fs::create_dir_all(&self.dir).and_then(|()| {
            let tmp = self.dir.join("state.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&*st).unwrap_or_default())?;
            std::fs::rename(&tmp, self.dir.join("state.json"))
        }) {
            tracing::error!(slot = %self.name, error = %e, "could not save the model slot's state");
        }
    }

    /// Loads `file` and checks it can replace this slot's model.
    fn prepare(&self, file: &Path, version: u32) -> Result<Detector, ModelError> {
        check(&self.name, file, &self.options, &self.required_labels, &self.cameras, version)
    }

    /// Stores an uploaded model as a new version after checking it (size,
    /// signature, loads, decoder fits, labels). Nothing changes on failure.
    pub async fn upload(
        &self,
        mut body: impl futures_core_stream::Stream<Item = Result<bytes::Bytes, String>> + Unpin,
        max_bytes: u64,
        verify: Option<&ed25519_dalek::VerifyingKey>,
        signature: Option<&str>,
    ) -> Result<VersionRecord, ModelError> {
        let _guard = self.busy.lock().await;
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| ModelError::Internal(e.to_string()))?;
        let tmp = self.dir.join(format!(".upload-{}", uuid::Uuid::now_v7()));
        let result = async {
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| ModelError::Internal(e.to_string()))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = futures_core_stream::next(&mut body).await {
                let chunk = chunk.map_err(ModelError::BadRequest)?;
                size += chunk.len() as u64;
                if size > max_bytes {
                    return Err(ModelError::TooLarge(format!(
                        "the upload is over the limit of {} MB (http.max_upload_mb)",
                        max_bytes / (1024 * 1024)
                    )));
                }
                hasher.update(&chunk);
                f.write_all(&chunk).await.map_err(|e| ModelError::Internal(e.to_string()))?;
            }
            f.flush().await.map_err(|e| ModelError::Internal(e.to_string()))?;
            if size == 0 {
                return Err(ModelError::BadRequest("the upload is empty: send the .onnx file as the request body".into()));
            }
            let digest = hasher.finalize();
            if let Some(key) = verify {
                let sig = signature.ok_or_else(|| {
                    ModelError::Forbidden("model signing is on: send the Ed25519 signature of the file's SHA-256 in X-Vigil-Signature (base64)".into())
                })?;
                verify_signature(key, &digest, sig)?;
            }
            let sha = hex(&digest);
            if let Some(v) = self.state.lock().versions.values().find(|v| v.sha256 == sha) {
                return Err(ModelError::Conflict(format!("this file is already version {} of slot {}", v.version, self.name)));
            }
            let version = self.state.lock().versions.keys().max().map_or(1, |v| v + 1);
            let file = self.dir.join(format!("v{version}.onnx"));
            tokio::fs::rename(&tmp, &file).await.map_err(|e| ModelError::Internal(e.to_string()))?;
            // Load and validate off the async runtime.
            let checked = {
                let (file, name, options) = (file.clone(), self.name.clone(), self.options.clone());
                let (required, cameras) = (self.required_labels.clone(), self.cameras.clone());
                tokio::task::spawn_blocking(move || {
                    // Validating takes one copy of the session; activation
                    // loads as many as the slot runs, lanes included.
                    let options = ModelOptions { sessions: 1, lanes: 0, ..options };
                    let info = check(&name, &file, &options, &required, &cameras, version).map(|d| d.info().clone());
                    vigil_inference::runtime::release_free_memory();
                    info
                })
                .await
                .map_err(|e| ModelError::Internal(e.to_string()))?
            };
            match checked {
                Ok(info) => {
                    let rec = record(version, &file, "upload", &info);
                    self.state.lock().versions.insert(version, rec.clone());
                    self.persist();
                    Ok(rec)
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&file).await;
                    // The refused file is gone: name it for what the operator sent.
                    let path = file.display().to_string();
                    Err(e.map_message(|m| {
                        m.replace(&format!("model {path}"), "the uploaded file")
                            .replace(&path, "the uploaded file")
                    }))
                }
            }
        }
        .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        result
    }

    /// Prepares `version` off the hot path (load, validate, warm up and
    /// self-test on `frames`), then swaps it in with one atomic store.
    pub async fn activate(
        self: &Arc<Self>,
        version: u32,
        frames: Vec<vigil_camera::Frame>,
    ) -> Result<Activation, ModelError> {
        let _guard = self.busy.lock().await;
        let rec =
            self.state.lock().versions.get(&version).cloned().ok_or_else(|| {
                ModelError::NotFound(format!("slot {} has no version {version}", self.name))
            })?;
        let active = self.active_version();
        if version == active {
            return Err(ModelError::Conflict(format!("version {version} is already active")));
        }
        let t0 = Instant::now();
        let me = self.clone();
        let detector = tokio::task::spawn_blocking(move || -> Result<Detector, ModelError> {
            let d = me.prepare(&rec.file, version)?;
            // Warm up and self-test on what the cameras see now (or a blank
            // frame): the first real inference must not happen on the line.
            let mut scratch = Scratch::default();
            let blank = vigil_camera::Frame::from_rgb("warmup", 0, 64, 48, vec![0; 64 * 48 * 3]);
            let frames = if frames.is_empty() { vec![blank] } else { frames };
            for f in frames.iter().cycle().take(frames.len().max(3)) {
                // As the cameras will feed it (I420 planes, no RGB copy).
                let image = crate::appliance::ModelImage::of(f)
                    .ok_or_else(|| ModelError::Internal("bad warm-up frame".into()))?;
                let pred = image
                    .detect(&d, &mut scratch)
                    .map_err(|e| ModelError::Invalid(format!("self-test failed: {e}")))?;
                if pred
                    .detections
                    .iter()
                    .any(|x| !x.score.is_finite() || !x.bbox.x1.is_finite() || !x.bbox.y2.is_finite())
                    || pred.classes.iter().any(|c| !c.score.is_finite())
                {
                    return Err(ModelError::Invalid(
                        "self-test failed: the model produced NaN or infinite values".into(),
                    ));
                }
            }
            // Building the sessions left graph-optimisation garbage behind.
            vigil_inference::runtime::release_free_memory();
            Ok(d)
        })
        .await
        .map_err(|e| ModelError::Internal(e.to_string()))??;
        let prepare_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let old = self.current.swap(Arc::new(detector));
        let switch_ms = t1.elapsed().as_secs_f64() * 1e3;
        let previous_sha = old.info().sha256.clone();
        let dropped = self.previous.lock().replace(old);
        {
            let mut st = self.state.lock();
            st.previous = Some(active);
            st.active = version;
        }
        if dropped.is_some() {
            // The version before the previous one goes (once its last frames
            // are done): give its memory back rather than keep it as garbage.
            drop(dropped);
            tokio::task::spawn_blocking(vigil_inference::runtime::release_free_memory);
        }
        self.persist();
        tracing::info!(slot = %self.name, version, prepare_ms, switch_ms, "model activated");
        Ok(Activation {
            slot: self.name.clone(),
            version,
            sha256: rec.sha256,
            previous: Some(previous_sha),
            prepare_ms,
            switch_ms,
        })
    }

    /// Swaps the previous version back in: from memory when it was active in
    /// this run (instant), else prepared from its file like any activation.
    pub async fn rollback(
        self: &Arc<Self>,
        frames: Vec<vigil_camera::Frame>,
    ) -> Result<Activation, ModelError> {
        let previous = self.previous_version().ok_or_else(|| {
            ModelError::Conflict(format!("slot {} has no previous version to roll back to", self.name))
        })?;
        let in_memory = self.previous.lock().clone().filter(|d| d.info().version == previous);
        let Some(detector) = in_memory else {
            return self.activate(previous, frames).await;
        };
        let _guard = self.busy.lock().await;
        let active = self.active_version();
        let t1 = Instant::now();
        let old = self.current.swap(detector.clone());
        let switch_ms = t1.elapsed().as_secs_f64() * 1e3;
        let previous_sha = old.info().sha256.clone();
        *self.previous.lock() = Some(old);
        {
            let mut st = self.state.lock();
            st.previous = Some(active);
            st.active = previous;
        }
        self.persist();
        Ok(Activation {
            slot: self.name.clone(),
            version: previous,
            sha256: detector.info().sha256.clone(),
            previous: Some(previous_sha),
            prepare_ms: 0.0,
            switch_ms,
        })
    }

    /// Forgets a version and its file. Refused for the active version and for
    /// the config's own file.
    pub async fn delete(&self, version: u32) -> Result<(), ModelError> {
        let _guard = self.busy.lock().await;
        let rec = {
            let st = self.state.lock();
            if st.active == version {
                return Err(ModelError::Conflict(format!(
                    "version {version} is in use by cameras {}; activate another version first",
                    self.cameras.join(", ")
                )));
            }
            st.versions
                .get(&version)
                .cloned()
                .ok_or_else(|| ModelError::NotFound(format!("slot {} has no version {version}", self.name)))?
        };
        if rec.origin == "config" {
            return Err(ModelError::Conflict(format!(
                "version {version} is the file the config names; change the config instead"
            )));
        }
        let _ = tokio::fs::remove_file(&rec.file).await;
        {
            let mut st = self.state.lock();
            st.versions.remove(&version);
            if st.previous == Some(version) {
                st.previous = None;
            }
        }
        if self.previous.lock().as_ref().is_some_and(|d| d.info().version == version) {
            *self.previous.lock() = None;
        }
        self.persist();
        Ok(())
    }
}

/// Loads a model file and checks that it can serve a slot: ONNX Runtime
/// loads it, a decoder fits (with a test run), and it has every label the
/// slot's rules use.
fn check(
    name: &str,
    file: &Path,
    options: &ModelOptions,
    required_labels: &[String],
    cameras: &[String],
    version: u32,
) -> Result<Detector, ModelError> {
    let mut d =
        Detector::load(name, file, options.clone()).map_err(|e| ModelError::Invalid(e.to_string()))?;
    d.set_version(version);
    let labels = d.info().labels();
    let missing: Vec<&String> = required_labels.iter().filter(|l| !labels.contains(l)).collect();
    if !missing.is_empty() {
        return Err(ModelError::Invalid(format!(
            "the rules on cameras {} use labels {:?} that this model does not have (it has: {})",
            cameras.join(", "),
            missing,
            labels.join(", ")
        )));
    }
    Ok(d)
}

/// Checks an Ed25519 signature (base64) over a file's SHA-256 digest.
pub fn verify_signature(
    key: &ed25519_dalek::VerifyingKey,
    digest: &[u8],
    signature_b64: &str,
) -> Result<(), ModelError> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|_| ModelError::Forbidden("X-Vigil-Signature is not base64".into()))?;
    let bytes: [u8; 64] = raw
        .try_into()
        .map_err(|_| ModelError::Forbidden("X-Vigil-Signature must be a 64-byte Ed25519 signature".into()))?;
    let sig = ed25519_dalek::Signature::from_bytes(&bytes);
    key.verify_strict(digest, &sig).map_err(|_| {
        ModelError::Forbidden(
            "the signature does not match this file and the configured public key (http.model_signing_key)"
                .into(),
        )
    })
}

/// Reads a base64 Ed25519 public key (32 bytes) from a file.
pub fn read_verifying_key(path: &Path) -> Result<ed25519_dalek::VerifyingKey, String> {
    use base64::Engine;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("{}: not base64", path.display()))?;
    let bytes: [u8; 32] =
        raw.try_into().map_err(|_| format!("{}: an Ed25519 public key is 32 bytes", path.display()))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Tiny stream helpers, so this crate does not need a futures dependency.
pub mod futures_core_stream {
    pub use futures_core::Stream;
    use std::pin::Pin;

    /// The next item of a stream.
    pub async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }
}
