//! The gst-launch description of a camera's pipeline, and what is set on
//! the pipeline once it is built and before it starts.

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::codecs;
use crate::source::PACED_SOURCE;
use crate::{CameraError, CameraOptions, Flip, Source};

/// `<source> ! videorate ! videoflip ! videoscale ! videoconvert ! I420|RGB ! appsink`:
/// the cheap steps first, the per-pixel ones on as few frames and pixels as
/// possible; the appsink keeps one buffer and drops the rest (newest wins).
/// Decoders give I420, which passes through untouched and is preprocessed
/// for the model from its planes: no whole-frame RGB conversion (measured 2 %
/// of the CPU with four 720p cameras) and half the memory per held frame.
/// Sources that make RGB keep it.
pub(crate) fn launch_string(source: &Source, options: &CameraOptions) -> String {
    let mut tail = String::new();
    if let Some(fps) = options.fps {
        tail += &format!(" ! videorate name=vigil_rate drop-only=true max-rate={fps}");
    }
    // `video-direction`, not the deprecated `method`: in GStreamer 1.22 the
    // latter flips the pixels without swapping width and height in the caps.
    let rotate = match options.rotate {
        90 => Some("90r"),
        180 => Some("180"),
        270 => Some("90l"),
        _ => None,
    };
    if let Some(d) = rotate {
        tail += &format!(" ! videoflip video-direction={d}");
    }
    match options.flip {
        Flip::Horizontal => tail += " ! videoflip video-direction=horiz",
        Flip::Vertical => tail += " ! videoflip video-direction=vert",
        Flip::None => {}
    }
    if options.width.is_some() || options.height.is_some() {
        let mut caps = String::from("video/x-raw");
        if let Some(w) = options.width {
            caps += &format!(",width={w}");
        }
        if let Some(h) = options.height {
            caps += &format!(",height={h}");
        }
        // add-borders=false: scale to the size asked, never letterbox here
        // (the model's own preprocessing decides that).
        tail += &format!(" ! videoscale add-borders=false ! {caps},pixel-aspect-ratio=1/1");
    }
    // A file not played in real time is analysed frame by frame: appsink
    // blocks instead of dropping (and so does the frame slot, see run_pipeline).
    let drop = !source.is_file() || options.realtime;
    let head = match source.paced_file_head() {
        Some(paced) if options.realtime => paced,
        _ => source.launch_head(options),
    };
    format!(
        "{head}{tail} ! videoconvert ! video/x-raw,format={{I420,RGB}} ! appsink name=vigil_sink max-buffers=1 drop={drop} sync=false emit-signals=false",
    )
}

/// Builds the pipeline without starting it: used by `vigil check` to find
/// launch strings that do not parse and elements that are not installed.
pub fn validate(source: &Source) -> Result<(), CameraError> {
    validate_with(source, &CameraOptions::default())
}

/// [`validate`] with the camera's own options (rotation, scaling, ...).
pub fn validate_with(source: &Source, options: &CameraOptions) -> Result<(), CameraError> {
    crate::init()?;
    source.check_exists()?;
    let pipeline = gst::parse::launch(&launch_string(source, options))
        .map_err(|e| CameraError::Pipeline(source.scrub(&unbuildable(&e))))?;
    let _ = pipeline.set_state(gst::State::Null);
    Ok(())
}

/// Why a launch string did not make a pipeline; for an element that is not
/// installed, also which package has it.
pub(crate) fn unbuildable(e: &gst::glib::Error) -> String {
    let text = e.to_string();
    if e.kind::<gst::ParseError>() == Some(gst::ParseError::NoSuchElement)
        && let Some(name) = text.split('"').nth(1)
    {
        return format!("{text}: {}", codecs::missing_element(name));
    }
    text
}

/// Readies a parsed pipeline for its source before it starts.
pub(crate) fn prepare(pipeline: &gst::Pipeline, source: &Source, options: &CameraOptions) {
    if source.is_file()
        && options.realtime
        && let Some(paced) = pipeline.by_name(PACED_SOURCE)
    {
        paced.set_property("caps", codecs::paced_file_caps());
    }
    set_up_decoders(pipeline, source, options);
}

/// Sets up the video decoders as decodebin adds them (they appear only once
/// it has seen the stream, wherever they sit in the bins): the thread count
/// of the plan, and for a file played in real time the threads a live
/// camera's stream gets. libav decoders take slice threads for a live
/// upstream and frame threads otherwise, each holding back a frame.
fn set_up_decoders(pipeline: &gst::Pipeline, source: &Source, options: &CameraOptions) {
    let as_live = source.is_file() && options.realtime;
    let threads = options.decode_threads;
    if threads.is_none() && !as_live {
        return;
    }
    pipeline.connect_deep_element_added(move |_, _, element| {
        if let Some(threads) = threads
            && element.find_property("max-threads").is_some()
        {
            element.set_property_from_str("max-threads", &threads.to_string());
        }
        let libav = element.factory().is_some_and(|f| f.name().starts_with("avdec_"));
        if as_live && libav && element.find_property("thread-type").is_some() {
            element.set_property_from_str("thread-type", "slice");
        }
    });
}
