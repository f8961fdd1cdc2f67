//! Reading every frame of a source in order, as fast as it decodes: for
//! offline work (`vigil infer` on a video, benchmarks). The live path
//! (`Camera`) drops frames to stay real time; this one never drops.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use crate::{CameraError, Frame, Source};

/// Pulls decoded RGB frames one by one.
#[derive(Debug)]
pub struct FrameReader {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    name: Arc<str>,
    seq: u64,
    source: Source,
}

impl FrameReader {
    /// Builds and starts the pipeline. Files are decoded as fast as possible.
    pub fn open(name: &str, source: &Source) -> Result<FrameReader, CameraError> {
        crate::init()?;
        source.check_exists()?;
        let launch = format!(
            "{} ! videoconvert ! video/x-raw,format=RGB ! appsink name=vigil_sink max-buffers=4 drop=false sync=false",
            source.launch_head(&crate::CameraOptions::default())
        );
        let pipeline = gst::parse::launch(&launch)
            .map_err(|e| CameraError::Pipeline(e.to_string()))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| CameraError::Pipeline("not a pipeline".into()))?;
        let sink = pipeline
            .by_name("vigil_sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| CameraError::Pipeline("appsink missing".into()))?;
        pipeline.set_state(gst::State::Playing).map_err(|e| {
            let detail =
                pipeline.bus().and_then(|b| b.pop_filtered(&[gst::MessageType::Error])).and_then(|m| match m
                    .view()
                {
                    gst::MessageView::Error(err) => Some(err.error().to_string()),
                    _ => None,
                });
            CameraError::Pipeline(detail.unwrap_or_else(|| e.to_string()))
        })?;
        Ok(FrameReader { pipeline, sink, name: name.into(), seq: 0, source: source.clone() })
    }

    /// The next frame; `None` at the end of the stream. Fails when the
    /// pipeline reports an error or nothing arrives within `timeout`.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<Option<Frame>, CameraError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(bus) = self.pipeline.bus()
                && let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error])
                && let gst::MessageView::Error(err) = msg.view()
            {
                let text = format!("{}: {}", self.source, err.error());
                return Err(CameraError::Pipeline(self.source.scrub(&text)));
            }
            if let Some(sample) = self.sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
                return self.frame_from(&sample).map(Some);
            }
            if self.sink.is_eos() {
                return Ok(None);
            }
            if Instant::now() > deadline {
                return Err(CameraError::Pipeline(format!(
                    "no frame from {} within {timeout:?}",
                    self.source
                )));
            }
        }
    }

    fn frame_from(&mut self, sample: &gst::Sample) -> Result<Frame, CameraError> {
        let bad = |what: &str| CameraError::Pipeline(format!("bad sample: {what}"));
        let caps = sample.caps().ok_or_else(|| bad("no caps"))?;
        let info = gst_video::VideoInfo::from_caps(caps).map_err(|_| bad("caps are not video"))?;
        let buffer = sample.buffer_owned().ok_or_else(|| bad("no buffer"))?;
        let pts = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
        let mapped = buffer.into_mapped_buffer_readable().map_err(|_| bad("cannot map"))?;
        let seq = self.seq;
        self.seq += 1;
        Frame::from_gst(self.name.clone(), seq, SystemTime::now(), Instant::now(), pts, None, &info, mapped)
            .ok_or_else(|| bad("not RGB"))
    }

    /// Frames in the stream, estimated from its duration and frame rate, when
    /// it has both (files do; live cameras do not).
    pub fn estimated_frames(&self) -> Option<u64> {
        let duration = self.pipeline.query_duration::<gst::ClockTime>()?;
        let caps = self.sink.static_pad("sink")?.current_caps()?;
        let info = gst_video::VideoInfo::from_caps(&caps).ok()?;
        let fps = info.fps();
        if fps.numer() <= 0 || fps.denom() <= 0 {
            return None;
        }
        Some(
            (duration.nseconds() as u128 * fps.numer() as u128 / (fps.denom() as u128 * 1_000_000_000))
                as u64,
        )
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
