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
use vigil_inference::{Detector, ModelInfo, ModelLimits, ModelOptions, Scratch};

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

/// How many versions a slot keeps. Uploading one more prunes the oldest that
/// is neither active, nor the previous one, nor the config's own file: a box
/// left alone for months must not fill its disk with old models.
pub const KEPT_VERSIONS: usize = 10;

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
    /// The number the next version gets. Kept apart from `versions` so that
    /// a deleted (or pruned) version's number is never given again: an
    /// event or a log line naming `v3` names one file for ever.
    #[serde(default)]
    next_version: u32,
}

impl SlotState {
    fn take_version(&mut self) -> u32 {
        let v = self.next_version.max(self.versions.keys().max().map_or(1, |m| m + 1)).max(1);
        self.next_version = v + 1;
        v
    }
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
///
/// Locking: `state` is a plain mutex held only for short critical sections
/// (read a record, or swap and save), never across a load, a self-test or
/// an upload's body. Loads and uploads run beside each other and beside
/// rollbacks and deletes; the critical section re-checks what they relied on
/// (the version still exists, is not already active) before it commits.
pub struct ModelSlot {
    pub name: String,
    current: ArcSwap<Detector>,
    previous: Mutex<Option<Arc<Detector>>>,
    state: Mutex<SlotState>,
    dir: PathBuf,
    options: ModelOptions,
    /// Bounds for every load and self-test of this slot (`test_run` stops a
    /// model that loops for ever).
    limits: ModelLimits,
    /// The sha256 of the file the config names: its version is never pruned.
    config_sha: String,
    pub cameras: Vec<String>,
    /// Labels the rules on this slot's cameras rely on: a new version must have them.
    pub required_labels: Vec<String>,
    /// The version being prepared for activation, if any: one at a time per
    /// slot, so a client that retries never loads a second copy beside the first.
    activating: Mutex<Option<u32>>,
    /// Why this slot is not running what was last chosen (a version that
    /// failed its checks at start); cleared by the next activation.
    warnings: Mutex<Vec<String>>,
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

/// Makes a rename or a new file in `dir` survive a power cut.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `name` in `dir` so that after a crash it holds either the old
/// bytes or the new ones, never a mix: temp file, fsync, rename, fsync dir.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// `vN.onnx` -> N.
fn version_of_file(name: &str) -> Option<u32> {
    name.strip_prefix('v')?.strip_suffix(".onnx")?.parse().ok()
}

/// A file removed when dropped, unless kept: an upload whose client goes
/// away (its future is dropped mid-await) leaves nothing behind.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Marks a slot as activating until dropped; it travels with the work, so
/// the mark lasts exactly as long as the load and self-test do.
struct ActivatingGuard(Arc<ModelSlot>);

impl Drop for ActivatingGuard {
    fn drop(&mut self) {
        *self.0.activating.lock() = None;
    }
}

impl ModelSlot {
    /// Opens the slot: the version recorded as active last time (if the
    /// config still names the same file), else the config's file as version 1
    /// (or as a new version when the config's file changed).
    ///
    /// A damaged store never stops the start: a version whose file is
    /// missing, whose sha256 no longer matches, or which fails to load is
    /// passed over for the previous version, then for the config's file, and
    /// the reason is kept in [`ModelSlot::warnings`]. Leftovers of uploads cut
    /// short (and files no record names) are swept.
    pub fn open(
        name: &str,
        config_path: &Path,
        options: ModelOptions,
        limits: ModelLimits,
        data_dir: &Path,
        cameras: Vec<String>,
        required_labels: Vec<String>,
    ) -> Result<ModelSlot, vigil_inference::InferenceError> {
        let dir = data_dir.join("models").join(name);
        let mut warnings = Vec::new();
        let (mut state, state_ok): (SlotState, bool) = match std::fs::read(dir.join("state.json")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (SlotState::default(), true),
            Err(e) => {
                warnings.push(format!("state.json could not be read ({e}): started from the config's model"));
                (SlotState::default(), false)
            }
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(s) => (s, true),
                Err(e) => {
                    warnings.push(format!("state.json is damaged ({e}): started from the config's model"));
                    (SlotState::default(), false)
                }
            },
        };
        state.next_version = sweep(&dir, state_ok.then_some(&state));
        let config_sha = std::fs::read(config_path).map(|b| hex(&Sha256::digest(&b))).unwrap_or_default();
        let known_config = state
            .versions
            .values()
            .find(|v| v.origin == "config" && v.sha256 == config_sha)
            .map(|v| v.version);
        let load = |rec: &VersionRecord| -> Result<Detector, String> {
            let bytes = std::fs::read(&rec.file).map_err(|e| format!("{}: {e}", rec.file.display()))?;
            let sha = hex(&Sha256::digest(&bytes));
            if sha != rec.sha256 {
                return Err(format!(
                    "{} changed on disk: its sha256 is {sha}, {} was stored",
                    rec.file.display(),
                    rec.sha256
                ));
            }
            check(name, &rec.file, &options, &limits, &required_labels, &cameras, rec.version)
                .map_err(|e| e.to_string())
        };
        let mut chosen = None;
        let mut failed = Vec::new();
        if known_config.is_some() {
            for (which, v) in [("active", Some(state.active)), ("previous", state.previous)] {
                let Some(rec) = v.and_then(|v| state.versions.get(&v)) else { continue };
                match load(rec) {
                    Ok(d) => {
                        chosen = Some((d, rec.version));
                        break;
                    }
                    Err(why) => {
                        warnings
                            .push(format!("version {} ({which}) could not be restored: {why}", rec.version));
                        failed.push(rec.version);
                    }
                }
            }
        }
        let detector = match chosen {
            Some((d, version)) => {
                if version != state.active {
                    // The active version failed: its predecessor serves, and
                    // there is nothing sound to roll back to.
                    state.active = version;
                    state.previous = None;
                }
                tracing::info!(slot = name, version, "model slot restored");
                d
            }
            None => {
                // First start, the config now names another file, or nothing
                // stored could be restored: the config's file serves.
                let mut d = Detector::load_with(name, config_path, options.clone(), &limits)?;
                let version = match known_config {
                    Some(v) => v,
                    None => {
                        let v = state.take_version();
                        state.versions.insert(v, record(v, config_path, "config", d.info()));
                        v
                    }
                };
                d.set_version(version);
                let old = state.active;
                state.previous = (old != 0 && old != version && !failed.contains(&old))
                    .then_some(old)
                    .filter(|v| state.versions.contains_key(v));
                state.active = version;
                d
            }
        };
        // Records whose file is gone cannot serve again.
        state.versions.retain(|v, r| *v == state.active || Some(*v) == state.previous || r.file.is_file());
        for w in &warnings {
            tracing::warn!(slot = name, warning = %w, "model store");
        }
        let slot = ModelSlot {
            name: name.into(),
            current: ArcSwap::from_pointee(detector),
            previous: Mutex::new(None),
            state: Mutex::new(state),
            dir,
            options,
            limits,
            config_sha,
            cameras,
            required_labels,
            activating: Mutex::new(None),
            warnings: Mutex::new(warnings),
        };
        slot.persist(&slot.state.lock());
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

    /// The version being prepared for activation now, if any.
    pub fn activating(&self) -> Option<u32> {
        *self.activating.lock()
    }

    /// Why the slot is not serving what was last chosen (empty when it is).
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    /// Saves `st`; called with the state's lock held, so what is on disk
    /// follows the same order as what is in memory.
    fn persist(&self, st: &SlotState) {
        let bytes = serde_json::to_vec_pretty(st).unwrap_or_default();
        if let Err(e) = write_atomic(&self.dir, "state.json", &bytes) {
            tracing::error!(slot = %self.name, error = %e, "could not save the model slot's state");
        }
    }

    /// Removes the oldest versions beyond [`KEPT_VERSIONS`] (never the
    /// active one, the previous one or the config's file) and returns them.
    fn prune(&self, st: &mut SlotState) -> Vec<VersionRecord> {
        let mut removed = Vec::new();
        while st.versions.len() > KEPT_VERSIONS {
            let victim = st
                .versions
                .values()
                .find(|v| {
                    v.version != st.active
                        && Some(v.version) != st.previous
                        && !(v.origin == "config" && v.sha256 == self.config_sha)
                })
                .map(|v| v.version);
            let Some(v) = victim.and_then(|v| st.versions.remove(&v)) else { break };
            removed.push(v);
        }
        removed
    }

    /// Stores an uploaded model as a new version after checking it (size,
    /// signature, loads, decoder fits, labels). Nothing changes on failure.
    ///
    /// The body streams into a temp file with no lock held, so a slow client
    /// delays only itself; the file becomes `vN.onnx` (fsynced, renamed,
    /// directory fsynced) only once it passed every check.
    pub async fn upload(
        &self,
        mut body: impl futures_core_stream::Stream<Item = Result<bytes::Bytes, String>> + Unpin,
        max_bytes: u64,
        verify: Option<&ed25519_dalek::VerifyingKey>,
        signature: Option<&str>,
    ) -> Result<VersionRecord, ModelError> {
        use tokio::io::AsyncWriteExt;
        let internal = |e: std::io::Error| ModelError::Internal(e.to_string());
        tokio::fs::create_dir_all(&self.dir).await.map_err(internal)?;
        let tmp_path = self.dir.join(format!(".upload-{}", uuid::Uuid::now_v7()));
        let mut tmp = TempFile(Some(tmp_path.clone()));
        let mut f = tokio::fs::File::create(&tmp_path).await.map_err(internal)?;
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
            f.write_all(&chunk).await.map_err(internal)?;
        }
        f.flush().await.map_err(internal)?;
        f.sync_all().await.map_err(internal)?;
        drop(f);
        if size == 0 {
            return Err(ModelError::BadRequest(
                "the upload is empty: send the .onnx file as the request body".into(),
            ));
        }
        let digest = hasher.finalize();
        if let Some(key) = verify {
            let sig = signature.ok_or_else(|| {
                ModelError::Forbidden("model signing is on: send the Ed25519 signature of the file's SHA-256 in X-Vigil-Signature (base64)".into())
            })?;
            verify_signature(key, &digest, sig)?;
        }
        let sha = hex(&digest);
        self.refuse_duplicate(&self.state.lock(), &sha)?;
        // Load and validate off the async runtime, with no lock held.
        let checked = {
            let (file, name, options) = (tmp_path.clone(), self.name.clone(), self.options.clone());
            let (required, cameras, limits) =
                (self.required_labels.clone(), self.cameras.clone(), self.limits);
            tokio::task::spawn_blocking(move || {
                // Validating takes one copy of the session; activation
                // loads as many as the slot runs, lanes included.
                let options = ModelOptions { sessions: 1, lanes: 0, ..options };
                let info =
                    check(&name, &file, &options, &limits, &required, &cameras, 0).map(|d| d.info().clone());
                vigil_inference::runtime::release_free_memory();
                info
            })
            .await
            .map_err(|e| ModelError::Internal(e.to_string()))?
        };
        let info = checked.map_err(|e| {
            // The refused file is gone: name it for what the operator sent.
            let path = tmp_path.display().to_string();
            e.map_message(|m| {
                m.replace(&format!("model {path}"), "the uploaded file").replace(&path, "the uploaded file")
            })
        })?;
        let (rec, pruned) = {
            let mut st = self.state.lock();
            self.refuse_duplicate(&st, &sha)?;
            let version = st.take_version();
            let file = self.dir.join(format!("v{version}.onnx"));
            std::fs::rename(&tmp_path, &file).and_then(|()| sync_dir(&self.dir)).map_err(internal)?;
            tmp.0 = None;
            let rec = record(version, &file, "upload", &info);
            st.versions.insert(version, rec.clone());
            let pruned = self.prune(&mut st);
            self.persist(&st);
            (rec, pruned)
        };
        for p in pruned.iter().filter(|p| p.origin == "upload") {
            tracing::info!(slot = %self.name, version = p.version, kept = KEPT_VERSIONS, "old model version pruned");
            let _ = tokio::fs::remove_file(&p.file).await;
        }
        Ok(rec)
    }

    fn refuse_duplicate(&self, st: &SlotState, sha: &str) -> Result<(), ModelError> {
        match st.versions.values().find(|v| v.sha256 == sha) {
            Some(v) => Err(ModelError::Conflict(format!(
                "this file is already version {} of slot {}",
                v.version, self.name
            ))),
            None => Ok(()),
        }
    }

    /// Prepares `version` off the hot path (load, validate, warm up and
    /// self-test on `frames`, each within the slot's `test_run` limit), then
    /// swaps it in with one atomic store.
    ///
    /// One activation per slot at a time: a second is refused with
    /// `Conflict` while the first is prepared. No lock is held while it is:
    /// rollbacks, deletes and uploads of the slot go on meanwhile.
    pub async fn activate(
        self: &Arc<Self>,
        version: u32,
        frames: Vec<vigil_camera::Frame>,
    ) -> Result<Activation, ModelError> {
        let _guard = self.begin_activation(version)?;
        let rec = {
            let st = self.state.lock();
            if version == st.active {
                return Err(ModelError::Conflict(format!("version {version} is already active")));
            }
            st.versions
                .get(&version)
                .cloned()
                .ok_or_else(|| ModelError::NotFound(format!("slot {} has no version {version}", self.name)))?
        };
        let t0 = Instant::now();
        let me = self.clone();
        let want = rec.sha256.clone();
        let detector = tokio::task::spawn_blocking(move || -> Result<Detector, ModelError> {
            let d = check(&me.name, &rec.file, &me.options, &me.limits, &me.required_labels, &me.cameras, version)?;
            if d.info().sha256 != want {
                return Err(ModelError::Invalid(format!(
                    "the file of version {version} changed on disk since it was stored (sha256 {}, stored {want}); \
                     delete it and upload it again",
                    d.info().sha256
                )));
            }
            me.self_test(&d, frames)?;
            // Building the sessions left graph-optimisation garbage behind.
            vigil_inference::runtime::release_free_memory();
            Ok(d)
        })
        .await
        .map_err(|e| ModelError::Internal(e.to_string()))??;
        let prepare_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (a, dropped) = {
            let mut st = self.state.lock();
            // What the preparation relied on may have changed meanwhile.
            if !st.versions.contains_key(&version) {
                return Err(ModelError::Conflict(format!(
                    "version {version} was deleted while it was being prepared; nothing changed"
                )));
            }
            if st.active == version {
                return Err(ModelError::Conflict(format!("version {version} is already active")));
            }
            let t1 = Instant::now();
            let old = self.current.swap(Arc::new(detector));
            let switch_ms = t1.elapsed().as_secs_f64() * 1e3;
            st.previous = Some(st.active);
            st.active = version;
            let previous_sha = old.info().sha256.clone();
            let dropped = self.previous.lock().replace(old);
            self.warnings.lock().clear();
            self.persist(&st);
            let a = Activation {
                slot: self.name.clone(),
                version,
                sha256: st.versions[&version].sha256.clone(),
                previous: Some(previous_sha),
                prepare_ms,
                switch_ms,
            };
            (a, dropped)
        };
        if dropped.is_some() {
            // The version before the previous one goes (once its last frames
            // are done): give its memory back rather than keep it as garbage.
            drop(dropped);
            tokio::task::spawn_blocking(vigil_inference::runtime::release_free_memory);
        }
        tracing::info!(slot = %self.name, version, prepare_ms, a.switch_ms, "model activated");
        Ok(a)
    }

    fn begin_activation(self: &Arc<Self>, version: u32) -> Result<ActivatingGuard, ModelError> {
        let mut a = self.activating.lock();
        if let Some(v) = *a {
            return Err(ModelError::Conflict(format!(
                "slot {} is already activating version {v}; wait for it to finish (GET /api/v1/models/{} \
                 shows `activating` until it does), then try again",
                self.name, self.name
            )));
        }
        *a = Some(version);
        Ok(ActivatingGuard(self.clone()))
    }

    /// Warms up and self-tests `d` on what the cameras see now (or a blank
    /// frame): the first real inference must not happen on the line. All of
    /// it within the slot's `test_run` limit: a model that loops on bright
    /// frames only passes the blank test run at load and would hang here.
    fn self_test(&self, d: &Detector, frames: Vec<vigil_camera::Frame>) -> Result<(), ModelError> {
        let mut scratch = Scratch::default();
        let blank = vigil_camera::Frame::from_rgb("warmup", 0, 64, 48, vec![0; 64 * 48 * 3]);
        let frames = if frames.is_empty() { vec![blank] } else { frames };
        let deadline = Instant::now() + self.limits.test_run;
        for f in frames.iter().cycle().take(frames.len().max(3)) {
            // As the cameras will feed it (I420 planes, no RGB copy).
            let image = crate::appliance::ModelImage::of(f)
                .ok_or_else(|| ModelError::Internal("bad warm-up frame".into()))?;
            let pred = image.detect_until(d, &mut scratch, deadline).map_err(|e| match e {
                vigil_inference::InferenceError::Stopped { .. } => ModelError::Invalid(format!(
                    "self-test on the cameras' latest frames did not finish within {:.1?} and was stopped: \
                     the model loops without end on what the cameras see, or is far too slow for this box \
                     (if the box is only slow, raise models[].test_run_s)",
                    self.limits.test_run
                )),
                e => ModelError::Invalid(format!("self-test failed: {e}")),
            })?;
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
        Ok(())
    }

    /// Swaps the previous version back in: from memory when it was active in
    /// this run (instant, in one critical section), else prepared from its
    /// file like any activation. The previous version is read under the
    /// same lock as the swap, so a delete racing with it can never leave a
    /// deleted version active.
    pub async fn rollback(
        self: &Arc<Self>,
        frames: Vec<vigil_camera::Frame>,
    ) -> Result<Activation, ModelError> {
        let previous = {
            let mut st = self.state.lock();
            let previous = st.previous.ok_or_else(|| {
                ModelError::Conflict(format!("slot {} has no previous version to roll back to", self.name))
            })?;
            let in_memory = self.previous.lock().clone().filter(|d| d.info().version == previous);
            if let Some(detector) = in_memory {
                let t1 = Instant::now();
                let old = self.current.swap(detector.clone());
                let switch_ms = t1.elapsed().as_secs_f64() * 1e3;
                let previous_sha = old.info().sha256.clone();
                *self.previous.lock() = Some(old);
                st.previous = Some(st.active);
                st.active = previous;
                self.warnings.lock().clear();
                self.persist(&st);
                return Ok(Activation {
                    slot: self.name.clone(),
                    version: previous,
                    sha256: detector.info().sha256.clone(),
                    previous: Some(previous_sha),
                    prepare_ms: 0.0,
                    switch_ms,
                });
            }
            previous
        };
        // Not in memory (it was active before a restart): a full activation,
        // whose critical section checks the version still exists.
        self.activate(previous, frames).await.map_err(|e| match e {
            ModelError::NotFound(m) => {
                ModelError::Conflict(format!("{m}: it was deleted; nothing to roll back to"))
            }
            e => e,
        })
    }

    /// Forgets a version and its file. Refused for the active version and for
    /// the config's own file.
    pub async fn delete(&self, version: u32) -> Result<(), ModelError> {
        let rec = {
            let mut st = self.state.lock();
            if st.active == version {
                return Err(ModelError::Conflict(format!(
                    "version {version} is in use by cameras {}; activate another version first",
                    self.cameras.join(", ")
                )));
            }
            let rec = st.versions.get(&version).cloned().ok_or_else(|| {
                ModelError::NotFound(format!("slot {} has no version {version}", self.name))
            })?;
            if rec.origin == "config" {
                return Err(ModelError::Conflict(format!(
                    "version {version} is the file the config names; change the config instead"
                )));
            }
            st.versions.remove(&version);
            if st.previous == Some(version) {
                st.previous = None;
            }
            let mut kept = self.previous.lock();
            if kept.as_ref().is_some_and(|d| d.info().version == version) {
                *kept = None;
            }
            drop(kept);
            self.persist(&st);
            rec
        };
        // The record is gone (and saved) before the file: a crash between
        // leaves a file no record names, swept at the next start, never a
        // record without its file.
        let _ = tokio::fs::remove_file(&rec.file).await;
        Ok(())
    }
}

/// At start: removes partial uploads and temp files, and (when the state
/// was read) `vN.onnx` files no record names; raises `next_version` past
/// every number a file on disk carries (returned), so numbers are never given twice
/// even when the state was lost.
fn sweep(dir: &Path, state: Option<&SlotState>) -> u32 {
    let mut next = state.map_or(0, |st| st.next_version);
    let Ok(entries) = std::fs::read_dir(dir) else { return next };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let leftover = name.starts_with(".upload-") || name.ends_with(".tmp");
        let number = version_of_file(&name);
        if let Some(n) = number {
            next = next.max(n.saturating_add(1));
        }
        let orphan = number.is_some()
            && state.is_some_and(|st| {
                !st.versions.values().any(|v| v.file.file_name() == Some(e.file_name().as_os_str()))
            });
        if leftover || orphan {
            tracing::info!(file = %e.path().display(), "swept a leftover from the model store");
            let _ = std::fs::remove_file(e.path());
        }
    }
    next
}

/// Loads a model file and checks that it can serve a slot: ONNX Runtime
/// loads it, a decoder fits (with a test run), and it has every label the
/// slot's rules use.
fn check(
    name: &str,
    file: &Path,
    options: &ModelOptions,
    limits: &ModelLimits,
    required_labels: &[String],
    cameras: &[String],
    version: u32,
) -> Result<Detector, ModelError> {
    let mut d = Detector::load_with(name, file, options.clone(), limits)
        .map_err(|e| ModelError::Invalid(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u32, dir: &Path) -> VersionRecord {
        VersionRecord {
            version,
            sha256: String::new(),
            file: dir.join(format!("v{version}.onnx")),
            size_bytes: 0,
            origin: "upload".into(),
            added_at: 0,
            decoder: "yolov8".into(),
            labels: Vec::new(),
            input: None,
        }
    }

    #[test]
    fn a_sweep_removes_partial_uploads_and_orphans_and_numbers_skip_every_file_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in [".upload-0192", "state.json.tmp", "v2.onnx", "v7.onnx"] {
            std::fs::write(dir.path().join(f), b"x").expect("write");
        }
        let mut st = SlotState::default();
        st.versions.insert(2, rec(2, dir.path()));
        st.active = 2;
        // v7 is a file no record names (a crash between a delete's save and its unlink).
        let next = sweep(dir.path(), Some(&st));
        let mut left: Vec<_> =
            std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        left.sort();
        assert_eq!(left, vec!["v2.onnx"]);
        assert_eq!(next, 8, "7 was given once: never again");
        st.next_version = next;
        assert_eq!(st.take_version(), 8);
        assert_eq!(st.take_version(), 9);
    }

    #[test]
    fn without_a_readable_state_the_sweep_keeps_every_model_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in [".upload-0192", "v3.onnx"] {
            std::fs::write(dir.path().join(f), b"x").expect("write");
        }
        assert_eq!(sweep(dir.path(), None), 4);
        assert!(dir.path().join("v3.onnx").is_file());
        assert!(!dir.path().join(".upload-0192").exists());
    }
}
