use thiserror::Error;

/// Errors from parsing a camera source or running its pipeline.
#[derive(Debug, Error)]
pub enum CameraError {
    #[error("GStreamer failed to initialise: {0}; install the GStreamer runtime (deploy/bootstrap.sh)")]
    GstInit(String),

    #[error("{0}")]
    InvalidSource(String),

    #[error("the pipeline could not be built: {0}")]
    Pipeline(String),
}
