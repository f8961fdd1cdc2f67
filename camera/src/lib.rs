//! vigil-camera: turns a camera URI into a stream of RGB frames.
//!
//! ```text
//!  Source::parse("rtsp://…")          one OS thread per camera (supervisor)
//!        │                             ┌───────────────────────────────────────────┐
//!        ▼                             │ build pipeline → PLAYING → watch bus      │
//!  launch string:                      │   error / EOS / no frame for stall_timeout│
//!  <head> ! videorate ! videoconvert   │   → tear down, back off, rebuild          │
//!         ! I420 or RGB                │ a plug-in missing → `failed`, with the    │
//!  (launch.rs; codecs.rs: what this    │   codec and the package; never retried    │
//!   machine decodes)                   └───────────────────────────────────────────┘
//!         ! appsink(max-buffers=1, drop)
//!        │ new-sample (GStreamer streaming thread)
//!        ▼
//!  FrameSlot: holds the newest frame only; a frame not taken before the next
//!  arrives is replaced and counted as dropped.
//! ```
//!
//! This is the only crate that links GStreamer: its types never leave it.
//! A [`Frame`] owns the mapped GStreamer buffer, so pixels are never copied
//! between the decoder and inference.

mod codecs;
mod error;
mod frame;
mod launch;
mod progress;
mod reader;
mod source;
mod supervisor;

pub use error::CameraError;
pub use frame::{Frame, FrameSlot, I420Planes, Taken, YuvMatrix, packed_rgb};
pub use launch::{validate, validate_with};
pub use progress::Progress;
pub use reader::FrameReader;
pub use source::{Source, V4l2Mode, redact};
pub use supervisor::{Camera, CameraOptions, CameraState, CameraStats, CameraStatus, Flip, RtspTransport};

/// Initialises GStreamer once per process. Safe to call repeatedly.
pub fn init() -> Result<(), CameraError> {
    gstreamer::init().map_err(|e| CameraError::GstInit(e.to_string()))
}
