//! `vigil tools healthcheck`: the container image's HEALTHCHECK, without
//! shipping curl. It asks the running appliance's `/healthz` over loopback
//! and exits 0 only when it answers 200 with a health report in time.
//!
//! This is liveness: a broker outage or a dead camera makes `status`
//! `degraded` but not the process unhealthy (restarting it would not bring
//! the camera back); `--require-ok` makes `degraded` a failure too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub(crate) struct HealthcheckArgs {
    /// The appliance's HTTP address (its `http.listen`; 0.0.0.0 means loopback here).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) addr: SocketAddr,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) timeout_s: f64,
    /// Fail unless `status` is `ok` (by default any health report passes).
    #[arg(long)]
    pub(crate) require_ok: bool,
}

/// `Ok(status)` from the report, or why the check failed.
pub(crate) fn run(args: &HealthcheckArgs) -> Result<String, String> {
    let mut addr = args.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let timeout = Duration::try_from_secs_f64(args.timeout_s)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| format!("--timeout-s {} is not a positive number of seconds", args.timeout_s))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).and_then(|()| stream.set_write_timeout(Some(timeout))).ok();
    write!(stream, "GET /healthz HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut response = Vec::new();
    // Health reports are a few KiB; cap what a wrong peer could send.
    stream.take(4 << 20).read_to_end(&mut response).map_err(|e| format!("no answer from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr} sent no HTTP response"))?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("/healthz answered `{status_line}`"));
    }
    let report: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("/healthz sent no health report: {e}"))?;
    let status = report["status"].as_str().ok_or("/healthz report has no status")?.to_owned();
    if args.require_ok && status != "ok" {
        let reasons = report.get("reasons").map(|r| format!(": {r}")).unwrap_or_default();
        return Err(format!("status is {status}{reasons}"));
    }
    Ok(status)
}
