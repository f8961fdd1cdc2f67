use std::path::Path;

use super::*;
use crate::launch::validate;
use crate::source::PACED_SOURCE;

fn file(path: &Path) -> Source {
    Source::File { path: path.to_owned() }
}

#[test]
fn a_file_in_real_time_is_paced_before_decoding_and_a_lossless_one_is_not() {
    let source = file(Path::new("/clips/line3.mp4"));
    let live = launch_string(&source, &CameraOptions::default());
    let paced = live.find("identity sync=true ! decodebin").expect(&live);
    assert!(live.find("uridecodebin name=vigil_paced").is_some_and(|u| u < paced), "{live}");
    // Paced once: the sink takes each frame as it comes, dropping what
    // the model has no time for.
    assert!(live.ends_with("drop=true sync=false emit-signals=false"), "{live}");
    // Where it stops is set on the built pipeline: every codec decodable here.
    crate::init().expect("GStreamer");
    let pipeline =
        gst::parse::launch(&live).expect("pipeline").downcast::<gst::Pipeline>().expect("a pipeline");
    prepare(&pipeline, &source, &CameraOptions::default());
    let stops_at = pipeline.by_name(PACED_SOURCE).expect("paced source").property::<gst::Caps>("caps");
    for codec in ["video/x-raw(ANY)", "video/x-h264", "video/x-msmpeg", "video/x-theora", "image/jpeg"] {
        assert!(stops_at.to_string().contains(codec), "{codec} not in {stops_at}");
    }

    let lossless = launch_string(&source, &CameraOptions { realtime: false, ..CameraOptions::default() });
    assert!(!lossless.contains("identity") && !lossless.contains(PACED_SOURCE), "{lossless}");
    assert!(lossless.ends_with("drop=false sync=false emit-signals=false"), "{lossless}");
}

/// The libav decoders in a pipeline once its first frame is out: (factory,
/// thread-type flags as text, max-threads).
fn decoders(source: &Source, options: &CameraOptions) -> Vec<(String, String, i32)> {
    crate::init().expect("GStreamer");
    let pipeline = gst::parse::launch(&launch_string(source, options))
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    prepare(&pipeline, source, options);
    let sink = pipeline.by_name("vigil_sink").and_downcast::<gst_app::AppSink>().expect("appsink");
    pipeline.set_state(gst::State::Playing).expect("play");
    // The decoders exist once a frame came through them.
    assert!(sink.try_pull_sample(gst::ClockTime::from_seconds(20)).is_some(), "no frame");
    let found = pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.factory()?.name().to_string();
            name.starts_with("avdec_").then(|| {
                let flags = e.property_value("thread-type");
                let text = flags.serialize().map(|s| s.to_lowercase()).unwrap_or_default();
                (name, text, e.property::<i32>("max-threads"))
            })
        })
        .collect();
    pipeline.set_state(gst::State::Null).expect("stop");
    found
}

#[test]
fn a_file_in_real_time_decodes_with_the_threads_a_live_stream_gets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clip = dir.path().join("clip.mp4");
    make_clip(&clip, 10, 10, "x264enc ! mp4mux");

    let live = decoders(&file(&clip), &CameraOptions::default());
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!((live[0].0.as_str(), live[0].1.as_str()), ("avdec_h264", "slice"), "{live:?}");
    // Several cameras' plan: one thread each, as before.
    let planned =
        decoders(&file(&clip), &CameraOptions { decode_threads: Some(1), ..CameraOptions::default() });
    assert_eq!((planned[0].1.as_str(), planned[0].2), ("slice", 1), "{planned:?}");
    // A file analysed frame by frame keeps libav's own choice.
    let lossless = decoders(&file(&clip), &CameraOptions { realtime: false, ..CameraOptions::default() });
    assert_eq!((lossless[0].1.as_str(), lossless[0].2), ("auto", 0), "{lossless:?}");
}

#[test]
fn pipeline_errors_never_show_a_password_from_the_source() {
    let base = Path::new("/");
    let launch =
        Source::parse("launch:rtspsrc location=rtsp://admin:hunter2@cam/s ! decodebin", base).expect("valid");
    assert_eq!(launch.scrub("no route to rtsp://admin:hunter2@cam/s"), "no route to rtsp://admin:***@cam/s");
    let rtsp = Source::parse("rtsp://admin:hunter2@cam/s", base).expect("valid");
    assert!(!rtsp.scrub("401 for admin:hunter2").contains("hunter2"));
}

#[test]
fn a_launch_line_naming_an_element_that_is_not_installed_names_its_package() {
    crate::init().expect("GStreamer");
    let source =
        Source::parse("launch:videotestsrc ! avdec_vigil_nonexistent", Path::new("/")).expect("valid");
    let e = validate(&source).expect_err("no such element").to_string();
    assert!(e.contains("`avdec_vigil_nonexistent` is not installed"), "{e}");
    assert!(e.contains("install the Debian package gstreamer1.0-libav"), "{e}");
}

/// Records `frames` frames of the moving ball at `fps` through `encode` (a
/// gst-launch fragment that ends in a muxer) into `path`.
fn make_clip(path: &Path, fps: u32, frames: u32, encode: &str) {
    crate::init().expect("GStreamer");
    let make = gst::parse::launch(&format!(
        "videotestsrc pattern=ball num-buffers={frames} ! video/x-raw,width=160,height=120,framerate={fps}/1 \
         ! {encode} ! filesink location=\"{}\"",
        path.display()
    ))
    .expect("encoder pipeline");
    make.set_state(gst::State::Playing).expect("encode");
    let bus = make.bus().expect("bus");
    let end = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(20),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    make.set_state(gst::State::Null).expect("stop");
    assert!(
        matches!(end.as_ref().map(|m| m.view()), Some(gst::MessageView::Eos(_))),
        "clip {} not made: {end:?}",
        path.display()
    );
}

/// Rewrites an AVI's video FOURCC (the stream header's handler and the
/// bitmap header's compression), as other encoders label the same bitstream.
fn relabel_avi(from: &Path, to: &Path, old: &[u8; 4], new: &[u8; 4]) {
    let mut bytes = std::fs::read(from).expect("read clip");
    // Only in the headers, before the first frame.
    let headers = bytes.windows(4).position(|w| w == b"movi").expect("an AVI");
    let mut found = 0;
    for i in 0..headers {
        if &bytes[i..i + 4] == old {
            bytes[i..i + 4].copy_from_slice(new);
            found += 1;
        }
    }
    assert_eq!(found, 2, "FOURCC {old:?} in strh and strf");
    std::fs::write(to, bytes).expect("write clip");
}

/// The video decoders in a real-time file's pipeline once a frame is out,
/// each with whether it decodes after the pacing (`identity sync=true`)
/// rather than ahead of it inside `uridecodebin`.
fn decoders_after_pacing(source: &Source) -> Vec<(String, bool)> {
    crate::init().expect("GStreamer");
    let options = CameraOptions::default();
    let pipeline = gst::parse::launch(&launch_string(source, &options))
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    prepare(&pipeline, source, &options);
    let sink = pipeline.by_name("vigil_sink").and_downcast::<gst_app::AppSink>().expect("appsink");
    pipeline.set_state(gst::State::Playing).expect("play");
    let sample = sink.try_pull_sample(gst::ClockTime::from_seconds(20));
    let error = pipeline.bus().and_then(|b| b.pop_filtered(&[gst::MessageType::Error]));
    if sample.is_none() {
        pipeline.set_state(gst::State::Null).expect("stop");
        panic!("no frame from {source}: {error:?}");
    }
    let found = pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let factory = e.factory()?;
            let klass = factory.klass();
            let video = klass.contains("Video") || klass.contains("Image");
            (klass.contains("Decoder") && video).then(|| {
                let mut ahead = false;
                let mut up = e.parent();
                while let Some(p) = up {
                    let bin = p.downcast_ref::<gst::Element>();
                    ahead |= bin.and_then(|b| b.factory()).is_some_and(|f| f.name() == "uridecodebin");
                    up = p.parent();
                }
                (factory.name().to_string(), !ahead)
            })
        })
        .collect();
    pipeline.set_state(gst::State::Null).expect("stop");
    found
}

/// Plays `source` as a camera and measures the rate frames come at, from
/// their capture instants: a paced file comes at its own rate, not as fast
/// as it decodes (thousands of frames a second at this size). Also returns
/// the camera's status at the end.
fn measured_camera_fps(source: &Source) -> (f64, CameraStatus) {
    let slot = FrameSlot::new();
    let options = CameraOptions { start_timeout: Duration::from_secs(20), ..CameraOptions::default() };
    let camera = Camera::start("clip", source.clone(), options, slot.clone());
    let take = || {
        let status = camera.status();
        slot.take_timeout(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no frame from {source}: {status:?}"))
    };
    // The first frames can come together while the pipeline settles.
    let mut first = take();
    while first.seq() < 3 {
        first = take();
    }
    let mut last = take();
    while last.seq() < first.seq() + 30 {
        last = take();
    }
    let secs = last.captured_instant().duration_since(first.captured_instant()).as_secs_f64();
    ((last.seq() - first.seq()) as f64 / secs, camera.status())
}

/// Frames at about `want` fps, from a camera that streams and never had to
/// reconnect.
fn assert_live(what: &str, (fps, status): (f64, CameraStatus), want: f64) {
    println!("{what}: {fps:.1} fps");
    assert!((want * 0.5..=want * 1.25).contains(&fps), "{what}: {fps:.1} fps, want about {want}");
    assert_eq!((status.state, status.reconnects), (CameraState::Streaming, 0), "{what}: {status:?}");
}

/// A recording plays as a live camera: decoded after the pacing, at about
/// the clip's own 20 fps.
fn plays_as_a_live_camera(clip: &Path) {
    let source = file(clip);
    let decoders = decoders_after_pacing(&source);
    assert!(!decoders.is_empty() && decoders.iter().all(|d| d.1), "{}: {decoders:?}", clip.display());
    assert_live(&clip.display().to_string(), measured_camera_fps(&source), f64::from(CLIP_FPS));
}

const CLIP_FPS: u32 = 20;
const CLIP_FRAMES: u32 = 60;

#[test]
fn microsoft_mpeg4_part_2_recordings_in_avi_play_as_live_cameras() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (v2, v3, divx3) =
        (dir.path().join("mp42.avi"), dir.path().join("mp43.avi"), dir.path().join("div3.avi"));
    make_clip(&v2, CLIP_FPS, CLIP_FRAMES, "avenc_msmpeg4v2 ! avimux");
    make_clip(&v3, CLIP_FPS, CLIP_FRAMES, "avenc_msmpeg4 ! avimux");
    // The same bitstream as DivX ;-) 3 labels it.
    relabel_avi(&v3, &divx3, b"MP43", b"DIV3");
    for clip in [&v2, &v3, &divx3] {
        plays_as_a_live_camera(clip);
    }
}

#[test]
fn theora_in_ogg_plays_as_a_live_camera() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clip = dir.path().join("theora.ogg");
    make_clip(&clip, CLIP_FPS, CLIP_FRAMES, "theoraenc ! oggmux");
    plays_as_a_live_camera(&clip);
}

#[test]
fn mjpeg_in_avi_plays_as_a_live_camera() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clip = dir.path().join("mjpeg.avi");
    make_clip(&clip, CLIP_FPS, CLIP_FRAMES, "jpegenc ! avimux");
    plays_as_a_live_camera(&clip);
}

/// OpenCV's sample clip (768x576, 10 fps, MPEG-4 part 2 Microsoft
/// variant), where the `opencv-doc` package is installed.
#[test]
fn opencv_vtest_avi_plays_as_a_live_camera_where_installed() {
    let clip = Path::new("/usr/share/doc/opencv-doc/examples/data/vtest.avi");
    if !clip.is_file() {
        println!("skipped: {} is not here (package opencv-doc, 295 MB)", clip.display());
        return;
    }
    let source = file(clip);
    let decoders = decoders_after_pacing(&source);
    assert!(!decoders.is_empty() && decoders.iter().all(|d| d.1), "{decoders:?}");
    assert_live("vtest.avi", measured_camera_fps(&source), 10.0);
}
