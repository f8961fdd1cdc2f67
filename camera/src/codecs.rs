//! Which video this machine's GStreamer can decode, and what to tell the
//! user when a camera sends something it cannot.

use gstreamer as gst;
use gstreamer::prelude::*;

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

const LIBAV: &str = "gstreamer1.0-libav";
const BASE: &str = "gstreamer1.0-plugins-base";
const GOOD: &str = "gstreamer1.0-plugins-good";
const BAD: &str = "gstreamer1.0-plugins-bad";
const UGLY: &str = "gstreamer1.0-plugins-ugly";

/// The Debian 12 package with a decoder for each media type, checked with
/// `dpkg -S` on the plug-in that holds the decoder (libgstlibav.so,
/// libgsttheora.so, libgstvpx.so, libgstjpeg.so, libgstaom.so, ...).
const DECODER_PACKAGES: &[(&str, &str)] = &[
    ("video/x-h264", LIBAV),
    ("video/x-h265", LIBAV),
    ("video/mpeg", LIBAV),
    ("video/x-msmpeg", LIBAV),
    ("video/x-divx", LIBAV),
    ("video/x-xvid", LIBAV),
    ("video/x-wmv", LIBAV),
    ("video/x-h263", LIBAV),
    ("video/x-flash-video", LIBAV),
    ("video/x-prores", LIBAV),
    ("video/x-dnxhd", LIBAV),
    ("video/x-huffyuv", LIBAV),
    ("video/x-cinepak", LIBAV),
    ("video/x-svq", LIBAV),
    ("video/x-indeo", LIBAV),
    ("video/x-theora", BASE),
    ("video/x-vp8", GOOD),
    ("video/x-vp9", GOOD),
    ("image/jpeg", GOOD),
    ("image/png", GOOD),
    ("video/x-dv", GOOD),
    ("video/x-av1", BAD),
    ("image/webp", BAD),
    ("image/jp2", BAD),
    ("image/x-j2c", BAD),
];

/// Elements a `launch:` line or a built-in pipeline commonly names, by the
/// package that ships them (checked the same way); `avdec_*` and the other
/// libav wrappers by prefix.
const ELEMENT_PACKAGES: &[(&str, &str)] = &[
    ("rtspsrc", GOOD),
    ("souphttpsrc", GOOD),
    ("v4l2src", GOOD),
    ("jpegdec", GOOD),
    ("vp8dec", GOOD),
    ("vp9dec", GOOD),
    ("rtph264depay", GOOD),
    ("rtph265depay", GOOD),
    ("rtpjpegdepay", GOOD),
    ("qtdemux", GOOD),
    ("matroskademux", GOOD),
    ("avidemux", GOOD),
    ("theoradec", BASE),
    ("oggdemux", BASE),
    ("uridecodebin", BASE),
    ("decodebin", BASE),
    ("videoconvert", BASE),
    ("videoscale", BASE),
    ("videorate", BASE),
    ("h264parse", BAD),
    ("h265parse", BAD),
    ("av1dec", BAD),
    ("x264enc", UGLY),
];

/// The Debian package that ships GStreamer element `name`, where known.
pub(crate) fn element_package(name: &str) -> Option<&'static str> {
    if ["avdec_", "avenc_", "avdemux_", "avmux_"].iter().any(|p| name.starts_with(p)) {
        return Some(LIBAV);
    }
    ELEMENT_PACKAGES.iter().find(|(e, _)| *e == name).map(|(_, p)| *p)
}

/// The end of the message for a launch line naming an element that is not
/// installed.
pub(crate) fn missing_element(name: &str) -> String {
    MissingPlugin { kind: "element".into(), detail: name.into(), media_type: None, description: None }
        .sentence()
}

fn decoder_package(media_type: &str) -> Option<&'static str> {
    DECODER_PACKAGES.iter().find(|(m, _)| *m == media_type).map(|(_, p)| *p)
}

/// Fields that say which codec a stream is in; the rest (size, rate,
/// codec_data blobs, ...) only make the message long.
const CODEC_FIELDS: &[&str] = &[
    "mpegversion",
    "msmpegversion",
    "divxversion",
    "wmvversion",
    "variant",
    "format",
    "profile",
    "systemstream",
];

/// A plug-in GStreamer looked for and did not find, from its
/// `missing-plugin` element message (what `gst_missing_plugin_message_*`
/// in gst-pbutils reads; its fields are plain, so no extra crate).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MissingPlugin {
    /// `decoder`, `encoder`, `element`, `urisource` or `urisink`.
    kind: String,
    /// The stream's caps (decoders, encoders), the element's name or the
    /// URI protocol.
    detail: String,
    /// The stream's media type, for decoders and encoders.
    media_type: Option<String>,
    /// GStreamer's own words for it, e.g. "Microsoft MPEG-4 4.3 decoder".
    description: Option<String>,
}

impl MissingPlugin {
    pub(crate) fn from_message(msg: &gst::Message) -> Option<MissingPlugin> {
        let gst::MessageView::Element(element) = msg.view() else { return None };
        let s = element.structure().filter(|s| s.name() == "missing-plugin")?;
        let kind = s.get::<String>("type").ok()?;
        let (detail, media_type) = match s.get::<gst::Caps>("detail") {
            Ok(caps) => {
                let media_type = caps.structure(0).map(|s| s.name().to_string());
                (caps.structure(0).map(codec_summary).unwrap_or_default(), media_type)
            }
            Err(_) => (s.get::<String>("detail").ok()?, None),
        };
        let description = s.get::<String>("name").ok();
        Some(MissingPlugin { kind, detail, media_type, description })
    }

    /// Whether it stops the video itself (an audio decoder does not).
    fn is_video(&self) -> bool {
        match &self.media_type {
            // RTP video (a camera's stream before its depayloader) counts too.
            Some(m) => ["video/", "image/", "application/x-rtp"].iter().any(|p| m.starts_with(p)),
            None => true,
        }
    }

    fn package(&self) -> Option<&'static str> {
        match self.kind.as_str() {
            "decoder" => self.media_type.as_deref().and_then(decoder_package),
            "element" => element_package(&self.detail),
            "urisource" => match self.detail.as_str() {
                "rtsp" | "rtsps" | "rtspt" | "http" | "https" => Some(GOOD),
                _ => None,
            },
            _ => None,
        }
    }

    fn sentence(&self) -> String {
        let what = match self.kind.as_str() {
            "decoder" => {
                let codec = self
                    .description
                    .as_deref()
                    .map(|d| d.trim_end_matches(" decoder"))
                    .filter(|d| Some(*d) != self.media_type.as_deref());
                match codec {
                    Some(codec) => format!("no decoder for {codec} ({}) is installed", self.detail),
                    None => format!("no decoder for {} is installed", self.detail),
                }
            }
            "element" => format!("GStreamer element `{}` is not installed", self.detail),
            "urisource" => format!("no GStreamer source for {}:// addresses is installed", self.detail),
            _ => match &self.description {
                Some(d) => format!("GStreamer is missing a plug-in: {d} ({})", self.detail),
                None => format!("GStreamer is missing a {} plug-in for {}", self.kind, self.detail),
            },
        };
        match self.package() {
            Some(package) => format!("{what}: install the Debian package {package}, then restart Vigil"),
            None if self.kind == "decoder" => format!(
                "{what}, and no Debian package is known to provide one: use a common codec (H.264, for \
                 one: re-encode the file or change the camera's setting) or install a GStreamer plug-in \
                 that decodes it, then restart Vigil"
            ),
            None => format!(
                "{what}, and no Debian package is known to provide it: install the GStreamer plug-in \
                 that does, then restart Vigil"
            ),
        }
    }
}

/// One line for `last_error` when a pipeline failed for want of a plug-in:
/// what is missing and what to install. `debug` is the error's debug text,
/// used when no `missing-plugin` message came (its last line names the codec).
pub(crate) fn explain_missing(missing: &[MissingPlugin], debug: Option<&str>) -> String {
    let video = missing.iter().any(MissingPlugin::is_video);
    let mut relevant: Vec<&MissingPlugin> = Vec::new();
    for m in missing.iter().filter(|m| m.is_video() || !video) {
        if !relevant.contains(&m) {
            relevant.push(m);
        }
    }
    if !relevant.is_empty() {
        return relevant.iter().map(|m| m.sentence()).collect::<Vec<_>>().join("; ");
    }
    let line = debug
        .into_iter()
        .flat_map(str::lines)
        .map(str::trim)
        .rfind(|l| l.starts_with("Missing "))
        .unwrap_or("no further detail");
    let package = DECODER_PACKAGES.iter().find(|(m, _)| line.contains(&format!("({m}"))).map(|(_, p)| *p);
    match package {
        Some(package) => format!(
            "GStreamer is missing a plug-in ({line}): install the Debian package {package}, then restart Vigil"
        ),
        None => format!("GStreamer is missing a plug-in ({line}): install it, then restart Vigil"),
    }
}

/// `video/x-msmpeg, msmpegversion=43`: the media type and the fields that
/// tell codecs apart; an AVI FOURCC no decoder knows is spelt out.
fn codec_summary(s: &gst::StructureRef) -> String {
    let mut out = s.name().to_string();
    for (field, value) in s.iter() {
        if field == "fourcc"
            && let Ok(code) = value.get::<i32>()
        {
            let bytes = code.to_le_bytes();
            if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                out += &format!(", FOURCC {}", String::from_utf8_lossy(&bytes).trim_end());
                continue;
            }
        }
        if CODEC_FIELDS.contains(&field.as_str())
            && let Ok(text) = value.serialize()
        {
            out += &format!(", {field}={text}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(
        kind: &str,
        detail: &str,
        media_type: Option<&str>,
        description: Option<&str>,
    ) -> MissingPlugin {
        MissingPlugin {
            kind: kind.into(),
            detail: detail.into(),
            media_type: media_type.map(Into::into),
            description: description.map(Into::into),
        }
    }

    #[test]
    fn a_missing_decoder_names_the_codec_and_the_package_that_has_it() {
        let ms = missing(
            "decoder",
            "video/x-msmpeg, msmpegversion=43",
            Some("video/x-msmpeg"),
            Some("Microsoft MPEG-4 4.3 decoder"),
        );
        assert_eq!(
            explain_missing(&[ms], None),
            "no decoder for Microsoft MPEG-4 4.3 (video/x-msmpeg, msmpegversion=43) is installed: \
             install the Debian package gstreamer1.0-libav, then restart Vigil"
        );
        let theora = missing("decoder", "video/x-theora", Some("video/x-theora"), Some("Theora decoder"));
        assert!(explain_missing(&[theora], None).contains("gstreamer1.0-plugins-base"));
        let av1 = missing("decoder", "video/x-av1", Some("video/x-av1"), None);
        assert!(explain_missing(&[av1], None).contains("gstreamer1.0-plugins-bad"));
    }

    #[test]
    fn an_audio_decoder_missing_beside_the_video_one_is_left_out() {
        let audio = missing("decoder", "audio/x-wma", Some("audio/x-wma"), Some("WMA decoder"));
        let vp9 = missing("decoder", "video/x-vp9", Some("video/x-vp9"), Some("VP9 decoder"));
        let text = explain_missing(&[audio, vp9.clone(), vp9], None);
        assert_eq!(
            text,
            "no decoder for VP9 (video/x-vp9) is installed: install the Debian package \
             gstreamer1.0-plugins-good, then restart Vigil"
        );
    }

    #[test]
    fn missing_elements_and_protocols_name_their_package_where_known() {
        let av = missing("element", "avdec_h265", None, None);
        assert!(
            explain_missing(&[av], None)
                .contains("`avdec_h265` is not installed: install the Debian package gstreamer1.0-libav")
        );
        let odd = missing("element", "aravissrc", None, None);
        assert!(explain_missing(&[odd], None).contains("no Debian package is known to provide it"));
        let rtsp = missing("urisource", "rtsp", None, None);
        assert!(explain_missing(&[rtsp], None).contains("rtsp:// addresses"));
        assert_eq!(element_package("x264enc"), Some(UGLY));
    }

    #[test]
    fn without_a_message_the_error_debug_text_names_the_codec() {
        let debug = "../gst/playback/gsturidecodebin.c(1049): no_more_pads_full ():\nno suitable plugins found:\n\
                     Missing decoder: Microsoft MPEG-4 4.3 (video/x-msmpeg, msmpegversion=(int)43)\n";
        let text = explain_missing(&[], Some(debug));
        assert!(text.contains("Missing decoder: Microsoft MPEG-4 4.3 (video/x-msmpeg"), "{text}");
        assert!(text.contains("gstreamer1.0-libav"), "{text}");
    }

    #[test]
    fn codec_summaries_keep_the_codec_fields_and_spell_out_a_fourcc() {
        crate::init().expect("GStreamer");
        let caps: gst::Caps =
            "video/x-avi-unknown, fourcc=(int)810305366, width=(int)160".parse().expect("caps");
        assert_eq!(codec_summary(caps.structure(0).expect("one")), "video/x-avi-unknown, FOURCC VGL0");
        let caps: gst::Caps = "video/mpeg, mpegversion=(int)4, systemstream=(boolean)false, \
                               codec_data=(buffer)0123, framerate=(fraction)10/1"
            .parse()
            .expect("caps");
        assert_eq!(
            codec_summary(caps.structure(0).expect("one")),
            "video/mpeg, mpegversion=4, systemstream=false"
        );
    }

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
