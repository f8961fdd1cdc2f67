use super::*;
use crate::launch::{launch_string, set_up_decoders};

fn file(path: &std::path::Path) -> Source {
    Source::File { path: path.to_owned() }
}

#[test]
fn a_file_in_real_time_is_paced_before_decoding_and_a_lossless_one_is_not() {
    let source = file(std::path::Path::new("/clips/line3.mp4"));
    let live = launch_string(&source, &CameraOptions::default());
    let paced = live.find("identity sync=true ! decodebin").expect(&live);
    assert!(live.find("uridecodebin").is_some_and(|u| u < paced), "{live}");
    assert!(live.contains("caps=\"video/x-raw;video/x-h264;"), "{live}");
    // Paced once: the sink takes each frame as it comes, dropping what
    // the model has no time for.
    assert!(live.ends_with("drop=true sync=false emit-signals=false"), "{live}");

    let lossless = launch_string(&source, &CameraOptions { realtime: false, ..CameraOptions::default() });
    assert!(!lossless.contains("identity") && !lossless.contains("caps=\""), "{lossless}");
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
    set_up_decoders(&pipeline, source, options);
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
    let dir = std::env::temp_dir().join(format!("vigil-camera-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let clip = dir.join("clip.mp4");
    crate::init().expect("GStreamer");
    let make = gst::parse::launch(&format!(
        "videotestsrc num-buffers=10 ! video/x-raw,width=160,height=120,framerate=10/1 ! x264enc ! mp4mux ! filesink location={}",
        clip.display()
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
        "clip not made: {end:?}"
    );

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
    let _ = std::fs::remove_dir_all(&dir);
}
