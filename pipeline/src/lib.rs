//! vigil-pipeline: wires cameras to inference to events, and owns the config.
//!
//! ```text
//!  config ──▶ Appliance::start
//!              ├─ models: one Detector per model, shared by its cameras
//!              ├─ per camera: Camera ─▶ FrameSlot ─▶ inference worker (OS thread)
//!              │                                      ├─▶ latest result ─▶ snapshot JPEG
//!              │                                      └─▶ events (bounded) ─▶ MQTT publisher
//!              ├─ per camera: tracker ─▶ zones & lines ─▶ rules ─▶ events ─▶ outbox (disk) ─▶ MQTT link
//!              └─ health: cameras, broker link, outbox, models
//! ```

pub mod annotate;
pub mod appliance;
pub mod azure;
pub mod config;
pub mod event;
pub mod lifecycle;
pub mod metrics;
pub mod models;
pub mod motion;
pub mod mqtt;
pub mod outbox;
pub mod rules;
pub mod scheduler;
pub mod settings;
pub mod snapshots;
pub mod threads;
pub mod tracker;
pub mod writer;
pub mod zones;

pub use appliance::{Appliance, Health, SnapshotError};
pub use config::{Config, ConfigError, LoadedConfig};
/// Camera URLs with their password replaced, for anything a person or log sees.
pub use vigil_camera::redact as redact_source;

/// Why the appliance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] vigil_inference::InferenceError),
    #[error("model {name:?}: {error}")]
    Model { name: String, error: vigil_inference::InferenceError },
    #[error("{0}")]
    Config(String),
}

/// Deep checks beyond parsing, for `vigil check`: loads every model with ONNX
/// Runtime and builds (without starting) every camera pipeline. Returns one
/// line per problem.
pub fn check_deep(loaded: &LoadedConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = vigil_inference::runtime::init() {
        problems.push(e.to_string());
        return problems;
    }
    let mut labels = std::collections::HashMap::new();
    for (i, m) in loaded.config.models.iter().enumerate() {
        match vigil_inference::Detector::load(&m.name, &m.path, m.options()) {
            Ok(d) => {
                labels.insert(m.name.clone(), d.info().labels().to_vec());
            }
            Err(e) => problems.push(format!("models[{i}] ({}): {e}", m.name)),
        }
    }
    problems.extend(appliance::check_rule_labels(loaded, &|m| labels.get(m).cloned()));
    problems.extend(loaded.camera_problems.iter().cloned());
    for (i, (c, s)) in loaded.config.cameras.iter().zip(&loaded.sources).enumerate() {
        // Sources that did not parse or do not exist are already reported.
        if let Ok(s) = s
            && s.check_exists().is_ok()
            && let Err(e) = vigil_camera::validate_with(s, &c.options())
        {
            problems.push(format!("cameras[{i}] ({}): {e}", c.name));
        }
    }
    problems
}
