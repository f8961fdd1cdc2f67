//! Publishing events to the MQTT broker.
//!
//! ```text
//!  inference workers ──(bounded channel, blocks when full)──▶ publisher task
//!                                                               │ client.publish (QoS 1)
//!                                                               ▼
//!                                          rumqttc request queue (bounded) ──▶ event-loop task ──▶ broker
//! ```
//! The event loop task owns the connection: it reconnects with exponential
//! back-off, publishes the retained `online` status after every connect, and
//! records state for health. The broker publishes the retained `offline` last
//! will when Vigil vanishes; a clean shutdown publishes it itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::MqttTarget;
use crate::event::DetectionsEvent;

/// Topics of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    pub events: String,
    pub status: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str) -> Topics {
        Topics { events: format!("{prefix}/{device}/events"), status: format!("{prefix}/{device}/status") }
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
}

/// A snapshot of the broker link.
#[derive(Debug, Clone, Serialize)]
pub struct MqttHealth {
    pub broker: String,
    pub state: LinkState,
    pub last_error: Option<String>,
    /// Events handed to the MQTT client.
    pub published: u64,
    /// Of those, acknowledged by the broker (QoS 1 PUBACK).
    pub acknowledged: u64,
    pub connects: u64,
}

impl MqttStatus {
    pub fn new(broker: String) -> Arc<MqttStatus> {
        Arc::new(MqttStatus {
            broker,
            state: Mutex::new((LinkState::Connecting, None)),
            published: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            connects: AtomicU64::new(0),
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
        }
    }
}

/// Settings for [`spawn`].
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    pub target: MqttTarget,
    pub client_id: String,
    pub keep_alive: Duration,
    pub device: String,
    pub topics: Topics,
}

const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Starts the publisher. It runs until `events` closes (every sender dropped),
/// then publishes `offline`, disconnects and returns.
pub fn spawn(
    settings: PublisherSettings,
    mut events: mpsc::Receiver<DetectionsEvent>,
    status: Arc<MqttStatus>,
) -> JoinHandle<()> {
    let t = &settings.target;
    let mut options = MqttOptions::new(settings.client_id.clone(), t.host.clone(), t.port);
    options.set_keep_alive(settings.keep_alive);
    // A persistent session: QoS 1 messages not yet acknowledged when the link
    // drops are sent again after the reconnect rather than forgotten.
    options.set_clean_session(false);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_request_channel_capacity(64);
    options.set_last_will(LastWill::new(&settings.topics.status, "offline", QoS::AtLeastOnce, true));
    if let (Some(u), Some(p)) = (&t.username, &t.password) {
        options.set_credentials(u.clone(), p.clone());
    } else if let Some(u) = &t.username {
        options.set_credentials(u.clone(), "");
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    eventloop.network_options.set_connection_timeout(5);

    let driver = {
        let (client, status, topics) = (client.clone(), status.clone(), settings.topics.clone());
        let broker = status.broker.clone();
        tokio::spawn(async move {
            let mut backoff = BACKOFF_INITIAL;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = BACKOFF_INITIAL;
                        status.connects.fetch_add(1, Ordering::Relaxed);
                        *status.state.lock() = (LinkState::Connected, None);
                        tracing::info!(%broker, "MQTT connected");
                        // try_publish: this task must never wait on the request
                        // queue it is itself responsible for draining.
                        if let Err(e) = client.try_publish(&topics.status, QoS::AtLeastOnce, true, "online") {
                            tracing::warn!(error = %e, "could not queue the online status");
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        status.acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                        status.state.lock().0 = LinkState::Stopped;
                        break;
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(e) => {
                        let error = describe(&e);
                        let was = status.state.lock().0;
                        let next = if was == LinkState::Connected || was == LinkState::Reconnecting {
                            LinkState::Reconnecting
                        } else {
                            LinkState::Connecting
                        };
                        *status.state.lock() = (next, Some(error.clone()));
                        tracing::warn!(
                            %broker,
                            %error,
                            retry_in_ms = backoff.as_millis() as u64,
                            "MQTT broker unreachable; retrying (events wait in a bounded queue)"
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        })
    };

    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let payload = event.to_json(&settings.device, SystemTime::now(), Instant::now());
            if let Err(e) = client.publish(&settings.topics.events, QoS::AtLeastOnce, false, payload).await {
                tracing::error!(error = %e, "MQTT client closed; event not published");
                break;
            }
            status.published.fetch_add(1, Ordering::Relaxed);
        }
        // Every producer is gone: say goodbye while the link may still be up.
        if status.state.lock().0 == LinkState::Connected {
            let _ = client.publish(&settings.topics.status, QoS::AtLeastOnce, true, "offline").await;
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(3), driver).await;
        } else {
            driver.abort();
        }
        status.state.lock().0 = LinkState::Stopped;
    })
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
        other => other.to_string(),
    }
}
