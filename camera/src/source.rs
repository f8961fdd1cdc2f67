use std::fmt;
use std::path::{Path, PathBuf};

use url::Url;

use crate::{CameraError, CameraOptions, RtspTransport};

/// The name of the `uridecodebin` of a file played in real time.
pub(crate) const PACED_SOURCE: &str = "vigil_paced";

/// Where a camera's frames come from, parsed from the `source` string of a
/// camera in the config.
///
/// | source | example |
/// |---|---|
/// | test pattern | `test://ball?width=640&height=480&fps=15` |
/// | video file | `file:///data/line3.mp4`, `file:clips/demo.mp4` (relative to the config) |
/// | RTSP / RTSPS camera | `rtsp://user:pass@10.0.0.7:554/stream1` |
/// | HTTP MJPEG camera | `http://10.0.0.8/video.mjpg` |
/// | USB / V4L2 camera | `v4l2:///dev/video0` |
/// | anything else | `launch:aravissrc camera-name=X ! videoconvert` (a gst-launch pipeline that ends in raw video) |
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    Test { pattern: String, width: u32, height: u32, fps: u32 },
    File { path: PathBuf },
    Rtsp { url: Url },
    Http { url: Url },
    V4l2 { device: PathBuf, mode: V4l2Mode },
    Launch { pipeline: String },
}

/// What to ask a V4L2 camera for (`v4l2:///dev/video0?format=mjpeg&width=1280&height=720&fps=30`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct V4l2Mode {
    /// `mjpeg`, `yuyv`, `nv12` or `h264`; unset lets GStreamer negotiate.
    pub format: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
}

const V4L2_FORMATS: &[&str] = &["mjpeg", "yuyv", "nv12", "h264"];

/// videotestsrc's pattern nicks (GStreamer 1.22).
const TEST_PATTERNS: &[&str] = &[
    "smpte",
    "snow",
    "black",
    "white",
    "red",
    "green",
    "blue",
    "checkers-1",
    "checkers-2",
    "checkers-4",
    "checkers-8",
    "circular",
    "blink",
    "smpte75",
    "zone-plate",
    "gamut",
    "chroma-zone-plate",
    "solid-color",
    "ball",
    "smpte100",
    "bar",
    "pinwheel",
    "spokes",
    "gradient",
    "colors",
    "smpte-rp-219",
];

const SCHEMES: &str = "test://, file:, rtsp://, rtsps://, http://, https://, v4l2://, launch:";

impl Source {
    /// Parses a source string. Relative file paths resolve against `base_dir`
    /// (the directory of the config file).
    pub fn parse(s: &str, base_dir: &Path) -> Result<Source, CameraError> {
        let invalid = |why: String| CameraError::InvalidSource(why);
        let s = s.trim();
        if let Some(pipeline) = s.strip_prefix("launch:") {
            let pipeline = pipeline.trim();
            if pipeline.is_empty() {
                return Err(invalid("`launch:` needs a GStreamer pipeline after it".into()));
            }
            return Ok(Source::Launch { pipeline: pipeline.to_owned() });
        }
        if let Some(rest) = s.strip_prefix("file:") {
            if rest.starts_with("//") {
                let url =
                    Url::parse(s).map_err(|e| invalid(format!("`{s}` is not a valid file URI: {e}")))?;
                let path =
                    url.to_file_path().map_err(|()| invalid(format!("`{s}` is not a local file URI")))?;
                return Ok(Source::File { path });
            }
            if rest.is_empty() {
                return Err(invalid("`file:` needs a path after it".into()));
            }
            return Ok(Source::File { path: base_dir.join(rest) });
        }
        let Some((scheme, _)) = s.split_once("://") else {
            return Err(invalid(format!("`{s}` has no scheme; start it with one of {SCHEMES}")));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "test" => parse_test(s),
            "rtsp" | "rtsps" | "rtspt" => {
                let url = Url::parse(s)
                    .map_err(|e| invalid(format!("`{}` is not a valid RTSP URL: {e}", redact_str(s))))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(invalid(format!("`{}` has no host", redact_url(&url))));
                }
                Ok(Source::Rtsp { url })
            }
            "http" | "https" => {
                let url = Url::parse(s)
                    .map_err(|e| invalid(format!("`{}` is not a valid URL: {e}", redact_str(s))))?;
                Ok(Source::Http { url })
            }
            "v4l2" => {
                let rest = &s["v4l2://".len()..];
                let (device, query) = rest.split_once('?').unwrap_or((rest, ""));
                if !device.starts_with('/') {
                    return Err(invalid(format!("`{s}` needs a device path, e.g. v4l2:///dev/video0")));
                }
                let mut mode = V4l2Mode::default();
                for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                    let num = || {
                        v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                            invalid(format!("v4l2 option `{k}={v}` must be a positive whole number"))
                        })
                    };
                    match k.as_ref() {
                        "width" => mode.width = Some(num()?),
                        "height" => mode.height = Some(num()?),
                        "fps" => mode.fps = Some(num()?),
                        "format" if V4L2_FORMATS.contains(&v.as_ref()) => mode.format = Some(v.into_owned()),
                        "format" => {
                            return Err(invalid(format!(
                                "v4l2 format `{v}`: use one of {}",
                                V4L2_FORMATS.join(", ")
                            )));
                        }
                        other => {
                            return Err(invalid(format!(
                                "unknown v4l2 option `{other}`; use format, width, height, fps"
                            )));
                        }
                    }
                }
                Ok(Source::V4l2 { device: PathBuf::from(device), mode })
            }
            other => Err(invalid(format!("unknown source scheme `{other}://`; use one of {SCHEMES}"))),
        }
    }

    /// Whether the source paces itself in real time. Files are played back at
    /// their native rate (appsink syncs to the clock) so they behave like a camera.
    pub(crate) fn is_file(&self) -> bool {
        matches!(self, Source::File { .. })
    }

    /// `text` without the source's passwords: pipeline errors can echo a
    /// URI, and they go to logs and health. (`redact` rewrites a whole source
    /// string; its fallback for text that is not a URL, everything between
    /// the first `://` and the last `@`, is too blunt for a message.)
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for pw in self.passwords() {
            text = text.replace(&pw, "***");
        }
        text
    }

    /// The passwords in the source's URLs, a launch line's included.
    fn passwords(&self) -> Vec<String> {
        let urls: Vec<Url> = match self {
            Source::Rtsp { url } | Source::Http { url } => vec![url.clone()],
            // A launch line may hold `location=rtsp://user:pass@…` anywhere.
            Source::Launch { pipeline } => pipeline
                .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '='))
                .filter(|t| t.contains("://"))
                .filter_map(|t| Url::parse(t).ok())
                .collect(),
            _ => Vec::new(),
        };
        urls.iter().filter_map(Url::password).filter(|p| !p.is_empty()).map(str::to_owned).collect()
    }

    /// Whether it could ever work: a missing file or device is reported
    /// before anything starts.
    pub fn check_exists(&self) -> Result<(), CameraError> {
        match self {
            Source::File { path } if !path.is_file() => {
                Err(CameraError::InvalidSource(format!("video file {} does not exist", path.display())))
            }
            Source::V4l2 { device, .. } if !device.exists() => Err(CameraError::InvalidSource(format!(
                "video device {} does not exist (is the camera plugged in?)",
                device.display()
            ))),
            _ => Ok(()),
        }
    }

    /// A file played in real time, as a camera would send it: the
    /// compressed frames are released at their time and decoded then (the
    /// decoder's own latency counts, as it does live), instead of decoded
    /// ahead and held until due, which put the decoding of every next frame
    /// beside the model's run on the one before (a run 8-15 % slower at the
    /// median at 10 fps, p99 ~10 ms higher, on two cores). Where the
    /// compressed stream stops is `PACED_SOURCE`'s `caps`, set once the
    /// pipeline is built (`codecs::paced_file_caps`: every codec a decoder
    /// here takes, read from the registry, too long and too quote-laden for
    /// a launch string). Without it `uridecodebin` decodes everything
    /// itself and the frames are paced decoded.
    pub(crate) fn paced_file_head(&self) -> Option<String> {
        let Source::File { path } = self else { return None };
        let uri = Url::from_file_path(path).map(String::from).unwrap_or_default();
        Some(format!(
            "uridecodebin name={PACED_SOURCE} uri=\"{uri}\" expose-all-streams=false \
             ! identity sync=true ! decodebin"
        ))
    }

    /// The part of the gst-launch pipeline that produces raw video.
    pub(crate) fn launch_head(&self, options: &CameraOptions) -> String {
        match self {
            Source::Test { pattern, width, height, fps } => format!(
                "videotestsrc is-live=true pattern={pattern} ! video/x-raw,width={width},height={height},framerate={fps}/1"
            ),
            Source::File { path } => {
                let uri = Url::from_file_path(path).map(String::from).unwrap_or_default();
                format!("uridecodebin uri=\"{uri}\" expose-all-streams=false")
            }
            Source::Rtsp { url } => {
                let protocols = match options.rtsp_transport {
                    RtspTransport::Tcp => "tcp",
                    RtspTransport::Udp => "udp",
                    RtspTransport::Auto => "tcp+udp-mcast+udp",
                };
                // Only the video stream: cameras often send audio too.
                format!(
                    "rtspsrc location=\"{url}\" protocols={protocols} latency={} ! application/x-rtp,media=video ! decodebin",
                    options.latency_ms
                )
            }
            Source::Http { url } => {
                // MJPEG over HTTP (multipart/x-mixed-replace) is found by typefinding.
                format!("souphttpsrc location=\"{url}\" is-live=true do-timestamp=true ! decodebin")
            }
            Source::V4l2 { device, mode } => {
                let mut fields = String::new();
                for (k, v) in [("width", mode.width), ("height", mode.height)] {
                    if let Some(v) = v {
                        fields += &format!(",{k}={v}");
                    }
                }
                if let Some(f) = mode.fps {
                    fields += &format!(",framerate={f}/1");
                }
                let dev = device.display();
                match mode.format.as_deref() {
                    Some("mjpeg") => format!("v4l2src device=\"{dev}\" ! image/jpeg{fields} ! jpegdec"),
                    Some("yuyv") => format!("v4l2src device=\"{dev}\" ! video/x-raw,format=YUY2{fields}"),
                    Some("nv12") => format!("v4l2src device=\"{dev}\" ! video/x-raw,format=NV12{fields}"),
                    Some("h264") => {
                        format!("v4l2src device=\"{dev}\" ! video/x-h264{fields} ! h264parse ! decodebin")
                    }
                    _ if fields.is_empty() => format!("v4l2src device=\"{dev}\" ! decodebin"),
                    // Size or rate without a format: raw or MJPEG, whichever the camera offers.
                    _ => format!(
                        "v4l2src device=\"{dev}\" ! video/x-raw{fields};image/jpeg{fields} ! decodebin"
                    ),
                }
            }
            Source::Launch { pipeline } => pipeline.clone(),
        }
    }
}

fn parse_test(s: &str) -> Result<Source, CameraError> {
    let invalid = |why: String| CameraError::InvalidSource(why);
    let url = Url::parse(s).map_err(|e| invalid(format!("`{s}` is not a valid test source: {e}")))?;
    let pattern = url.host_str().unwrap_or("").to_owned();
    if !TEST_PATTERNS.contains(&pattern.as_str()) {
        return Err(invalid(format!(
            "unknown test pattern `{pattern}`; use one of {}",
            TEST_PATTERNS.join(", ")
        )));
    }
    let (mut width, mut height, mut fps) = (640u32, 480u32, 15u32);
    for (k, v) in url.query_pairs() {
        let n: u32 = v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid(format!("test source `{k}={v}` must be a positive whole number")))?;
        match k.as_ref() {
            "width" => width = n,
            "height" => height = n,
            "fps" => fps = n,
            other => {
                return Err(invalid(format!("unknown test source option `{other}`; use width, height, fps")));
            }
        }
    }
    Ok(Source::Test { pattern, width, height, fps })
}

fn redact_url(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.to_string()
}

/// A source string with any password replaced by `***`, for logs and health
/// (also for strings that do not parse).
pub fn redact(s: &str) -> String {
    match Url::parse(s) {
        Ok(u) if u.password().is_some() => redact_url(&u),
        // A launch line may hold `location=rtsp://user:pass@…` anywhere.
        Ok(u) if u.scheme() == "launch" => redact_str(s),
        Ok(_) => s.to_owned(),
        Err(_) => redact_str(s),
    }
}

fn redact_str(s: &str) -> String {
    // Unparseable, so redact by hand: anything between "://" and "@".
    match (s.find("://"), s.rfind('@')) {
        (Some(a), Some(b)) if b > a => format!("{}***{}", &s[..a + 3], &s[b..]),
        _ => s.to_owned(),
    }
}

/// Credentials are never shown: passwords print as `***`.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Test { pattern, width, height, fps } => {
                write!(f, "test://{pattern}?width={width}&height={height}&fps={fps}")
            }
            Source::File { path } => write!(f, "file://{}", path.display()),
            Source::Rtsp { url } | Source::Http { url } => f.write_str(&redact_url(url)),
            Source::V4l2 { device, mode } => {
                write!(f, "v4l2://{}", device.display())?;
                let mut sep = '?';
                let opts = [
                    ("format", mode.format.clone()),
                    ("width", mode.width.map(|v| v.to_string())),
                    ("height", mode.height.map(|v| v.to_string())),
                    ("fps", mode.fps.map(|v| v.to_string())),
                ];
                for (k, v) in opts {
                    if let Some(v) = v {
                        write!(f, "{sep}{k}={v}")?;
                        sep = '&';
                    }
                }
                Ok(())
            }
            Source::Launch { pipeline } => write!(f, "launch:{pipeline}"),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Source, String> {
        Source::parse(s, Path::new("/etc/vigil")).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            parse("test://ball?fps=10&width=320&height=240"),
            Ok(Source::Test { pattern: "ball".into(), width: 320, height: 240, fps: 10 })
        );
        assert_eq!(parse("file:clips/a.mp4"), Ok(Source::File { path: "/etc/vigil/clips/a.mp4".into() }));
        assert_eq!(parse("file:///data/a.mp4"), Ok(Source::File { path: "/data/a.mp4".into() }));
        assert!(matches!(parse("rtsp://cam.local:554/s1"), Ok(Source::Rtsp { .. })));
        assert!(matches!(parse("http://cam.local/video.mjpg"), Ok(Source::Http { .. })));
        assert_eq!(
            parse("v4l2:///dev/video2"),
            Ok(Source::V4l2 { device: "/dev/video2".into(), mode: V4l2Mode::default() })
        );
        let cam = parse("v4l2:///dev/video0?format=mjpeg&width=1280&height=720&fps=30").expect("valid");
        assert_eq!(cam.to_string(), "v4l2:///dev/video0?format=mjpeg&width=1280&height=720&fps=30");
        let head = cam.launch_head(&CameraOptions::default());
        assert_eq!(
            head,
            "v4l2src device=\"/dev/video0\" ! image/jpeg,width=1280,height=720,framerate=30/1 ! jpegdec"
        );
        assert!(parse("v4l2:///dev/video0?format=bayer").unwrap_err().contains("use one of mjpeg"));
        assert_eq!(
            parse("launch: videotestsrc ! videoconvert"),
            Ok(Source::Launch { pipeline: "videotestsrc ! videoconvert".into() })
        );
    }

    #[test]
    fn rejects_unknown_schemes_and_bad_options_with_the_fix() {
        let e = parse("ftp://x/y").unwrap_err();
        assert!(e.contains("unknown source scheme `ftp://`") && e.contains("rtsp://"), "{e}");
        let e = parse("/dev/video0").unwrap_err();
        assert!(e.contains("has no scheme"), "{e}");
        let e = parse("test://nope").unwrap_err();
        assert!(e.contains("unknown test pattern `nope`"), "{e}");
        let e = parse("test://ball?fps=0").unwrap_err();
        assert!(e.contains("fps=0"), "{e}");
        let e = parse("rtsp://").unwrap_err();
        assert!(e.contains("RTSP") || e.contains("no host"), "{e}");
        assert!(parse("launch:").is_err());
    }

    #[test]
    fn rtsp_uses_the_configured_transport_and_latency_and_only_video() {
        let cam = parse("rtsp://10.0.0.7/s1").expect("valid");
        let opts =
            CameraOptions { rtsp_transport: RtspTransport::Tcp, latency_ms: 50, ..CameraOptions::default() };
        let head = cam.launch_head(&opts);
        assert!(head.contains("protocols=tcp latency=50"), "{head}");
        assert!(head.contains("application/x-rtp,media=video"), "{head}");
    }

    #[test]
    fn never_shows_passwords() {
        let s = parse("rtsp://admin:hunter2@10.0.0.7/stream").expect("valid");
        assert_eq!(s.to_string(), "rtsp://admin:***@10.0.0.7/stream");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(redact_str("rtsp://a:b@[bad"), "rtsp://***@[bad");
        let launch =
            "launch:rtspsrc location=rtsp://admin:hunter2@cam/s ! decodebin ! videoconvert ! appsink";
        assert!(!redact(launch).contains("hunter2"), "{}", redact(launch));
        assert_eq!(redact("launch:videotestsrc ! appsink"), "launch:videotestsrc ! appsink");
        assert_eq!(parse(launch).expect("valid").passwords(), ["hunter2"]);
        assert_eq!(s.passwords(), ["hunter2"]);
        assert!(parse("rtsp://admin@cam/s").expect("valid").passwords().is_empty());
    }
}
