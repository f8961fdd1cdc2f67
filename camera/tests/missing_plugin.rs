//! A camera whose video GStreamer cannot decode fails once, with the codec
//! and the package to install, instead of reconnecting forever.
//!
//! Its own test binary, so its own process: it hides some installed decoders
//! from autoplugging (rank NONE), which is exactly what decodebin sees when
//! their package is not installed, and no other test may see that.

use std::path::Path;
use std::str::FromStr;
use std::sync::Once;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use vigil_camera::{Camera, CameraOptions, CameraState, CameraStatus, FrameSlot, Source};

/// Takes every decoder of these media types out of autoplugging, once for the
/// whole process: MPEG-4 part 2 v3 and H.265 (both `gstreamer1.0-libav`,
/// H.265 also `gstreamer1.0-plugins-bad`'s libde265). Their encoders stay,
/// to make the streams.
fn uninstall_decoders() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        vigil_camera::init().expect("GStreamer");
        let hidden =
            gst::Caps::from_str("video/x-msmpeg, msmpegversion=(int)43; video/x-h265").expect("caps");
        let decoders = gst::ElementFactory::factories_with_type(
            gst::ElementFactoryType::DECODER
                | gst::ElementFactoryType::MEDIA_VIDEO
                | gst::ElementFactoryType::MEDIA_IMAGE,
            gst::Rank::NONE,
        );
        for factory in decoders {
            let takes_hidden = factory
                .static_pad_templates()
                .iter()
                .any(|t| t.direction() == gst::PadDirection::Sink && t.caps().can_intersect(&hidden));
            if takes_hidden {
                factory.set_rank(gst::Rank::NONE);
            }
        }
    });
}

/// Records the moving ball through `encode` (a gst-launch fragment that ends
/// in a muxer) into `path`.
fn make_clip(path: &Path, encode: &str) {
    vigil_camera::init().expect("GStreamer");
    let make = gst::parse::launch(&format!(
        "videotestsrc pattern=ball num-buffers=20 ! video/x-raw,width=160,height=120,framerate=10/1 \
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

/// Quick retries: a camera that keeps reconnecting shows it within the watch.
fn options() -> CameraOptions {
    CameraOptions {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        start_timeout: Duration::from_secs(20),
        ..CameraOptions::default()
    }
}

/// Waits until the camera is `failed`, then watches it for two seconds (ten
/// back-offs): it must stay failed and never reconnect.
fn fails_for_good(source: Source) -> CameraStatus {
    let camera = Camera::start("cam", source, options(), FrameSlot::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = camera.status();
        if status.state == CameraState::Failed {
            break;
        }
        assert!(Instant::now() < deadline, "not failed within 30 s: {status:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let watch = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch {
        let status = camera.status();
        assert!(status.state == CameraState::Failed && status.reconnects == 0, "{status:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = camera.status();
    assert_eq!(status.frames_received, 0, "{status:?}");
    println!("last_error: {}", status.last_error.as_deref().unwrap_or_default());
    status
}

fn error(status: &CameraStatus) -> &str {
    status.last_error.as_deref().unwrap_or_default()
}

#[test]
fn a_recording_in_a_codec_nothing_decodes_fails_naming_it_from_a_file_or_a_launch_line() {
    uninstall_decoders();
    let dir = tempfile::tempdir().expect("temp dir");
    let (made, clip) = (dir.path().join("mjpeg.avi"), dir.path().join("unknown.avi"));
    make_clip(&made, "jpegenc ! avimux");
    // An AVI whose video FOURCC no decoder knows: relabel MJPG in its headers.
    let mut bytes = std::fs::read(&made).expect("read clip");
    let headers = bytes.windows(4).position(|w| w == b"movi").expect("an AVI");
    let labels: Vec<usize> = (0..headers).filter(|&i| &bytes[i..i + 4] == b"MJPG").collect();
    assert_eq!(labels.len(), 2, "MJPG in strh and strf");
    for i in labels {
        bytes[i..i + 4].copy_from_slice(b"VGL0");
    }
    std::fs::write(&clip, bytes).expect("write clip");

    let base = Path::new("/");
    let as_file = Source::parse(&format!("file://{}", clip.display()), base).expect("source");
    let launch = format!("launch:filesrc location=\"{}\" ! decodebin", clip.display());
    let as_launch = Source::parse(&launch, base).expect("source");
    for source in [as_file, as_launch] {
        let status = fails_for_good(source);
        let e = error(&status);
        for needle in ["video/x-avi-unknown", "FOURCC VGL0", "no Debian package is known"] {
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }
}

#[test]
fn a_recording_whose_decoder_is_not_installed_fails_naming_the_package() {
    uninstall_decoders();
    let dir = tempfile::tempdir().expect("temp dir");
    let clip = dir.path().join("mp43.avi");
    make_clip(&clip, "avenc_msmpeg4 ! avimux");
    let source = Source::parse(&format!("file://{}", clip.display()), Path::new("/")).expect("source");
    let status = fails_for_good(source);
    let e = error(&status);
    for needle in ["Microsoft MPEG-4", "video/x-msmpeg", "gstreamer1.0-libav"] {
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }
}

/// An RTSP server on a free loopback port, serving `launch` at `/cam`.
struct RtspServer {
    port: u32,
    main_loop: glib::MainLoop,
    _server: rtsp::RTSPServer,
}

impl RtspServer {
    fn start(launch: &str) -> RtspServer {
        vigil_camera::init().expect("GStreamer");
        let server = rtsp::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service("0");
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(true);
        server.mount_points().expect("mount points").add_factory("/cam", factory);
        let context = glib::MainContext::new();
        server.attach(Some(&context)).expect("listen on loopback");
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let running = main_loop.clone();
        std::thread::spawn(move || running.run());
        RtspServer { port: u32::try_from(server.bound_port()).expect("a port"), main_loop, _server: server }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.main_loop.quit();
    }
}

#[test]
fn an_rtsp_camera_whose_codec_cannot_be_decoded_fails_naming_it_without_its_password() {
    uninstall_decoders();
    let server = RtspServer::start(
        "( videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=10/1 \
           ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=10 \
           ! rtph265pay name=pay0 pt=96 config-interval=1 )",
    );
    let url = format!("rtsp://viewer:s3cret-pw@127.0.0.1:{}/cam", server.port);
    let source = Source::parse(&url, Path::new("/")).expect("source");
    let status = fails_for_good(source);
    let e = error(&status);
    for needle in ["H.265", "video/x-h265", "gstreamer1.0-libav"] {
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }
    assert!(!e.contains("s3cret-pw"), "{e}");
}
