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

    /// `text` without the source's secrets: pipeline errors can echo a
    /// URI or a property, and they go to logs and health. Secrets in their
    /// usual places are found by `redact`; the source's own secret values
    /// (also percent-decoded) are then hidden wherever else they appear.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = redact(text);
        for secret in self.passwords() {
            text = text.replace(&secret, "***");
        }
        text
    }

    /// The secret values in the source (URL passwords, secret query
    /// parameters and properties), longest first, each also decoded where
    /// it was percent-encoded. Values under 3 characters are left out:
    /// replacing every `a` in an error message would hide the message, and
    /// such a value is still hidden where `redact` finds it.
    fn passwords(&self) -> Vec<String> {
        let raw = match self {
            Source::Rtsp { url } | Source::Http { url } => url.as_str(),
            Source::Launch { pipeline } => pipeline.as_str(),
            _ => return Vec::new(),
        };
        let mut found: Vec<String> = Vec::new();
        for r in secret_spans(raw) {
            let v = &raw[r];
            let decoded = url::form_urlencoded::parse(format!("x={v}").as_bytes())
                .next()
                .map(|(_, d)| d.into_owned())
                .unwrap_or_default();
            let plain = percent_decode(v);
            for s in [v.to_owned(), decoded, plain] {
                if s.len() >= 3 && !found.contains(&s) {
                    found.push(s);
                }
            }
        }
        found.sort_by_key(|s| std::cmp::Reverse(s.len()));
        found
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
    redact(url.as_str())
}

/// Query parameters whose values are secrets (compared without case).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "access_token",
    "key",
    "secret",
    "auth",
    "apikey",
    "api_key",
    "signature",
    "sig",
    "passphrase",
];

/// gst-launch properties whose values are secrets: rtspsrc and souphttpsrc
/// (`user-id`, `user-pw`, `proxy-id`, `proxy-pw`), srtsrc (`passphrase`).
/// GStreamer accepts `_` for `-` in property names.
const SECRET_PROPERTIES: &[&str] = &["user-id", "user-pw", "proxy-id", "proxy-pw", "passphrase"];

/// Where the secrets are in `s`, as byte ranges of their values: the
/// password of every `scheme://user:password@` (any number of URLs, in a
/// launch line or an error message), the value of every secret query
/// parameter, and the value of every secret gst property.
fn secret_spans(s: &str) -> Vec<std::ops::Range<usize>> {
    let b = s.as_bytes();
    let ends_value = |c: u8| c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'&' | b'#');
    let value_end = |from: usize| b[from..].iter().position(|&c| ends_value(c)).map_or(b.len(), |n| from + n);
    let mut spans = Vec::new();
    // `://user:password@host`: the authority ends at the first `/`, `?`,
    // `#`, quote or space; its last `@` ends the user info.
    let mut at = 0;
    while let Some(n) = s[at..].find("://") {
        let start = at + n + 3;
        let end = b[start..]
            .iter()
            .position(|&c| c.is_ascii_whitespace() || matches!(c, b'/' | b'?' | b'#' | b'"' | b'\''))
            .map_or(b.len(), |n| start + n);
        if let Some(amp) = s[start..end].rfind('@')
            && let Some(colon) = s[start..start + amp].find(':')
            && colon + 1 < amp
        {
            spans.push(start + colon + 1..start + amp);
        }
        at = start;
    }
    // `?password=...`, `&token=...`; and ` user-pw=...` (quoted or not).
    for (i, &c) in b.iter().enumerate() {
        let after = i + 1;
        let query = matches!(c, b'?' | b'&' | b';');
        let property = c.is_ascii_whitespace() || c == b'"' || c == b'\'';
        if !(query || property) {
            continue;
        }
        let Some(eq) =
            b[after..].iter().position(|&c| !(c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')))
        else {
            continue;
        };
        let eq = after + eq;
        if eq == after || b[eq] != b'=' {
            continue;
        }
        let name = s[after..eq].to_ascii_lowercase();
        let secret = (query && SECRET_PARAMS.contains(&name.as_str()))
            || (property && SECRET_PROPERTIES.contains(&name.replace('_', "-").as_str()));
        if !secret {
            continue;
        }
        let v = eq + 1;
        let span = match b.get(v) {
            Some(&q @ (b'"' | b'\'')) if property => {
                let close = b[v + 1..].iter().position(|&c| c == q).map_or(b.len(), |n| v + 1 + n);
                v + 1..close
            }
            _ => v..value_end(v),
        };
        if !span.is_empty() {
            spans.push(span);
        }
    }
    spans.sort_by_key(|r| r.start);
    spans
}

/// A source string (or any text that may quote one: a launch line, a
/// GStreamer error) with every secret in it replaced by `***`: URL
/// passwords, secret query parameters (`password`, `token`, `key`, ...) and
/// secret gst properties (`user-pw`, `user-id`, `proxy-pw`, `passphrase`).
/// User names in URLs stay: they say which account, not how to use it.
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut done = 0;
    for r in secret_spans(s) {
        if r.start < done {
            // Overlaps one already hidden (a `?token=` inside a user info).
            if r.end > done {
                done = r.end;
            }
            continue;
        }
        out.push_str(&s[done..r.start]);
        out.push_str("***");
        done = r.end;
    }
    out.push_str(&s[done..]);
    out
}

fn redact_str(s: &str) -> String {
    redact(s)
}

/// `%xx` decoded (invalid sequences kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
            Source::Launch { pipeline } => write!(f, "launch:{}", redact(pipeline)),
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
        assert_eq!(redact_str("rtsp://a:b@[bad"), "rtsp://a:***@[bad");
        let launch =
            "launch:rtspsrc location=rtsp://admin:hunter2@cam/s ! decodebin ! videoconvert ! appsink";
        assert!(!redact(launch).contains("hunter2"), "{}", redact(launch));
        assert_eq!(redact("launch:videotestsrc ! appsink"), "launch:videotestsrc ! appsink");
        assert_eq!(parse(launch).expect("valid").passwords(), ["hunter2"]);
        assert_eq!(s.passwords(), ["hunter2"]);
        assert!(parse("rtsp://admin@cam/s").expect("valid").passwords().is_empty());
    }

    /// Every secret here is `S3cret<n>`: whatever `redact` leaves must not
    /// contain the marker, and what is not a secret must survive.
    #[test]
    fn hides_every_form_of_credential() {
        let cases = [
            ("rtsp://admin:S3cret1@10.0.0.7:554/s", "rtsp://admin:***@10.0.0.7:554/s"),
            ("https://u:S3cret1@h/x.mjpg?pwd=S3cret2", "https://u:***@h/x.mjpg?pwd=***"),
            ("rtmp://u:S3cret1@h/app", "rtmp://u:***@h/app"),
            ("srt://h:9000?mode=caller&passphrase=S3cret1", "srt://h:9000?mode=caller&passphrase=***"),
            ("http://h/v?user=a&Password=S3cret1&x=1", "http://h/v?user=a&Password=***&x=1"),
            ("http://h/v?TOKEN=S3cret1#frag", "http://h/v?TOKEN=***#frag"),
            ("rtsp://u:p@ss:S3cret1@h/s", "rtsp://u:***@h/s"),
            (
                "launch:rtspsrc location=rtsp://u:S3cret1@a/s user-id=S3cret2 user-pw=\"S3cret 3\" ! \
                 fakesink souphttpsrc location=\"http://u:S3cret4@b/v?access_token=S3cret5&apikey=S3cret6\" \
                 proxy-pw=S3cret7 ! fakesink srtsrc passphrase='S3cret8' uri=\"srt://c:1?key=S3cret9\"",
                "launch:rtspsrc location=rtsp://u:***@a/s user-id=*** user-pw=\"***\" ! \
                 fakesink souphttpsrc location=\"http://u:***@b/v?access_token=***&apikey=***\" \
                 proxy-pw=*** ! fakesink srtsrc passphrase='***' uri=\"srt://c:1?key=***\"",
            ),
            ("launch:souphttpsrc user_pw=S3cret1 ! fakesink", "launch:souphttpsrc user_pw=*** ! fakesink"),
        ];
        for (raw, want) in cases {
            assert_eq!(redact(raw), want, "{raw}");
        }
        for plain in [
            "launch:videotestsrc pattern=ball ! videoconvert",
            "rtsp://admin@10.0.0.7/s?channel=1&subtype=0",
            "test://ball?width=640&height=480&fps=15",
            "file:///data/key.mp4",
            "http://h/v?keyframe=1&passes=2",
        ] {
            assert_eq!(redact(plain), plain);
        }
    }

    #[test]
    fn shows_every_source_without_its_secrets() {
        for (raw, secrets) in [
            ("rtsp://u:S3cret1@10.0.0.7/s?token=S3cret2", &["S3cret1", "S3cret2"][..]),
            ("http://h/v.mjpg?password=S3cret1", &["S3cret1"][..]),
            (
                "launch:rtspsrc location=rtsp://u:S3cret1@a/s user-pw=S3cret2 ! decodebin ! videoconvert",
                &["S3cret1", "S3cret2"][..],
            ),
        ] {
            let s = parse(raw).expect("valid");
            assert!(!s.to_string().contains("S3cret"), "{s}");
            assert!(!format!("{s:?}").contains("S3cret"), "{s:?}");
            // An error that quotes a secret anywhere loses it.
            let err = format!("401 Unauthorized for {} at rtsp://x:S3cret9@h", secrets.join(" and "));
            assert!(!s.scrub(&err).contains("S3cret"), "{}", s.scrub(&err));
        }
        let encoded = parse("rtsp://u:p%40ssw0rd@h/s").expect("valid");
        assert_eq!(encoded.scrub("auth failed for p@ssw0rd"), "auth failed for ***");
    }

    /// Property: secrets built from random characters, put in each place a
    /// secret can be, never survive `redact`, whatever surrounds them.
    #[test]
    fn no_generated_secret_survives() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Characters a secret may hold in each place without ending it.
        let alphabet: Vec<char> = "abcXYZ019-_.~!$*()+,:;=%@".chars().collect();
        let templates = [
            "rtsp://user:{S}@10.0.0.1:554/s",
            "launch:rtspsrc location=rtsp://u:{S}@a/s ! decodebin ! rtspsrc location=rtsp://v:{S}@b/t",
            "http://h/p?a=1&password={S}&b=2",
            "http://h/p?TOKEN={S}",
            "launch:souphttpsrc location=http://h/v user-id={S} user-pw={S} ! x",
            "launch:srtsrc uri=srt://h:1?passphrase={S} ! x",
            "launch:rtspsrc user-pw=\"{S} {S}\" location=rtsp://h/s",
        ];
        for _ in 0..3000 {
            let len = 3 + (next() % 20) as usize;
            let mut secret: String =
                (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            // A secret that starts like the place's terminator is not one.
            secret.insert_str(0, "Q7");
            let t = templates[(next() % templates.len() as u64) as usize];
            let quoted = t.contains('"');
            let s = if t.contains('?') || t.contains("user-id") {
                // A query value or an unquoted property ends at `&`/space: keep those out.
                secret.replace(['&', '#', '@', ':', '/', '?'], "z")
            } else if quoted {
                secret.replace('"', "z")
            } else {
                secret.replace(['@', '/', '?', '#'], "z")
            };
            let text = t.replace("{S}", &s);
            let red = redact(&text);
            assert!(!red.contains(&s), "{text} -> {red}");
            assert!(red.contains("***"), "{text} -> {red}");
        }
    }
}
