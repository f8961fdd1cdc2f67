//! systemd's notify protocol (sd_notify(3)), for `Type=notify` units: no
//! library, one datagram per message to `$NOTIFY_SOCKET`.
//!
//! - `READY=1` once cameras and models are up and the API listens;
//! - `WATCHDOG=1` every half `WatchdogSec=`, but only while the appliance
//!   makes progress (see [`Progress`]): a wedged process stops pinging and
//!   systemd restarts it;
//! - `STOPPING=1` when shutdown begins.
//!
//! Outside systemd (`$NOTIFY_SOCKET` unset) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use vigil_pipeline::Health;

pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// The notify socket systemd gave this process, if any.
    pub(crate) fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            // An abstract socket (systemd uses them for some services).
            Some(name) => {
                <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
                    name,
                )
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&path),
        };
        let addr = addr
            .map_err(|e| tracing::warn!(error = %e, "NOTIFY_SOCKET is not a usable socket address"))
            .ok()?;
        let socket = UnixDatagram::unbound()
            .map_err(|e| tracing::warn!(error = %e, "cannot open a socket to notify systemd"))
            .ok()?;
        Some(Notifier { socket, addr })
    }

    pub(crate) fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            tracing::warn!(error = %e, message, "could not notify systemd");
        }
    }
}

/// How often to ping, when systemd asks for a watchdog: half its timeout,
/// as sd_watchdog_enabled(3) advises.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// Whether the appliance moved between two health reports a watchdog
/// interval apart. Only what a restart could fix counts against it: a camera
/// that is reconnecting, a broker that is away or a model that refuses
/// frames are reported in health and retried, and do not stop the pings.
#[derive(Default)]
pub(crate) struct Progress {
    last: Vec<Counters>,
}

/// What one camera had done at one health report.
#[derive(Debug, Clone, PartialEq)]
struct Counters {
    camera: String,
    /// Streaming to a model: only then must frames get answers.
    inferring: bool,
    received: u64,
    /// Frames the model answered (a result or an error) or that were skipped as still.
    answered: u64,
}

impl Progress {
    /// `Err(reason)` when the appliance is wedged.
    pub(crate) fn check(&mut self, now: &Health) -> Result<(), String> {
        let now: Vec<Counters> = now
            .cameras
            .iter()
            .map(|c| Counters {
                camera: c.name.clone(),
                inferring: c.model.is_some() && c.state == "streaming",
                received: c.frames_received,
                answered: c.frames_processed + c.frames_skipped_still + c.inference_errors,
            })
            .collect();
        let verdict = stalled(&self.last, &now);
        self.last = now;
        verdict
    }
}

fn stalled(before: &[Counters], now: &[Counters]) -> Result<(), String> {
    for cam in now.iter().filter(|c| c.inferring) {
        let Some(prev) = before.iter().find(|c| c.camera == cam.camera) else { continue };
        // Frames keep arriving, yet the model answered none of them: the
        // runner is stuck (a restart is the cure).
        if cam.received > prev.received && cam.answered == prev.answered {
            return Err(format!(
                "camera {}: {} frames arrived and the model answered none",
                cam.camera,
                cam.received - prev.received
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cam(received: u64, answered: u64, inferring: bool) -> Vec<Counters> {
        vec![Counters { camera: "door".into(), inferring, received, answered }]
    }

    #[test]
    fn frames_without_answers_are_a_wedge() {
        assert!(stalled(&cam(10, 10, true), &cam(40, 10, true)).unwrap_err().contains("door: 30 frames"));
    }

    #[test]
    fn answers_errors_and_idle_cameras_are_progress() {
        assert!(stalled(&cam(10, 10, true), &cam(40, 11, true)).is_ok(), "one answer is progress");
        assert!(stalled(&cam(10, 10, true), &cam(10, 10, true)).is_ok(), "no frames: nothing to answer");
        assert!(stalled(&cam(10, 10, false), &cam(40, 10, false)).is_ok(), "reconnecting or no model");
        assert!(stalled(&[], &cam(40, 10, true)).is_ok(), "the first report has nothing to compare");
    }
}
