//! vigil-rtsp-test-server: GStreamer's moving ball as an H.264 RTSP stream.
//!
//! ```text
//! vigil-rtsp-test-server --port 8554 [--mount /cam] [--fps 10] [--width 320 --height 240]
//! ```
//! Prints `ready rtsp://127.0.0.1:PORT/MOUNT` on stdout once it listens.
//! Reads commands on stdin, one per line, so tests can script a misbehaving camera:
//! `stall` keeps every session open but stops sending frames; `resume` starts again.
//! Listens on 127.0.0.1 only.

use std::io::BufRead;
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone()).unwrap_or_else(|| default.to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = arg(&args, "--port", "8554");
    let mount = arg(&args, "--mount", "/cam");
    let fps = arg(&args, "--fps", "10");
    let (w, h) = (arg(&args, "--width", "320"), arg(&args, "--height", "240"));
    if let Err(e) = gst::init() {
        eprintln!("GStreamer: {e}");
        std::process::exit(1);
    }
    let server = rtsp::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(&port);
    let factory = rtsp::RTSPMediaFactory::new();
    // A keyframe every second so a reconnecting client decodes within a second.
    factory.set_launch(&format!(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={fps}/1 \
           ! valve name=valve drop=false ! videoconvert \
           ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} \
           ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    ));
    // One pipeline for every client: `stall` must stop all of them.
    factory.set_shared(true);
    let valve: Arc<Mutex<Option<gst::Element>>> = Arc::default();
    {
        let valve = valve.clone();
        factory.connect_media_configure(move |_, media| {
            if let Some(bin) = media.element().downcast_ref::<gst::Bin>() {
                *valve.lock().expect("valve lock") = bin.by_name("valve");
            }
        });
    }
    let Some(mounts) = server.mount_points() else {
        eprintln!("no mount points");
        std::process::exit(1);
    };
    mounts.add_factory(&mount, factory);
    let main_loop = glib::MainLoop::new(None, false);
    if server.attach(None).is_err() {
        eprintln!("cannot listen on 127.0.0.1:{port}");
        std::process::exit(1);
    }
    println!("ready rtsp://127.0.0.1:{port}{mount}");
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            let drop = match line.trim() {
                "stall" => true,
                "resume" => false,
                other => {
                    eprintln!("unknown command {other:?}: use stall or resume");
                    continue;
                }
            };
            if let Some(v) = valve.lock().expect("valve lock").as_ref() {
                v.set_property("drop", drop);
            }
            println!("{}", if drop { "stalled" } else { "resumed" });
        }
    });
    main_loop.run();
}
