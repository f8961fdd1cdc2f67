//! Which video this machine's GStreamer can decode.

use gstreamer as gst;

/// What `uridecodebin` hands over undecoded for a file played in real time
/// (see `Source::paced_file_head`): raw video, and every compressed video or
/// image stream that an installed decoder takes as it is.
///
/// Read from the plug-in registry (the sink templates of every video and
/// image decoder decodebin would use) rather than kept as a list of codecs:
/// the stream then stops exactly where decodebin would plug a decoder, for
/// any codec installed here, parsers and demuxers already behind it. A codec
/// no decoder takes matches nothing, so `uridecodebin` reports the missing
/// plug-in itself. The other ways were worse: `parsebin` exposes every stream
/// (audio, subtitles) and leaves picking the video pad to code; a
/// `GstDiscoverer` pass opens and prerolls the whole file once more before
/// every start and reconnect; `autoplug-select` would need decodebin's
/// private `GstAutoplugSelectResult` enum, which gstreamer-rs does not bind.
///
/// Raw video is `video/x-raw(ANY)`, not `video/x-raw`: libav's decoders
/// announce interlaced output as a caps feature, and with the plain caps
/// decodebin discards them as "not final" and reports a missing plug-in for a
/// codec it can decode (how `vtest.avi` looped on reconnects).
pub(crate) fn paced_file_caps() -> gst::Caps {
    let mut caps = gst::Caps::builder("video/x-raw").any_features().build();
    let decoders = gst::ElementFactory::factories_with_type(
        gst::ElementFactoryType::DECODER
            | gst::ElementFactoryType::MEDIA_VIDEO
            | gst::ElementFactoryType::MEDIA_IMAGE,
        // decodebin's own floor: it never plugs a factory ranked below this.
        gst::Rank::MARGINAL,
    );
    for factory in decoders {
        for template in factory.static_pad_templates() {
            if template.direction() != gst::PadDirection::Sink {
                continue;
            }
            let template = template.caps();
            if template.is_any() {
                // Would stop at the container itself, before the demuxer.
                continue;
            }
            for (s, features) in template.iter_with_features() {
                let name = s.name().as_str();
                let video = name.starts_with("video/") || name.starts_with("image/");
                if video && name != "video/x-raw" {
                    caps.merge_structure_full(s.to_owned(), Some(features.to_owned()));
                }
            }
        }
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_time_files_stop_at_every_installed_decoders_input_and_at_raw_video() {
        crate::init().expect("GStreamer");
        let caps = paced_file_caps();
        let stops = |c: &str| c.parse::<gst::Caps>().expect("caps").is_subset(&caps);
        for decodable in [
            "video/x-raw, format=(string)I420",
            "video/x-h264, stream-format=(string)avc, alignment=(string)au",
            "video/x-msmpeg, msmpegversion=(int)43",
            "video/x-divx, divxversion=(int)3",
            "video/x-theora",
            "image/jpeg",
            "video/mpeg, mpegversion=(int)4, systemstream=(boolean)false",
        ] {
            assert!(stops(decodable), "{decodable} not in {caps}");
        }
        // Containers, audio and codecs nothing here decodes go on to be
        // demuxed or reported missing.
        for not_yet in [
            "video/x-msvideo",
            "video/quicktime",
            "video/mpeg, mpegversion=(int)2, systemstream=(boolean)true",
            "audio/mpeg",
            "video/x-avi-unknown",
        ] {
            assert!(!stops(not_yet), "{not_yet} in {caps}");
        }
    }
}
