//! The one TOML file that configures a Vigil box.
//!
//! Everything is validated before anything starts: unknown fields are errors
//! that name the field, and every semantic check names the field, the bad
//! value and the fix. Relative paths are relative to the config file.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vigil_camera::Source;

/// The whole configuration. Defaults run the demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this box in MQTT topics and in every event. Letters, digits, `-`, `_`.
    #[serde(default = "default_device_id")]
    pub device_id: String,
    /// The broker events go to.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The local HTTP API and web page.
    #[serde(default)]
    pub http: HttpConfig,
    /// ONNX models, referenced by name from cameras.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Video sources; each runs one model.
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
    /// Rules that turn tracks and zones into the events people act on.
    #[serde(default)]
    pub rules: Vec<crate::rules::RuleConfig>,
    /// Events: outbox, snapshots, how chatty updates are.
    #[serde(default)]
    pub events: EventsConfig,
    /// Where the outbox and snapshots live (relative to the config file).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

/// How events are produced and kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Also publish every processed frame's detections, QoS 0, on
    /// `<prefix>/<device>/detections` (high rate; not stored while the broker is away).
    #[serde(default)]
    pub publish_detections: bool,
    /// At most one `object.update` per track per this many seconds...
    #[serde(default = "default_update_interval_s")]
    pub update_interval_s: f64,
    /// ...and only when the object moved this fraction of the frame diagonal
    /// (or changed zones).
    #[serde(default = "default_update_min_move")]
    pub update_min_move: f32,
    /// The outbox keeps at most this many undelivered events...
    #[serde(default = "default_outbox_max_events")]
    pub outbox_max_events: u64,
    /// ...and this many megabytes; beyond either, the oldest are dropped (and counted).
    #[serde(default = "default_outbox_max_mb")]
    pub outbox_max_mb: u64,
    /// Store annotated snapshots with events that have one.
    #[serde(default = "yes")]
    pub snapshots: bool,
    #[serde(default = "default_snapshot_max_files")]
    pub snapshot_max_files: usize,
    #[serde(default = "default_snapshot_max_mb")]
    pub snapshot_max_mb: u64,
    #[serde(default = "default_snapshot_max_age_h")]
    pub snapshot_max_age_h: f64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            publish_detections: false,
            update_interval_s: default_update_interval_s(),
            update_min_move: default_update_min_move(),
            outbox_max_events: default_outbox_max_events(),
            outbox_max_mb: default_outbox_max_mb(),
            snapshots: true,
            snapshot_max_files: default_snapshot_max_files(),
            snapshot_max_mb: default_snapshot_max_mb(),
            snapshot_max_age_h: default_snapshot_max_age_h(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("vigil-data")
}
fn default_update_interval_s() -> f64 {
    2.0
}
fn default_update_min_move() -> f32 {
    0.02
}
fn default_outbox_max_events() -> u64 {
    100_000
}
fn default_outbox_max_mb() -> u64 {
    256
}
fn default_snapshot_max_files() -> usize {
    1000
}
fn default_snapshot_max_mb() -> u64 {
    500
}
fn default_snapshot_max_age_h() -> f64 {
    168.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` (port defaults to 1883).
    #[serde(default = "default_mqtt_url")]
    pub url: String,
    /// Topics are `<topic_prefix>/<device_id>/events` and `.../status`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// MQTT client id; defaults to `vigil-<device_id>`. Must be unique per broker.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// The password itself. Prefer `password_file` or `password_env` so the
    /// config can be shared without the secret.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// A file whose contents (trailing newline removed) are the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable that holds the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Seconds between keep-alive pings; the broker declares Vigil gone (and
    /// publishes its `offline` last will) after 1.5 times this.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Seconds an event may wait for the broker's acknowledgement (QoS 1
    /// PUBACK) before the connection counts as dead and is made again;
    /// what was in flight is sent again from the outbox.
    #[serde(default = "default_ack_timeout_s")]
    pub ack_timeout_s: u64,
    /// Largest event published, in KiB (1 to 1024). A larger one (many
    /// detections, a long rule output) is refused, taken out of the outbox
    /// and counted (`refused` in health, `vigil_mqtt_refused_total`): a
    /// broker closes the connection on a message above its limit, and the
    /// event would block every one behind it. Keep it at or below the
    /// broker's own limit (Mosquitto `message_size_limit`, AWS IoT 128 KiB,
    /// Azure IoT Hub 256 KiB).
    #[serde(default = "default_max_event_kb")]
    pub max_event_kb: u64,
    /// `mqtts://` brokers: the CA certificate(s) that signed the broker's
    /// certificate (PEM). Unset: the system's CA certificates.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that require them.
    #[serde(default)]
    pub tls_client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_client_key_file: Option<PathBuf>,
    /// `mqtt` (any broker) or `azure-iot-hub` (publish to an IoT Hub as a device).
    #[serde(default)]
    pub mode: MqttMode,
    /// IoT Hub host name, e.g. `myhub.azure-devices.net`.
    #[serde(default)]
    pub azure_hub: Option<String>,
    /// The IoT Hub device id (default: `device_id`).
    #[serde(default)]
    pub azure_device_id: Option<String>,
    /// The device's symmetric key (base64): prefer `_file` or `_env`.
    #[serde(default, skip_serializing)]
    pub azure_device_key: Option<String>,
    #[serde(default)]
    pub azure_device_key_file: Option<PathBuf>,
    #[serde(default)]
    pub azure_device_key_env: Option<String>,
    /// Lifetime of each SAS token in seconds (at least 10); renewed at 80 % of it.
    #[serde(default = "default_token_ttl_s")]
    pub azure_token_ttl_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MqttMode {
    #[default]
    Mqtt,
    AzureIotHub,
}

fn default_token_ttl_s() -> u64 {
    3600
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port of the API and web page; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `token` (a bearer token on every route but /healthz, /readyz and the
    /// page itself) or `none` (no authentication: only on a trusted network;
    /// Vigil warns at start).
    #[serde(default)]
    pub auth: AuthMode,
    /// Where the token is read from; created (random, mode 0600) on first
    /// start if missing. Default: `<data_dir>/api-token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token (wins over the file).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Largest model upload, in megabytes.
    #[serde(default = "default_max_upload_mb")]
    pub max_upload_mb: u64,
    /// Requests (other than uploads and live streams) taking longer are cut off.
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: u64,
    /// Ed25519 public key (base64, 32 bytes) in a file: when set, uploaded
    /// models must carry a matching signature (X-Vigil-Signature).
    #[serde(default)]
    pub model_signing_key: Option<PathBuf>,
    /// Frames per second of the MJPEG live views, at most.
    #[serde(default = "default_mjpeg_fps")]
    pub mjpeg_fps: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Token,
    None,
}

fn default_max_upload_mb() -> u64 {
    512
}
fn default_request_timeout_s() -> u64 {
    30
}
fn default_mjpeg_fps() -> f64 {
    5.0
}

/// The API token: from the environment, the token file, or made and saved
/// there (mode 0600) on first start. `None` when `auth = "none"`.
pub fn api_token(loaded: &LoadedConfig) -> Result<Option<String>, String> {
    let h = &loaded.config.http;
    if h.auth == AuthMode::None {
        return Ok(None);
    }
    if let Some(var) = &h.token_env {
        let t = std::env::var(var)
            .map_err(|_| format!("http.token_env = {var:?}: that environment variable is not set"))?;
        if t.trim().len() < 16 {
            return Err(format!("http.token_env = {var:?}: use a token of at least 16 characters"));
        }
        return Ok(Some(t.trim().to_owned()));
    }
    let file = h
        .token_file
        .as_ref()
        .map(|f| loaded.base_dir.join(f))
        .unwrap_or_else(|| loaded.data_dir.join("api-token"));
    match std::fs::read_to_string(&file) {
        Ok(t) if t.trim().len() >= 16 => Ok(Some(t.trim().to_owned())),
        Ok(_) => Err(format!("{}: the token must be at least 16 characters", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut bytes = [0u8; 24];
            getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for the API token: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            writeln!(f, "{token}").map_err(|e| format!("{}: {e}", file.display()))?;
            tracing::info!(file = %file.display(), "generated an API token (mode 0600)");
            Ok(Some(token))
        }
        Err(e) => Err(format!("{}: {}", file.display(), io_reason(&e))),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// How cameras and events refer to this model.
    pub name: String,
    /// The `.onnx` file.
    pub path: PathBuf,
    /// Force a decoder instead of recognising the model (see docs/model-families.md).
    #[serde(default)]
    pub decoder: Option<String>,
    /// Detections scoring at or below this are dropped (0..1). Unset: the
    /// model's manifest, else the family default (0.25; Custom Vision 0.1).
    #[serde(default)]
    pub confidence: Option<f32>,
    /// NMS IoU threshold (0..1): a box overlapping a better one of its class
    /// by more than this is dropped. Unset: manifest, else 0.7 (Custom Vision 0.45).
    #[serde(default)]
    pub iou: Option<f32>,
    /// At most this many detections per frame. Unset: manifest, else 300 (Custom Vision 20).
    #[serde(default)]
    pub max_detections: Option<usize>,
    /// Suppress overlapping boxes across classes too.
    #[serde(default)]
    pub class_agnostic: Option<bool>,
    /// Confidence thresholds for particular labels, e.g. `{ person = 0.5 }`.
    #[serde(default)]
    pub class_confidence: BTreeMap<String, f32>,
    /// ONNX Runtime intra-op threads for this model. 0 (the default) plans
    /// them: the cores divided among the models cameras use (one model: every
    /// core), since each model runs one batch at a time.
    #[serde(default)]
    pub threads: usize,
    /// Copies of the model that run side by side, each with `threads`
    /// threads. Unset: planned (on the CPU, one per camera up to the model's
    /// share of the cores; one on a GPU).
    #[serde(default)]
    pub sessions: Option<usize>,
    /// For a model with one camera on the CPU: while that camera's frames
    /// queue for a run with every thread (they wait, on average, over half
    /// a run), this many run side by side, each on `threads / lanes`
    /// threads. Unset:
    /// 2 when the model has one camera and at least two threads; 0 turns
    /// it off. Each lane is another copy of the session in memory.
    #[serde(default)]
    pub lanes: Option<usize>,
    /// The most frames, from different cameras, one run takes when the model
    /// accepts a batch (first input dimension dynamic or a fixed N). Unset:
    /// on a GPU the number of cameras on the model (at most 8); on the CPU
    /// 1, since side-by-side sessions do better there (see README).
    #[serde(default)]
    pub batch: Option<usize>,
    /// How long a batch waits for frames other cameras are preparing, in ms.
    /// Frames not on their way are never waited for.
    #[serde(default = "default_batch_wait_ms")]
    pub batch_wait_ms: u64,
    /// A run still going after this many ms is stopped: its frames are
    /// skipped (counted in `runs_stopped`, health degraded while every run
    /// fails) and the runner takes the next. Far above a normal run, so only
    /// a model that loops or a box that has stalled meets it.
    #[serde(default = "default_run_timeout_ms")]
    pub run_timeout_ms: u64,
    /// Where the model runs: `cpu`, `cuda`, `tensorrt` or `openvino`.
    #[serde(default)]
    pub provider: vigil_inference::Provider,
    /// GPU index for `cuda` and `tensorrt`.
    #[serde(default)]
    pub device_id: i32,
    /// When the provider cannot be used, run on the CPU (with a loud warning
    /// and the fact in health) instead of refusing to start.
    #[serde(default)]
    pub allow_cpu_fallback: bool,
    /// Seconds a test run (at load) and the self-test of an activation may
    /// take before they are stopped: a model that loops for ever must not
    /// hang a load, and a large model on a small board needs seconds.
    #[serde(default = "default_test_run_s")]
    pub test_run_s: f64,
}

impl ModelConfig {
    /// The options `vigil_inference` loads this model with.
    pub fn options(&self) -> vigil_inference::ModelOptions {
        vigil_inference::ModelOptions {
            overrides: vigil_inference::Overrides {
                decoder: self.decoder.as_deref().and_then(vigil_inference::DecoderKind::parse),
                confidence: self.confidence,
                iou: self.iou,
                max_detections: self.max_detections,
                class_agnostic: self.class_agnostic,
                class_confidence: self.class_confidence.clone(),
            },
            intra_threads: self.threads,
            sessions: self.sessions.unwrap_or(1),
            lanes: self.lanes.unwrap_or(0),
            max_batch: self.batch.unwrap_or(0),
            provider: self.provider,
            device_id: self.device_id,
            allow_cpu_fallback: self.allow_cpu_fallback,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Used in URLs and events. Letters, digits, `-`, `_`.
    pub name: String,
    /// Where frames come from: `test://ball`, `file:clip.mp4`, `rtsp://…`,
    /// `http://…` (MJPEG), `v4l2:///dev/video0` or `launch:<gst pipeline>`.
    pub source: String,
    /// Frames per second handed to inference at most; extra frames are
    /// dropped right after decoding. Unset: every frame the source sends.
    #[serde(default)]
    pub fps: Option<u32>,
    /// The `name` of the model this camera runs. Unset: the camera is only
    /// watched (health, snapshots), no inference.
    #[serde(default)]
    pub model: Option<String>,
    /// Frame width for inference (GStreamer scales); with only one of
    /// width/height the aspect ratio is kept.
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// Region of interest `[x, y, w, h]` as fractions of the frame: only
    /// this part is analysed and shown.
    #[serde(default)]
    pub crop: Option<[f32; 4]>,
    /// Clockwise rotation in degrees: 0, 90, 180 or 270.
    #[serde(default)]
    pub rotate: u16,
    /// Mirror after rotating: `none`, `horizontal` or `vertical`.
    #[serde(default)]
    pub flip: vigil_camera::Flip,
    /// RTSP transport: `auto` (TCP, then UDP), `tcp` or `udp`.
    #[serde(default)]
    pub rtsp_transport: vigil_camera::RtspTransport,
    /// RTSP jitter buffer in milliseconds.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: u32,
    /// Files: start over at the end (true) or end the camera (false).
    #[serde(default = "yes", rename = "loop")]
    pub loop_file: bool,
    /// Files: play at their own frame rate (true) or as fast as they decode.
    #[serde(default = "yes")]
    pub realtime: bool,
    /// Seconds without a frame before the camera counts as stalled and is reconnected.
    #[serde(default = "default_stall_timeout_s")]
    pub stall_timeout_s: f64,
    /// Longest wait between reconnect attempts, in seconds (the wait starts
    /// at 0.5 s and doubles): how soon a camera that comes back streams again.
    #[serde(default = "default_reconnect_max_s")]
    pub reconnect_max_s: f64,
    /// Polygon zones on this camera's image.
    #[serde(default)]
    pub zones: Vec<crate::zones::ZoneConfig>,
    /// Counting lines on this camera's image.
    #[serde(default)]
    pub lines: Vec<crate::zones::LineConfig>,
    /// How tracks start, are confirmed and end.
    #[serde(default)]
    pub tracker: crate::tracker::TrackerConfig,
    /// When to skip inference because nothing moves.
    #[serde(default)]
    pub motion: crate::motion::MotionConfig,
}

impl CameraConfig {
    /// A recording analysed frame by frame (`realtime = false`): its next
    /// frame is always ready.
    pub fn is_lossless(&self) -> bool {
        !self.realtime && self.source.starts_with("file:")
    }

    /// The options `vigil_camera` runs this camera with.
    pub fn options(&self) -> vigil_camera::CameraOptions {
        vigil_camera::CameraOptions {
            fps: self.fps,
            width: self.width,
            height: self.height,
            crop: self.crop,
            rotate: self.rotate,
            flip: self.flip,
            rtsp_transport: self.rtsp_transport,
            latency_ms: self.latency_ms,
            loop_file: self.loop_file,
            realtime: self.realtime,
            stall_timeout: Duration::from_secs_f64(self.stall_timeout_s),
            backoff_max: Duration::from_secs_f64(self.reconnect_max_s),
            ..vigil_camera::CameraOptions::default()
        }
    }
}

fn yes() -> bool {
    true
}
fn default_test_run_s() -> f64 {
    vigil_inference::default_test_run().as_secs_f64()
}
fn default_batch_wait_ms() -> u64 {
    10
}
fn default_run_timeout_ms() -> u64 {
    10_000
}
fn default_latency_ms() -> u32 {
    200
}
fn default_reconnect_max_s() -> f64 {
    3.0
}

fn default_device_id() -> String {
    "vigil".into()
}
fn default_mqtt_url() -> String {
    "mqtt://127.0.0.1:1883".into()
}
fn default_topic_prefix() -> String {
    "vigil".into()
}
fn default_keep_alive_s() -> u64 {
    15
}
fn default_ack_timeout_s() -> u64 {
    10
}
fn default_max_event_kb() -> u64 {
    256
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_stall_timeout_s() -> f64 {
    10.0
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: default_mqtt_url(),
            topic_prefix: default_topic_prefix(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            keep_alive_s: default_keep_alive_s(),
            ack_timeout_s: default_ack_timeout_s(),
            max_event_kb: default_max_event_kb(),
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            mode: MqttMode::Mqtt,
            azure_hub: None,
            azure_device_id: None,
            azure_device_key: None,
            azure_device_key_file: None,
            azure_device_key_env: None,
            azure_token_ttl_s: default_token_ttl_s(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            auth: AuthMode::Token,
            token_file: None,
            token_env: None,
            max_upload_mb: default_max_upload_mb(),
            request_timeout_s: default_request_timeout_s(),
            model_signing_key: None,
            mjpeg_fps: default_mjpeg_fps(),
        }
    }
}

/// Problems found in a config file. Each line names the field, the value and the fix.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {p}", self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A config that passed validation, with paths resolved.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// Directory relative paths were resolved against.
    pub base_dir: PathBuf,
    pub file: PathBuf,
    /// Parsed sources, one per camera, in config order. A camera whose
    /// source cannot be parsed does not stop the others: it is reported as
    /// failed with this error (and `vigil check` fails).
    pub sources: Vec<Result<Source, String>>,
    /// Problems that concern one camera's source only (unparseable, missing
    /// file or device): errors for `vigil check`, health states at run time.
    pub camera_problems: Vec<String>,
    /// The HTTP address to bind.
    pub listen: SocketAddr,
    pub mqtt: MqttTarget,
    /// `data_dir`, resolved: the outbox and the snapshots live here.
    pub data_dir: PathBuf,
}

/// The broker address and credentials, resolved from URL, files and environment.
#[derive(Clone)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Set for `mqtts://` and IoT Hub.
    pub tls: Option<TlsFiles>,
    /// Set in IoT Hub mode: (hub, device, key).
    pub azure: Option<(String, String, String)>,
}

/// TLS material, resolved against the config directory.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl fmt::Debug for MqttTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("azure", &self.azure.as_ref().map(|(h, d, _)| (h, d, "***")))
            .finish()
    }
}

impl fmt::Display for MqttTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl LoadedConfig {
    /// Reads, parses and validates a config file.
    pub fn load(file: &Path) -> Result<LoadedConfig, ConfigError> {
        let fail = |p: String| ConfigError { file: file.to_owned(), problems: vec![p] };
        let bytes = std::fs::read(file)
            .map_err(|e| fail(format!("cannot read the config file: {}", io_reason(&e))))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            fail(format!(
                "the config file is not UTF-8 text (bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };
        Self::from_str(&text, file, &base_dir)
    }

    /// Parses and validates config text as if read from `file`.
    pub fn from_str(text: &str, file: &Path, base_dir: &Path) -> Result<LoadedConfig, ConfigError> {
        let fail = |p: String| ConfigError { file: file.to_owned(), problems: vec![p] };
        let de = toml::Deserializer::parse(text).map_err(|e| fail(toml_problem(text, &e)))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let mut msg = toml_problem(text, &inner);
            if path != "." && !path.is_empty() {
                msg = format!("{path}: {msg}");
            }
            fail(msg)
        })?;
        validate(config, file, base_dir)
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied (check the file's owner and mode)".into(),
        std::io::ErrorKind::IsADirectory => "it is a directory, not a file".into(),
        _ => e.to_string(),
    }
}

/// One line: "line 12: unknown field `fpss`, expected one of ...".
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

/// Upper bounds on numbers: each far beyond any sensible setting, and low
/// enough that converting it (to bytes, a `Duration`, a deadline from now)
/// cannot overflow or panic.
const MAX_MB: u64 = 1 << 20;
const MAX_SECONDS: u64 = 86_400;
const MAX_AGE_H: f64 = 87_600.0;
const MAX_TOKEN_TTL_S: u64 = 365 * 86_400;
const MAX_DETECTIONS: usize = 10_000;
const MAX_THREADS: usize = 1024;

/// `v` is a finite number of seconds in `lo..=hi` (false for NaN).
fn seconds_in(v: f64, lo: f64, hi: f64) -> bool {
    v.is_finite() && (lo..=hi).contains(&v)
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn validate(mut config: Config, file: &Path, base_dir: &Path) -> Result<LoadedConfig, ConfigError> {
    let mut problems = Vec::new();
    let mut p = |s: String| problems.push(s);

    if !is_name(&config.device_id) {
        p(format!(
            "device_id = {:?}: use 1-64 letters, digits, `-` or `_` (it becomes part of MQTT topics)",
            config.device_id
        ));
    }

    // MQTT
    let mqtt = match parse_mqtt(&config.mqtt, base_dir) {
        Ok(t) => Some(t),
        Err(e) => {
            p(e);
            None
        }
    };
    let prefix = &config.mqtt.topic_prefix;
    if prefix.is_empty() || prefix.contains(['#', '+']) || prefix.starts_with('/') || prefix.ends_with('/') {
        p(format!(
            "mqtt.topic_prefix = {prefix:?}: must be non-empty, without `#`, `+` or a leading/trailing `/`"
        ));
    }
    // MQTT carries the keep-alive in 16 bits: more would wrap silently.
    if !(5..=65535).contains(&config.mqtt.keep_alive_s) {
        p(format!("mqtt.keep_alive_s = {}: use 5 to 65535 seconds", config.mqtt.keep_alive_s));
    }
    if !(1..=3600).contains(&config.mqtt.ack_timeout_s) {
        p(format!("mqtt.ack_timeout_s = {}: use 1 to 3600 seconds (10 is usual)", config.mqtt.ack_timeout_s));
    }
    if !(1..=1024).contains(&config.mqtt.max_event_kb) {
        p(format!(
            "mqtt.max_event_kb = {}: use 1 to 1024 KiB, at most the broker's message size limit",
            config.mqtt.max_event_kb
        ));
    }
    if !(10..=MAX_TOKEN_TTL_S).contains(&config.mqtt.azure_token_ttl_s) {
        p(format!(
            "mqtt.azure_token_ttl_s = {}: use 10 to {MAX_TOKEN_TTL_S} seconds (a year); 3600 is usual",
            config.mqtt.azure_token_ttl_s
        ));
    }

    // HTTP
    let listen = match config.http.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p(format!(
                "http.listen = {:?}: not an address:port, e.g. \"0.0.0.0:8080\" or \"127.0.0.1:8080\"",
                config.http.listen
            ));
            None
        }
    };

    if let Some(k) = &config.http.model_signing_key
        && let Err(e) = crate::models::read_verifying_key(&base_dir.join(k))
    {
        p(format!("http.model_signing_key: {e}"));
    }
    // The MJPEG period is 1 / mjpeg_fps: a tiny rate would be an endless period.
    if !(config.http.mjpeg_fps >= 0.1 && config.http.mjpeg_fps <= 30.0) {
        p(format!("http.mjpeg_fps = {}: use 0.1 to 30 frames per second", config.http.mjpeg_fps));
    }
    if !(1..=MAX_MB).contains(&config.http.max_upload_mb) {
        p(format!("http.max_upload_mb = {}: use 1 to {MAX_MB} megabytes", config.http.max_upload_mb));
    }
    if !(1..=MAX_SECONDS).contains(&config.http.request_timeout_s) {
        p(format!(
            "http.request_timeout_s = {}: use 1 to {MAX_SECONDS} seconds",
            config.http.request_timeout_s
        ));
    }

    // Models
    let mut model_names = HashSet::new();
    for (i, m) in config.models.iter_mut().enumerate() {
        let at = format!("models[{i}]");
        if !is_name(&m.name) {
            p(format!("{at}.name = {:?}: use 1-64 letters, digits, `-` or `_`", m.name));
        } else if !model_names.insert(m.name.clone()) {
            p(format!("{at}.name = {:?}: another model already has this name", m.name));
        }
        m.path = base_dir.join(&m.path);
        if !m.path.is_file() {
            let why = if m.path.exists() { "is not a file" } else { "does not exist" };
            p(format!("{at}.path = {:?}: {} {why}", m.path.display().to_string(), m.path.display()));
        }
        if let Some(c) = m.confidence.filter(|c| !(0.0..=1.0).contains(c)) {
            p(format!("{at}.confidence = {c}: must be between 0 and 1 (e.g. 0.25)"));
        }
        if let Some(v) = m.iou.filter(|v| !(0.0..=1.0).contains(v)) {
            p(format!("{at}.iou = {v}: must be between 0 and 1 (e.g. 0.7)"));
        }
        if !(0.1..=3600.0).contains(&m.test_run_s) {
            p(format!("{at}.test_run_s = {}: must be 0.1 to 3600 seconds (default 60)", m.test_run_s));
        }
        if let Some(n) = m.max_detections.filter(|n| !(1..=MAX_DETECTIONS).contains(n)) {
            p(format!("{at}.max_detections = {n}: must be 1 to {MAX_DETECTIONS}"));
        }
        if m.threads > MAX_THREADS {
            p(format!("{at}.threads = {}: at most {MAX_THREADS} (0 plans them)", m.threads));
        }
        if m.device_id < 0 {
            p(format!("{at}.device_id = {}: a GPU index, 0 or more", m.device_id));
        }
        if let Some(n) = m.sessions.filter(|n| !(1..=64).contains(n)) {
            p(format!("{at}.sessions = {n}: must be 1 to 64"));
        }
        if let Some(n) = m.lanes.filter(|n| *n > 16) {
            p(format!("{at}.lanes = {n}: at most 16 (0 turns lanes off)"));
        }
        if m.lanes.is_some_and(|n| n > 1) && m.provider != vigil_inference::Provider::Cpu {
            p(format!("{at}.lanes: lanes are for the CPU; remove it (a GPU model batches instead)"));
        }
        if m.lanes.is_some_and(|n| n > 1) {
            let cameras = config.cameras.iter().filter(|cam| cam.model.as_ref() == Some(&m.name)).count();
            if cameras > 1 {
                p(format!(
                    "{at}.lanes: lanes are for a model with one camera, and {cameras} use this one; \
                     remove it (several cameras already run side by side, see `sessions`)"
                ));
            }
        }
        if let Some(b) = m.batch.filter(|b| !(1..=64).contains(b)) {
            p(format!("{at}.batch = {b}: must be 1 to 64 (1 turns batching off)"));
        }
        if m.batch_wait_ms > 1000 {
            p(format!("{at}.batch_wait_ms = {}: at most 1000 (a few ms is plenty)", m.batch_wait_ms));
        }
        if !(10..=3_600_000).contains(&m.run_timeout_ms) {
            p(format!("{at}.run_timeout_ms = {}: must be 10 to 3600000 (default 10000)", m.run_timeout_ms));
        }
        for (label, v) in &m.class_confidence {
            if !(0.0..=1.0).contains(v) {
                p(format!("{at}.class_confidence.{label} = {v}: must be between 0 and 1"));
            }
        }
        if let Some(d) = &m.decoder
            && vigil_inference::DecoderKind::parse(d).is_none()
        {
            let all: Vec<&str> = vigil_inference::DecoderKind::ALL.iter().map(|d| d.as_str()).collect();
            p(format!("{at}.decoder = {d:?}: unknown decoder; use one of {}", all.join(", ")));
        }
    }

    // Cameras
    let mut camera_names = HashSet::new();
    let mut sources = Vec::new();
    let mut camera_problems = Vec::new();
    for (i, c) in config.cameras.iter().enumerate() {
        let at = format!("cameras[{i}]");
        if !is_name(&c.name) {
            p(format!("{at}.name = {:?}: use 1-64 letters, digits, `-` or `_` (it is used in URLs)", c.name));
        } else if !camera_names.insert(c.name.clone()) {
            p(format!("{at}.name = {:?}: another camera already has this name", c.name));
        }
        match Source::parse(&c.source, base_dir) {
            Ok(s) => {
                if let Err(e) = s.check_exists() {
                    camera_problems.push(format!("{at}.source: {e}"));
                }
                sources.push(Ok(s));
            }
            Err(e) => {
                camera_problems.push(format!("{at}.source: {e}"));
                sources.push(Err(e.to_string()));
            }
        }
        if let Some(model) = &c.model
            && !model_names.contains(model)
        {
            let known: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
            p(format!(
                "{at}.model = {model:?}: no model has that name (models: {})",
                if known.is_empty() { "none configured".into() } else { known.join(", ") }
            ));
        }
        if let Some(crop) = c.crop {
            let [x, y, w, h] = crop;
            let ok = crop.iter().all(|v| (0.0..=1.0).contains(v))
                && w > 0.0
                && h > 0.0
                && x + w <= 1.0 + 1e-6
                && y + h <= 1.0 + 1e-6;
            if !ok {
                p(format!(
                    "{at}.crop = {crop:?}: use [x, y, width, height] as fractions of the frame, inside 0..1 (e.g. [0.25, 0, 0.5, 1])"
                ));
            }
        }
        if ![0, 90, 180, 270].contains(&c.rotate) {
            p(format!("{at}.rotate = {}: use 0, 90, 180 or 270", c.rotate));
        }
        for (k, v) in [("width", c.width), ("height", c.height)] {
            if v.is_some_and(|v| !(16..=8192).contains(&v)) {
                p(format!("{at}.{k} = {}: use 16 to 8192 pixels, or leave it out", v.unwrap_or(0)));
            }
        }
        let mut shape_names = HashSet::new();
        for (j, z) in c.zones.iter().enumerate() {
            if !is_name(&z.name) || !shape_names.insert(z.name.clone()) {
                p(format!(
                    "{at}.zones[{j}].name = {:?}: use a unique name of letters, digits, `-` or `_`",
                    z.name
                ));
            }
            if let Err(e) = crate::zones::validate_polygon(&z.polygon) {
                p(format!("{at}.zones[{j}] ({}): the polygon {e}", z.name));
            }
        }
        for (j, l) in c.lines.iter().enumerate() {
            if !is_name(&l.name) || !shape_names.insert(l.name.clone()) {
                p(format!(
                    "{at}.lines[{j}].name = {:?}: use a unique name of letters, digits, `-` or `_`",
                    l.name
                ));
            }
            let inside = l.from.iter().chain(&l.to).all(|v| (0.0..=1.0).contains(v));
            if !inside || l.from == l.to {
                p(format!(
                    "{at}.lines[{j}] ({}): from and to must be two different points inside 0..1",
                    l.name
                ));
            }
        }
        let t = &c.tracker;
        if !(0.0..=1.0).contains(&t.high_score)
            || !(0.0..=1.0).contains(&t.low_score)
            || t.low_score > t.high_score
        {
            p(format!(
                "{at}.tracker: need 0 <= low_score <= high_score <= 1 (got {} and {})",
                t.low_score, t.high_score
            ));
        }
        if t.min_hits == 0 || !(t.max_missing_s > 0.0 && t.max_missing_s <= MAX_SECONDS as f64) {
            p(format!(
                "{at}.tracker: min_hits must be at least 1 and max_missing_s above 0, at most {MAX_SECONDS} \
                 (got {} and {})",
                t.min_hits, t.max_missing_s
            ));
        }
        if !(0.0..=1.0).contains(&t.match_iou) {
            p(format!("{at}.tracker.match_iou = {}: must be between 0 and 1 (e.g. 0.2)", t.match_iou));
        }
        if let Some(v) = t.confirm_score.filter(|v| !(0.0..=1.0).contains(v)) {
            p(format!("{at}.tracker.confirm_score = {v}: must be between 0 and 1, or left out"));
        }
        let m = &c.motion;
        if !(m.min_area > 0.0 && m.min_area <= 1.0) || m.threshold == 0 {
            p(format!(
                "{at}.motion: min_area must be in (0, 1] and threshold at least 1 (got {} and {})",
                m.min_area, m.threshold
            ));
        }
        if !(seconds_in(m.idle_interval_s, 0.0, MAX_SECONDS as f64)
            && seconds_in(m.max_interval_s, 0.0, MAX_SECONDS as f64)
            && m.idle_interval_s > 0.0
            && m.max_interval_s > 0.0)
        {
            p(format!(
                "{at}.motion: max_interval_s and idle_interval_s must be above 0, at most {MAX_SECONDS} \
                 (got {} and {})",
                m.max_interval_s, m.idle_interval_s
            ));
        }
        if m.regions && m.enabled == Some(false) {
            p(format!(
                "{at}.motion.regions = true: regions come from motion gating, which enabled = false turns off; \
                 remove one of the two"
            ));
        }
        if m.enabled != Some(false) && m.max_interval_s >= t.max_missing_s {
            p(format!(
                "{at}.motion.max_interval_s = {}: must be below tracker.max_missing_s ({}), or still objects \
                 would end between two inferences; lower it, or raise tracker.max_missing_s",
                m.max_interval_s, t.max_missing_s
            ));
        }
        if !(c.reconnect_max_s.is_finite() && (0.5..=3600.0).contains(&c.reconnect_max_s)) {
            p(format!("{at}.reconnect_max_s = {}: use 0.5 to 3600 seconds", c.reconnect_max_s));
        }
        if let Some(fps) = c.fps.filter(|f| !(1..=1000).contains(f)) {
            p(format!("{at}.fps = {fps}: use 1 to 1000, or leave it out for every frame"));
        }
        if c.latency_ms > 60_000 {
            p(format!("{at}.latency_ms = {}: at most 60000 (a few hundred ms is usual)", c.latency_ms));
        }
        if !seconds_in(c.stall_timeout_s, 1.0, MAX_SECONDS as f64) {
            p(format!("{at}.stall_timeout_s = {}: use 1 to {MAX_SECONDS} seconds", c.stall_timeout_s));
        }
        for (j, z) in c.zones.iter().enumerate() {
            if !seconds_in(z.min_dwell_s, 0.0, MAX_SECONDS as f64) {
                p(format!("{at}.zones[{j}].min_dwell_s = {}: use 0 to {MAX_SECONDS} seconds", z.min_dwell_s));
            }
        }
    }

    // Rules
    let mut rule_names = HashSet::new();
    for (i, r) in config.rules.iter().enumerate() {
        use crate::rules::{RuleKind, Trigger};
        let at = format!("rules[{i}] ({})", r.name);
        if !is_name(&r.name) || !rule_names.insert(r.name.clone()) {
            p(format!("rules[{i}].name = {:?}: use a unique name of letters, digits, `-` or `_`", r.name));
        }
        match config.cameras.iter().find(|c| c.name == r.camera) {
            None => {
                let known: Vec<&str> = config.cameras.iter().map(|c| c.name.as_str()).collect();
                p(format!(
                    "{at}.camera = {:?}: no camera has that name (cameras: {})",
                    r.camera,
                    known.join(", ")
                ));
            }
            Some(cam) => {
                if cam.model.is_none() {
                    p(format!("{at}: camera {:?} runs no model; give it one (cameras[].model)", cam.name));
                }
                if let Some(z) = &r.zone
                    && !cam.zones.iter().any(|zz| &zz.name == z)
                {
                    let known: Vec<&str> = cam.zones.iter().map(|z| z.name.as_str()).collect();
                    p(format!(
                        "{at}.zone = {z:?}: camera {:?} has no such zone (zones: {})",
                        cam.name,
                        if known.is_empty() { "none".into() } else { known.join(", ") }
                    ));
                }
            }
        }
        match r.kind {
            RuleKind::Curbside if r.zone.is_none() => {
                p(format!("{at}: a curbside rule needs `zone` (the bay)"))
            }
            RuleKind::Safety if r.labels.is_empty() => {
                p(format!("{at}: a safety rule needs `labels` (what raises the alert, e.g. [\"no_helmet\"])"))
            }
            RuleKind::Inspection if r.trigger() == Trigger::Zone && r.zone.is_none() => {
                p(format!("{at}: trigger = \"zone\" needs `zone`"))
            }
            _ => {}
        }
        for (k, v) in
            [("min_duration_s", r.min_duration_s), ("dwell_s", r.dwell_s), ("interval_s", r.interval_s)]
        {
            if v.is_some_and(|v| !seconds_in(v, 0.0, MAX_SECONDS as f64)) {
                p(format!("{at}.{k}: must be a number of seconds, 0 to {MAX_SECONDS}"));
            }
        }
        if let Some(v) = r.min_score.filter(|v| !(0.0..=1.0).contains(v)) {
            p(format!("{at}.min_score = {v}: must be between 0 and 1, or left out"));
        }
    }
    let e = &config.events;
    if !seconds_in(e.update_interval_s, 0.0, MAX_SECONDS as f64) {
        p(format!("events.update_interval_s = {}: use 0 to {MAX_SECONDS} seconds", e.update_interval_s));
    }
    if !(0.0..=1.0).contains(&e.update_min_move) {
        p(format!(
            "events.update_min_move = {}: a fraction of the frame, 0 to 1 (e.g. 0.02)",
            e.update_min_move
        ));
    }
    if e.outbox_max_events == 0 {
        p("events.outbox_max_events = 0: must be at least 1".into());
    }
    for (k, v) in [("outbox_max_mb", e.outbox_max_mb), ("snapshot_max_mb", e.snapshot_max_mb)] {
        if !(1..=MAX_MB).contains(&v) {
            p(format!("events.{k} = {v}: use 1 to {MAX_MB} megabytes"));
        }
    }
    // Snapshots are pruned by age in seconds (`Duration::from_secs_f64`
    // panics on a negative or endless age).
    if !(e.snapshot_max_age_h.is_finite() && e.snapshot_max_age_h > 0.0 && e.snapshot_max_age_h <= MAX_AGE_H)
    {
        p(format!(
            "events.snapshot_max_age_h = {}: use a number of hours above 0, at most {MAX_AGE_H} (ten years); 168 is a week",
            e.snapshot_max_age_h
        ));
    }

    if !problems.is_empty() {
        return Err(ConfigError { file: file.to_owned(), problems });
    }
    let mut mqtt = mqtt.expect("checked above");
    if let Some((_, device, _)) = &mut mqtt.azure
        && device.is_empty()
    {
        *device = config.device_id.clone();
    }
    let data_dir = tidy_path(&base_dir.join(&config.data_dir));
    Ok(LoadedConfig {
        config,
        base_dir: base_dir.to_owned(),
        file: file.to_owned(),
        sources,
        camera_problems,
        listen: listen.expect("checked above"),
        mqtt,
        data_dir,
    })
}

fn parse_mqtt(m: &MqttConfig, base_dir: &Path) -> Result<MqttTarget, String> {
    let url = url::Url::parse(&m.url).map_err(|e| {
        format!("mqtt.url = {:?}: not a URL ({e}); use e.g. \"mqtt://127.0.0.1:1883\"", m.url)
    })?;
    if m.mode == MqttMode::AzureIotHub {
        return parse_azure(m, base_dir);
    }
    let tls = match url.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(format!(
                "mqtt.url = {:?}: unknown scheme `{other}`; use mqtt://host:port or mqtts://host:port",
                m.url
            ));
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("mqtt.url = {:?}: no host; use e.g. \"mqtt://127.0.0.1:1883\"", m.url))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    let files = TlsFiles {
        ca_file: m.tls_ca_file.as_ref().map(|f| base_dir.join(f)),
        client_cert_file: m.tls_client_cert_file.as_ref().map(|f| base_dir.join(f)),
        client_key_file: m.tls_client_key_file.as_ref().map(|f| base_dir.join(f)),
    };
    if !tls && (files.ca_file.is_some() || files.client_cert_file.is_some()) {
        return Err(format!("mqtt.tls_* are set but mqtt.url = {:?} is not TLS; use mqtts://", m.url));
    }
    if files.client_cert_file.is_some() != files.client_key_file.is_some() {
        return Err("mqtt: set both tls_client_cert_file and tls_client_key_file, or neither".into());
    }
    for (field, f) in [
        ("tls_ca_file", &files.ca_file),
        ("tls_client_cert_file", &files.client_cert_file),
        ("tls_client_key_file", &files.client_key_file),
    ] {
        if let Some(f) = f
            && !f.is_file()
        {
            return Err(format!("mqtt.{field} = {:?}: no such file", f.display().to_string()));
        }
    }
    let tls = tls.then_some(files);
    let sources = [m.password.is_some(), m.password_file.is_some(), m.password_env.is_some()];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err("mqtt: set only one of password, password_file, password_env".into());
    }
    let password = if let Some(p) = &m.password {
        Some(p.clone())
    } else if let Some(f) = &m.password_file {
        let path = base_dir.join(f);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "mqtt.password_file = {:?}: cannot read it: {}",
                path.display().to_string(),
                io_reason(&e)
            )
        })?;
        Some(text.trim_end_matches(['\r', '\n']).to_owned())
    } else if let Some(var) = &m.password_env {
        Some(
            std::env::var(var)
                .map_err(|_| format!("mqtt.password_env = {var:?}: that environment variable is not set"))?,
        )
    } else {
        None
    };
    if password.is_some() && m.username.is_none() {
        return Err("mqtt: a password needs a username too (mqtt.username)".into());
    }
    Ok(MqttTarget { host, port, username: m.username.clone(), password, tls, azure: None })
}

fn read_secret(
    field: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
    env: &Option<String>,
    base_dir: &Path,
) -> Result<Option<String>, String> {
    let n = [value.is_some(), file.is_some(), env.is_some()].iter().filter(|s| **s).count();
    if n > 1 {
        return Err(format!("mqtt: set only one of {field}, {field}_file, {field}_env"));
    }
    if let Some(v) = value {
        return Ok(Some(v.clone()));
    }
    if let Some(f) = file {
        let path = base_dir.join(f);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!("mqtt.{field}_file = {:?}: cannot read it: {}", path.display().to_string(), io_reason(&e))
        })?;
        return Ok(Some(text.trim().to_owned()));
    }
    if let Some(var) = env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("mqtt.{field}_env = {var:?}: that environment variable is not set"));
    }
    Ok(None)
}

fn parse_azure(m: &MqttConfig, base_dir: &Path) -> Result<MqttTarget, String> {
    let hub = m
        .azure_hub
        .clone()
        .filter(|h| !h.is_empty())
        .ok_or("mqtt.mode = \"azure-iot-hub\" needs mqtt.azure_hub, e.g. \"myhub.azure-devices.net\"")?;
    let key = read_secret(
        "azure_device_key",
        &m.azure_device_key,
        &m.azure_device_key_file,
        &m.azure_device_key_env,
        base_dir,
    )?
    .ok_or("mqtt.mode = \"azure-iot-hub\" needs the device key: mqtt.azure_device_key_file (or _env)")?;
    crate::azure::sas_token("check", &key, 0).map_err(|e| format!("mqtt.azure_device_key: {e}"))?;
    let files = TlsFiles { ca_file: m.tls_ca_file.as_ref().map(|f| base_dir.join(f)), ..TlsFiles::default() };
    // The device id defaults to the Vigil device id; filled in by the caller.
    let device = m.azure_device_id.clone().unwrap_or_default();
    let (host, port) = match url::Url::parse(&m.url) {
        // A test or a local IoT Edge hub may stand in for the hub: honour an explicit URL port.
        Ok(u) if m.url != default_mqtt_url() && u.host_str().is_some() => {
            (u.host_str().unwrap_or(&hub).to_owned(), u.port().unwrap_or(8883))
        }
        _ => (hub.clone(), 8883),
    };
    Ok(MqttTarget {
        host,
        port,
        username: None,
        password: None,
        tls: Some(files),
        azure: Some((hub, device, key)),
    })
}

/// `a/b/../c` as `a/c`, without touching the file system (the directory may
/// not exist yet): paths Vigil prints should read cleanly.
fn tidy_path(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidies_paths_lexically() {
        assert_eq!(
            tidy_path(Path::new("/srv/vigil/deploy/../.vigil/demo")),
            Path::new("/srv/vigil/.vigil/demo")
        );
        assert_eq!(tidy_path(Path::new("./a/./b")), Path::new("a/b"));
        assert_eq!(tidy_path(Path::new("../data")), Path::new("../data"));
    }

    fn load(text: &str) -> Result<LoadedConfig, String> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        LoadedConfig::from_str(text, Path::new("vigil.toml"), &dir).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
        device_id = "line-3"
        [mqtt]
        url = "mqtt://127.0.0.1:1884"
        [[models]]
        name = "ball"
        path = "models/ball/ball.onnx"
        confidence = 0.5
        [[cameras]]
        name = "cam1"
        source = "test://ball"
        fps = 10
        model = "ball"
    "#;

    #[test]
    fn accepts_a_good_config_and_fills_defaults() {
        let c = load(GOOD).expect("valid");
        assert_eq!(c.config.device_id, "line-3");
        assert_eq!((c.mqtt.host.as_str(), c.mqtt.port), ("127.0.0.1", 1884));
        assert_eq!(c.config.mqtt.topic_prefix, "vigil");
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.config.models[0].iou, None);
        assert_eq!(c.config.models[0].confidence, Some(0.5));
        assert!(c.config.models[0].path.is_absolute() || c.config.models[0].path.starts_with(".."));
        assert_eq!(c.sources.len(), 1);
    }

    #[test]
    fn the_empty_config_is_valid() {
        assert!(load("").is_ok());
    }

    #[test]
    fn names_an_unknown_field_and_where_it_is() {
        let e = load(&GOOD.replace("fps = 10", "fpss = 10")).unwrap_err();
        assert!(
            e.contains("cameras[0]") && e.contains("unknown field `fpss`") && e.contains("line 12"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn only_a_recording_analysed_frame_by_frame_is_lossless() {
        let cam = |src: &str, extra: &str| {
            let toml = GOOD.replace("source = \"test://ball\"", &format!("source = \"{src}\"\n{extra}"));
            toml::from_str::<Config>(&toml).expect("config").cameras[0].is_lossless()
        };
        assert!(cam("file:///clips/a.mp4", "realtime = false"));
        assert!(!cam("file:///clips/a.mp4", ""), "played in real time");
        assert!(!cam("rtsp://cam/s", "realtime = false"), "realtime only means something for files");
        assert!(!cam("test://ball", "realtime = false"));
    }

    #[test]
    fn motion_regions_need_motion_gating() {
        let on = GOOD.replace("fps = 10", "fps = 10\nmotion = { regions = true }");
        assert!(load(&on).expect("valid").config.cameras[0].motion.regions);
        let e = load(&GOOD.replace("fps = 10", "fps = 10\nmotion = { enabled = false, regions = true }"))
            .unwrap_err();
        assert!(e.contains("cameras[0].motion.regions = true") && e.contains("enabled = false"), "{e}");
    }

    #[test]
    fn names_bad_values_with_the_fix() {
        let e = load(&GOOD.replace("confidence = 0.5", "confidence = 1.5")).unwrap_err();
        assert!(e.contains("models[0].confidence = 1.5: must be between 0 and 1"), "{e}");
        let c = load(&GOOD.replace("test://ball", "foo://x")).expect("a bad source is the camera's problem");
        assert!(
            c.camera_problems[0].contains("cameras[0].source: unknown source scheme `foo://`"),
            "{:?}",
            c.camera_problems
        );
        assert!(c.sources[0].is_err());
        let e = load(&GOOD.replace("fps = 10", "fps = 10\ncrop = [0.5, 0.0, 0.8, 1.0]")).unwrap_err();
        assert!(e.contains("cameras[0].crop"), "{e}");
        let e = load(&GOOD.replace("fps = 10", "fps = 10\nrotate = 45")).unwrap_err();
        assert!(e.contains("cameras[0].rotate = 45"), "{e}");
        let e = load(&GOOD.replace("ball.onnx", "nope.onnx")).unwrap_err();
        assert!(e.contains("models[0].path") && e.contains("does not exist"), "{e}");
        let e = load(&GOOD.replace("model = \"ball\"", "model = \"yolo\"")).unwrap_err();
        assert!(e.contains("cameras[0].model = \"yolo\": no model has that name (models: ball)"), "{e}");
        let e = load(&GOOD.replace("mqtt://127.0.0.1:1884", "amqp://x")).unwrap_err();
        assert!(e.contains("mqtt.url") && e.contains("unknown scheme `amqp`"), "{e}");
        let e = load(&GOOD.replace("line-3", "line/3")).unwrap_err();
        assert!(e.contains("device_id = \"line/3\""), "{e}");
        let e = load(&GOOD.replace("fps = 10", "fps = \"ten\"")).unwrap_err();
        assert!(e.contains("cameras[0].fps") && e.contains("line 12"), "{e}");
    }

    #[test]
    fn lanes_are_checked_against_the_provider_and_the_cameras() {
        let with = |lanes: &str| GOOD.replace("confidence = 0.5", &format!("confidence = 0.5\n{lanes}"));
        assert_eq!(load(&with("lanes = 2")).expect("valid").config.models[0].lanes, Some(2));
        let e = load(&with("lanes = 17")).unwrap_err();
        assert!(e.contains("models[0].lanes = 17: at most 16"), "{e}");
        let e = load(&with("lanes = 2\nprovider = \"cuda\"")).unwrap_err();
        assert!(e.contains("models[0].lanes: lanes are for the CPU"), "{e}");
        let two =
            with("lanes = 2") + "[[cameras]]\nname = \"cam2\"\nsource = \"test://ball\"\nmodel = \"ball\"\n";
        let e = load(&two).unwrap_err();
        assert!(
            e.contains("models[0].lanes: lanes are for a model with one camera, and 2 use this one"),
            "{e}"
        );
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = GOOD.replace("confidence = 0.5", "confidence = 2.0\niou = 3.0");
        let e = LoadedConfig::from_str(&text, Path::new("v.toml"), Path::new(".")).unwrap_err();
        assert!(e.problems.len() >= 2, "{e:?}");
    }

    #[test]
    fn reads_the_password_from_a_file_and_never_prints_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pw"), "s3cret\n").expect("write");
        std::fs::create_dir_all(dir.path().join("models/ball")).expect("mkdir");
        std::fs::copy(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/ball/ball.onnx"),
            dir.path().join("models/ball/ball.onnx"),
        )
        .expect("copy");
        let text = GOOD.replace(
            "url = \"mqtt://127.0.0.1:1884\"",
            "url = \"mqtt://127.0.0.1:1884\"\nusername = \"vigil\"\npassword_file = \"pw\"",
        );
        let c = LoadedConfig::from_str(&text, Path::new("v.toml"), dir.path()).expect("valid");
        assert_eq!(c.mqtt.password.as_deref(), Some("s3cret"));
        assert!(!format!("{:?}", c.mqtt).contains("s3cret"));
    }

    #[test]
    fn refuses_unreadable_files_in_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = LoadedConfig::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cannot read the config file") && e.contains("directory"), "{e}");
        let bin = dir.path().join("bin.toml");
        std::fs::write(&bin, [0xff, 0xfe, 0x00]).expect("write");
        let e = LoadedConfig::load(&bin).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }
}
