//! The broker link: delivers the outbox, in order, at least once.
//!
//! ```text
//!  outbox (disk) ──read in sequence order──▶ try_publish QoS 1 ──▶ rumqttc ──▶ broker
//!      ▲                                      FIFO: publish order = pkid order
//!      └───────── delete on PUBACK(pkid) ◀────────────────────────────┘
//!  per-frame detections (optional) ──▶ QoS 0, dropped when the link is down
//!  commands topic ──▶ inspection requests to the cameras
//! ```
//! Each connection gets a fresh client and event loop with a clean session:
//! what was in flight when a connection died is simply published again from
//! the outbox, oldest first, so ordering and delivery never depend on state
//! kept in memory. A consumer can see an event twice (its PUBACK was lost);
//! every event carries a unique `id` to de-duplicate on.
//!
//! The link reconnects with exponential back-off (0.5 s doubling to 5 s,
//! jittered). In Azure IoT Hub mode it also renews its SAS token before it
//! expires by reconnecting with a fresh one (nothing is lost: the outbox).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
// PEM parsing from rustls's own pki-types (rustls-pemfile is unmaintained).
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::azure;
use crate::config::{MqttTarget, TlsFiles};
use crate::event::{Published, Stamp, Timestamp};
use crate::outbox::Outbox;

/// Topics of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    pub events: String,
    /// Retained `online`/`offline`; `None` where the broker has no such thing (IoT Hub).
    pub status: Option<String>,
    /// Per-frame detections, QoS 0; `None` when not published.
    pub detections: Option<String>,
    pub commands: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str, detections: bool) -> Topics {
        Topics {
            events: format!("{prefix}/{device}/events"),
            status: Some(format!("{prefix}/{device}/status")),
            detections: detections.then(|| format!("{prefix}/{device}/detections")),
            commands: format!("{prefix}/{device}/commands"),
        }
    }
}

/// Connection state, for health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Connecting,
    Connected,
    Reconnecting,
    Stopped,
}

#[derive(Debug)]
pub struct MqttStatus {
    pub broker: String,
    state: Mutex<(LinkState, Option<String>)>,
    published: AtomicU64,
    acknowledged: AtomicU64,
    connects: AtomicU64,
    detections_dropped: AtomicU64,
    refused: AtomicU64,
    ack_timeouts: AtomicU64,
    /// Publish latency (capture to publish) of recent events, ms.
    latencies: Mutex<VecDeque<f64>>,
    /// The same, for `/metrics`.
    pub latency_histogram: crate::metrics::Histogram,
}

/// A snapshot of the broker link.
#[derive(Debug, Clone, Serialize)]
pub struct MqttHealth {
    pub broker: String,
    pub state: LinkState,
    pub last_error: Option<String>,
    /// Events handed to the MQTT client (republished ones count again).
    pub published: u64,
    /// Events the broker acknowledged (QoS 1 PUBACK) and the outbox forgot.
    pub acknowledged: u64,
    pub connects: u64,
    /// Per-frame detection messages not sent because the link was down or busy.
    pub detections_dropped: u64,
    /// Events larger than `mqtt.max_event_kb`, taken out of the outbox
    /// unsent (the broker would close the connection on each, and the
    /// event would block every one behind it forever).
    pub refused: u64,
    /// Connections given up because the broker stopped acknowledging.
    pub ack_timeouts: u64,
}

impl MqttStatus {
    pub fn new(broker: String) -> Arc<MqttStatus> {
        Arc::new(MqttStatus {
            broker,
            state: Mutex::new((LinkState::Connecting, None)),
            published: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            detections_dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            ack_timeouts: AtomicU64::new(0),
            latencies: Mutex::new(VecDeque::new()),
            latency_histogram: crate::metrics::Histogram::default(),
        })
    }

    pub fn health(&self) -> MqttHealth {
        let (state, last_error) = self.state.lock().clone();
        MqttHealth {
            broker: self.broker.clone(),
            state,
            last_error,
            published: self.published.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            detections_dropped: self.detections_dropped.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            ack_timeouts: self.ack_timeouts.load(Ordering::Relaxed),
        }
    }

    pub fn note_detection_dropped(&self) {
        self.detections_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Recent capture-to-publish latencies, ms (the last 10 000).
    pub fn latencies(&self) -> Vec<f64> {
        self.latencies.lock().iter().copied().collect()
    }

    /// The recent latencies, forgetting them (to measure from now on).
    pub fn take_latencies(&self) -> Vec<f64> {
        self.latencies.lock().drain(..).collect()
    }

    fn set(&self, state: LinkState, error: Option<String>) {
        *self.state.lock() = (state, error);
    }
}

/// Azure IoT Hub credentials.
#[derive(Clone)]
pub struct AzureAuth {
    pub hub: String,
    pub device: String,
    pub key: String,
    pub token_ttl: Duration,
}

impl std::fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureAuth")
            .field("hub", &self.hub)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Everything the link needs.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub target: MqttTarget,
    pub client_id: String,
    pub keep_alive: Duration,
    pub topics: Topics,
    pub azure: Option<AzureAuth>,
    /// Largest event published, in bytes (`mqtt.max_event_kb`).
    pub max_event_bytes: usize,
    /// How long a published event may wait for its PUBACK before the
    /// connection counts as dead and is made again (`mqtt.ack_timeout_s`).
    pub ack_timeout: Duration,
}

/// An inspection requested over MQTT.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Command {
    pub command: String,
    pub camera: String,
    #[serde(default)]
    pub part: Option<String>,
}

/// A command payload is refused above this size: a command is a line of JSON.
const MAX_COMMAND_BYTES: usize = 4096;

/// Parses a message on the commands topic. `retained` messages are refused:
/// a retained command would run again at every reconnect (and at every
/// start), long after whoever sent it has gone.
pub fn parse_command(payload: &[u8], retained: bool) -> Result<Command, String> {
    if retained {
        return Err("a retained command (it would run again at every reconnect); publish commands \
             without the retain flag"
            .into());
    }
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(format!("{} bytes; a command is at most {MAX_COMMAND_BYTES}", payload.len()));
    }
    let c: Command = serde_json::from_slice(payload)
        .map_err(|e| format!("not {{\"command\": \"inspect\", \"camera\": ...}}: {e}"))?;
    if c.command.len() > 64 || c.camera.len() > 64 || c.part.as_ref().is_some_and(|p| p.len() > 256) {
        return Err("a command, camera name or part id that is too long".into());
    }
    Ok(c)
}

const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Events in flight (published, not yet acknowledged) at most.
const WINDOW: usize = 100;

/// Starts the link. It runs until `stop`; then it waits briefly for
/// outstanding acknowledgements, publishes `offline` and disconnects.
pub fn spawn(
    cfg: LinkConfig,
    outbox: Arc<Outbox>,
    wake: Arc<Notify>,
    detections: mpsc::Receiver<Vec<u8>>,
    commands: mpsc::Sender<Command>,
    status: Arc<MqttStatus>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(cfg, outbox, wake, detections, commands, status, stop))
}

fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca_file {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| format!("mqtt.tls_ca_file {}: {e}", ca.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert
                    .map_err(|e| format!("mqtt.tls_ca_file {}: not PEM certificates ({e})", ca.display()))?;
                roots.add(cert).map_err(|e| format!("mqtt.tls_ca_file {}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("mqtt.tls_ca_file {}: no certificate in it", ca.display()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found (install ca-certificates) and no mqtt.tls_ca_file"
                        .into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&files.client_cert_file, &files.client_key_file) {
        (Some(cert), Some(key)) => {
            let certs = std::fs::read(cert)
                .map_err(|e| format!("mqtt.tls_client_cert_file {}: {e}", cert.display()))?;
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&certs)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("mqtt.tls_client_cert_file {}: {e}", cert.display()))?;
            let key_pem =
                std::fs::read(key).map_err(|e| format!("mqtt.tls_client_key_file {}: {e}", key.display()))?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
                pem::Error::NoItemsFound => {
                    format!("mqtt.tls_client_key_file {}: no private key in it", key.display())
                }
                e => format!("mqtt.tls_client_key_file {}: {e}", key.display()),
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Options for one connection; for Azure, with a token valid from now. Also
/// returns when that token should be renewed.
fn options(cfg: &LinkConfig) -> Result<(MqttOptions, Option<Instant>), String> {
    let t = &cfg.target;
    let mut o = MqttOptions::new(cfg.client_id.clone(), t.host.clone(), t.port);
    o.set_keep_alive(cfg.keep_alive);
    o.set_clean_session(true);
    // Room for the largest event plus its topic and the fields `stamp` adds.
    let max_packet = cfg.max_event_bytes + 4096;
    o.set_max_packet_size(max_packet.max(1 << 20), max_packet);
    o.set_request_channel_capacity(WINDOW + 16);
    o.set_inflight(WINDOW as u16);
    if let Some(status) = &cfg.topics.status {
        o.set_last_will(LastWill::new(status, "offline", QoS::AtLeastOnce, true));
    }
    let mut renew = None;
    if let Some(a) = &cfg.azure {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let expiry = now + a.token_ttl.as_secs();
        let token = azure::sas_token(&format!("{}/devices/{}", a.hub, a.device), &a.key, expiry)?;
        o.set_credentials(azure::username(&a.hub, &a.device), token);
        // Renew at 80 % of the lifetime: well before IoT Hub closes the connection.
        renew = Some(Instant::now() + a.token_ttl.mul_f64(0.8));
    } else if let Some(u) = &t.username {
        o.set_credentials(u.clone(), t.password.clone().unwrap_or_default());
    }
    if let Some(files) = &t.tls {
        o.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls_config(files)?)));
    }
    Ok((o, renew))
}

/// Adds `seq` (the outbox's sequence number: consecutive, rising across
/// restarts), `published_at` and `latency_ms` to a stored event JSON.
fn stamp(json: &[u8], seq: u64, captured_ms: u64) -> (Vec<u8>, f64) {
    stamp_at(json, seq, captured_ms, SystemTime::now())
}

fn stamp_at(json: &[u8], seq: u64, captured_ms: u64, now: SystemTime) -> (Vec<u8>, f64) {
    let now_ms = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
    let latency = ((now_ms - captured_ms as f64).max(0.0) * 10.0).round() / 10.0;
    // The stored event as a map, not as its type: the outbox may hold events
    // an earlier version wrote. Its keys come back in the order they were
    // stored (sorted), so the bytes on the wire are the stored ones plus the stamp.
    let stamped =
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(json).and_then(|event| {
            let stamp = Stamp { seq, published_at: Timestamp(now), latency_ms: latency };
            serde_json::to_vec(&Published { event: &event, stamp })
        });
    match stamped {
        Ok(out) => (out, latency),
        Err(e) => {
            tracing::warn!(seq, error = %e, "stored event is not a JSON object; published as stored");
            (json.to_vec(), latency)
        }
    }
}

/// Per-connection bookkeeping.
#[derive(Default)]
struct Session {
    connected: bool,
    /// Publishes handed to the client, in order: `Some(seq)` for outbox
    /// events, `None` for the rest (status, detections).
    fifo: VecDeque<Option<u64>>,
    pkids: HashMap<u16, u64>,
    /// The last outbox sequence number handed to the client.
    cursor: u64,
    in_flight: usize,
    acked: Vec<u64>,
    /// Since when events have been in flight with no PUBACK: the start of
    /// the wait the ack deadline measures (`None` with nothing in flight).
    waiting_since: Option<Instant>,
}

impl Session {
    fn on_event(&mut self, ev: &Event) {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Some(seq)) = self.fifo.pop_front()
                    && *pkid != 0
                {
                    self.pkids.insert(*pkid, seq);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = self.pkids.remove(&ack.pkid) {
                    self.acked.push(seq);
                    self.in_flight = self.in_flight.saturating_sub(1);
                    // Progress: the deadline counts from this ack.
                    self.waiting_since = (self.in_flight > 0).then(Instant::now);
                }
            }
            _ => {}
        }
    }
}

enum Outcome {
    Stop,
    Renew,
    Lost(String),
}

type Polled = Result<Event, rumqttc::ConnectionError>;

/// Runs one connection's event loop in a task of its own and hands what it
/// polls over a channel. rumqttc does not promise that dropping a `poll()`
/// half-way is safe (a packet half read or half written would be lost), and
/// the link's loop must wait on timers, the outbox and the stop signal at
/// the same time; receiving from a channel can be cancelled safely. The task
/// ends at the first error, or after the DISCONNECT has gone out.
fn spawn_poller(mut eventloop: rumqttc::EventLoop) -> (mpsc::Receiver<Polled>, JoinHandle<()>) {
    eventloop.network_options.set_connection_timeout(5);
    let (tx, rx) = mpsc::channel(2 * WINDOW);
    let task = tokio::spawn(async move {
        loop {
            let ev = eventloop.poll().await;
            let end = ev.is_err() || matches!(ev, Ok(Event::Outgoing(Outgoing::Disconnect)));
            if tx.send(ev).await.is_err() || end {
                break;
            }
        }
    });
    (rx, task)
}

async fn run(
    cfg: LinkConfig,
    outbox: Arc<Outbox>,
    wake: Arc<Notify>,
    mut detections: mpsc::Receiver<Vec<u8>>,
    commands: mpsc::Sender<Command>,
    status: Arc<MqttStatus>,
    stop: CancellationToken,
) {
    let broker = status.broker.clone();
    let mut backoff = BACKOFF_INITIAL;
    let mut detections_open = true;
    let mut ever_connected = false;
    loop {
        let (opts, renew_at) = match options(&cfg) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(%broker, error = %e, "MQTT settings unusable; fix the config");
                status.set(LinkState::Connecting, Some(e));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => continue,
                }
            }
        };
        let (client, eventloop) = AsyncClient::new(opts, WINDOW + 16);
        let (mut polled, poller) = spawn_poller(eventloop);
        let mut s = Session::default();
        let mut last_forget = Instant::now();
        let renew = async {
            match renew_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(renew);
        let outcome = loop {
            if s.connected {
                fill(&client, &outbox, &cfg, &status, &mut s).await;
            }
            // Acknowledged events are forgotten in batches: one transaction
            // per 64 acks, or after 20 ms at the latest.
            if !s.acked.is_empty()
                && (s.acked.len() >= 64 || last_forget.elapsed() >= Duration::from_millis(20))
            {
                last_forget = Instant::now();
                forget(&outbox, &status, std::mem::take(&mut s.acked)).await;
            }
            // A broker that stops acknowledging (paused, overloaded, a
            // half-open connection) would otherwise hold the window full
            // forever: past the deadline the connection is made again and
            // what was in flight is published again from the outbox.
            let ack_deadline = s.waiting_since.map(|t| t + cfg.ack_timeout);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break Outcome::Stop,
                ev = polled.recv() => match ev {
                    None => break Outcome::Lost("the MQTT event loop ended".into()),
                    Some(Err(e)) => break Outcome::Lost(describe(&e)),
                    Some(Ok(ev)) => {
                        s.on_event(&ev);
                        match ev {
                            Event::Incoming(Packet::ConnAck(_)) => {
                                s = Session { connected: true, ..Session::default() };
                                backoff = BACKOFF_INITIAL;
                                ever_connected = true;
                                status.connects.fetch_add(1, Ordering::Relaxed);
                                status.set(LinkState::Connected, None);
                                tracing::info!(%broker, waiting = outbox.len(), "MQTT connected");
                                if let Some(st) = &cfg.topics.status
                                    && client.try_publish(st, QoS::AtLeastOnce, true, "online").is_ok()
                                {
                                    s.fifo.push_back(None);
                                }
                                if let Err(e) = client.try_subscribe(&cfg.topics.commands, QoS::AtLeastOnce) {
                                    tracing::warn!(error = %e, "could not subscribe to commands");
                                }
                            }
                            Event::Incoming(Packet::Publish(p)) => match parse_command(&p.payload, p.retain) {
                                Ok(c) => {
                                    if commands.try_send(c).is_err() {
                                        tracing::warn!("inspection command dropped: too many pending");
                                    }
                                }
                                Err(e) => tracing::warn!(topic = %p.topic, error = %e, "ignoring a command"),
                            },
                            _ => {}
                        }
                    }
                },
                _ = async { if let Some(at) = ack_deadline { tokio::time::sleep_until(at.into()).await } },
                    if ack_deadline.is_some() =>
                {
                    status.ack_timeouts.fetch_add(1, Ordering::Relaxed);
                    break Outcome::Lost(format!(
                        "the broker acknowledged none of {} events in flight for {:?} (mqtt.ack_timeout_s); reconnecting",
                        s.in_flight, cfg.ack_timeout
                    ));
                }
                _ = wake.notified(), if s.connected => {}
                _ = tokio::time::sleep(Duration::from_millis(20)), if !s.acked.is_empty() => {}
                _ = &mut renew => break Outcome::Renew,
                // A closed channel (detections not published) would be ready
                // forever: the branch is switched off, or the loop would spin.
                d = detections.recv(), if s.connected && detections_open => match (d, &cfg.topics.detections) {
                    (Some(d), Some(topic)) => match client.try_publish(topic, QoS::AtMostOnce, false, d) {
                        Ok(()) => s.fifo.push_back(None),
                        Err(_) => status.note_detection_dropped(),
                    },
                    (Some(_), None) => {}
                    (None, _) => detections_open = false,
                },
            }
        };
        match outcome {
            Outcome::Stop => {
                if s.connected {
                    // The last events (open tracks' ends, stored as the
                    // cameras stopped) go out ahead of `offline`; `stop`
                    // wins over the writer's nudge in the select above.
                    fill(&client, &outbox, &cfg, &status, &mut s).await;
                    goodbye(&client, &mut polled, &cfg, &outbox, &status, &mut s).await;
                }
                poller.abort();
                break;
            }
            Outcome::Renew => {
                tracing::info!("renewing the IoT Hub SAS token: reconnecting");
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_secs(2), drain(&mut polled, &mut s)).await;
                forget(&outbox, &status, std::mem::take(&mut s.acked)).await;
                poller.abort();
            }
            Outcome::Lost(error) => {
                poller.abort();
                // Acks that came in before the connection died still count.
                forget(&outbox, &status, std::mem::take(&mut s.acked)).await;
                let state = if ever_connected { LinkState::Reconnecting } else { LinkState::Connecting };
                status.set(state, Some(error.clone()));
                let wait = backoff.mul_f64(0.5 + 0.5 * jitter());
                tracing::warn!(
                    %broker,
                    %error,
                    waiting = outbox.len(),
                    retry_in_ms = wait.as_millis() as u64,
                    "MQTT broker unreachable; retrying (events wait in the outbox on disk)"
                );
                backoff = (backoff * 2).min(BACKOFF_MAX);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    let (_, error) = status.state.lock().clone();
    status.set(LinkState::Stopped, error);
}

/// Removes acknowledged events from the outbox (they are not sent again).
async fn forget(outbox: &Arc<Outbox>, status: &MqttStatus, acked: Vec<u64>) {
    if acked.is_empty() {
        return;
    }
    let n = acked.len() as u64;
    let ob = outbox.clone();
    match tokio::task::spawn_blocking(move || ob.remove(&acked)).await {
        Ok(Ok(())) => {
            status.acknowledged.fetch_add(n, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not forget acknowledged events (they will be sent again)")
        }
        Err(e) => tracing::error!(error = %e, "outbox task failed"),
    }
}

/// Hands the client the next events from the outbox, up to the window.
/// An event too large to publish is taken out of the outbox and counted:
/// left at the head, it would be sent, refused and sent again forever, and
/// nothing behind it would ever go out.
async fn fill(
    client: &AsyncClient,
    outbox: &Arc<Outbox>,
    cfg: &LinkConfig,
    status: &MqttStatus,
    s: &mut Session,
) {
    while s.in_flight < WINDOW {
        let (ob, after, max) = (outbox.clone(), s.cursor, WINDOW - s.in_flight);
        let batch = match tokio::task::spawn_blocking(move || ob.read_after(after, max)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the outbox");
                return;
            }
            Err(_) => return,
        };
        if batch.is_empty() {
            return;
        }
        let mut too_big = Vec::new();
        let mut full = false;
        for e in batch {
            let (payload, latency) = stamp(&e.json, e.seq, e.captured_ms);
            if payload.len() > cfg.max_event_bytes {
                tracing::error!(
                    seq = e.seq,
                    bytes = payload.len(),
                    max_bytes = cfg.max_event_bytes,
                    "event too large to publish: refused and removed from the outbox (raise mqtt.max_event_kb \
                     if the broker takes larger messages)"
                );
                status.refused.fetch_add(1, Ordering::Relaxed);
                too_big.push(e.seq);
                s.cursor = e.seq;
                continue;
            }
            if client.try_publish(&cfg.topics.events, QoS::AtLeastOnce, false, payload).is_err() {
                // The client's queue is full: continue after the next poll.
                full = true;
                break;
            }
            s.fifo.push_back(Some(e.seq));
            s.cursor = e.seq;
            s.in_flight += 1;
            s.waiting_since.get_or_insert_with(Instant::now);
            status.published.fetch_add(1, Ordering::Relaxed);
            status.latency_histogram.observe(latency / 1000.0);
            let mut l = status.latencies.lock();
            if l.len() >= 10_000 {
                l.pop_front();
            }
            l.push_back(latency);
        }
        if !too_big.is_empty() {
            let ob = outbox.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || ob.remove(&too_big)).await {
                tracing::error!(error = %e, "could not remove refused events (they will be refused again)");
            }
        }
        if full {
            return;
        }
    }
}

/// On shutdown: wait (up to `ACK_GRACE`) for the events in flight to be
/// acknowledged, forget those, then publish `offline` and disconnect (up
/// to `BYE_GRACE` more). What is not acknowledged by then stays in the
/// outbox and goes first at the next start.
async fn goodbye(
    client: &AsyncClient,
    polled: &mut mpsc::Receiver<Polled>,
    cfg: &LinkConfig,
    outbox: &Arc<Outbox>,
    status: &MqttStatus,
    s: &mut Session,
) {
    let deadline = Instant::now() + ACK_GRACE;
    if s.in_flight > 0 {
        tracing::info!(in_flight = s.in_flight, "waiting for the broker to acknowledge the events in flight");
    }
    while s.in_flight > 0 {
        match tokio::time::timeout_at(deadline.into(), polled.recv()).await {
            Ok(Some(Ok(ev))) => s.on_event(&ev),
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    let unacked = s.in_flight;
    if let Some(st) = &cfg.topics.status {
        let _ = client.try_publish(st, QoS::AtLeastOnce, true, "offline");
        s.fifo.push_back(None);
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(BYE_GRACE, drain(polled, s)).await;
    if unacked > 0 {
        tracing::warn!(
            unacked,
            "shutting down with events unacknowledged; they are sent again at the next start"
        );
    }
    let acked = std::mem::take(&mut s.acked);
    let n = acked.len() as u64;
    if outbox.remove(&acked).is_ok() {
        status.acknowledged.fetch_add(n, Ordering::Relaxed);
    }
}

/// How long shutdown waits for the events in flight to be acknowledged...
const ACK_GRACE: Duration = Duration::from_secs(2);
/// ...and then for `offline` and the DISCONNECT to go out.
const BYE_GRACE: Duration = Duration::from_secs(1);

/// Reads what the event loop polls until the DISCONNECT has gone out (acks
/// that arrive meanwhile still count).
async fn drain(polled: &mut mpsc::Receiver<Polled>, s: &mut Session) {
    while let Some(Ok(ev)) = polled.recv().await {
        s.on_event(&ev);
        if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
            break;
        }
    }
}

fn jitter() -> f64 {
    let n = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    f64::from((n ^ (n >> 7)) % 1000) / 1000.0
}

/// One line a person can act on.
fn describe(e: &rumqttc::ConnectionError) -> String {
    match e {
        rumqttc::ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused: is the broker running and listening on that port?".into()
        }
        rumqttc::ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?}): check mqtt.username and the password")
        }
        rumqttc::ConnectionError::NetworkTimeout => "no answer from the broker within 5 s".into(),
        rumqttc::ConnectionError::Tls(t) => format!(
            "TLS failed ({t}): check mqtt.tls_ca_file (the CA that signed the broker's certificate) and that the URL's host name is in the certificate"
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_adds_publish_time_and_latency_inside_the_object() {
        let captured = SystemTime::now().duration_since(UNIX_EPOCH).expect("now").as_millis() as u64 - 250;
        let (out, latency) = stamp(br#"{"type":"object.start","id":"x"}"#, 42, captured);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
        assert_eq!((v["type"].as_str(), v["seq"].as_u64()), (Some("object.start"), Some(42)));
        assert!(v["published_at"].as_str().is_some_and(|s| s.ends_with('Z')));
        assert!((250.0..5000.0).contains(&latency), "{latency}");
        assert_eq!(v["latency_ms"].as_f64(), Some(latency));
    }

    /// What a consumer receives, byte for byte, for an event as the outbox
    /// stores it: `seq`, `published_at` and `latency_ms` last, in that order,
    /// a whole-number latency without a fraction.
    #[test]
    fn stamped_events_keep_their_bytes_on_the_wire() {
        let stored = concat!(
            r#"{"camera":"cam1","device":"box-7","frame":{"height":48,"seq":3,"width":64},"#,
            r#""id":"019ae0a1-2b3c-7d4e-8f60-718293a4b5c6","model":{"name":"ball","sha256":"#,
            r#""0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","version":2},"#,
            r#""schema_version":1,"time":"2026-11-18T11:06:40.300Z","track":{"box":[5.3,20.0,15.6,30.7],"#,
            r#""box_norm":[0.0828,0.4167,0.2438,0.6396],"class_id":0,"id":1,"label":"ball","score":0.901},"#,
            r#""type":"object.start"}"#
        );
        let captured = 1_795_000_000_300;
        let at = |ms: u64| UNIX_EPOCH + Duration::from_micros(ms);
        let (out, latency) = stamp_at(stored.as_bytes(), 42, captured, at(1_795_000_000_300_000 + 250_040));
        assert_eq!(latency, 250.0);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            stored.trim_end_matches('}').to_owned()
                + r#","seq":42,"published_at":"2026-11-18T11:06:40.550Z","latency_ms":250}"#
        );
        let (out, latency) = stamp_at(stored.as_bytes(), 43, captured, at(1_795_000_000_300_000 + 12_345));
        assert_eq!(latency, 12.3);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            stored.trim_end_matches('}').to_owned()
                + r#","seq":43,"published_at":"2026-11-18T11:06:40.312Z","latency_ms":12.3}"#
        );
    }
}
