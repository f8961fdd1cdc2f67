//! The container image, for real: built from this checkout by
//! deploy/docker/build.sh (base images made locally where no registry can be
//! reached), brought up with deploy/compose.yaml next to Mosquitto, and
//! watched from outside the containers: the demo's events over MQTT, a
//! snapshot over HTTP, the image's HEALTHCHECK, and `docker stop` ending
//! Vigil cleanly within its shutdown deadline with `offline` published.
//!
//! Needs a Docker Engine (the project's machines and CI run one).

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

/// A compose project of our own, on free host ports; taken down (with its
/// volume) on drop.
struct Compose {
    project: String,
    mqtt_port: u16,
    http_port: u16,
}

impl Compose {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .current_dir(repo_root())
            .args(["-p", &self.project, "-f", "deploy/compose.yaml"])
            .args(args)
            .env("VIGIL_MQTT_PORT", self.mqtt_port.to_string())
            .env("VIGIL_HTTP_PORT", self.http_port.to_string())
            .output()
            .expect("docker-compose runs (install Debian's docker-compose)")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker-compose {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn container(&self, service: &str) -> String {
        self.ok(&["ps", "-q", service]).trim().to_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}",
                String::from_utf8_lossy(&self.run(&["logs", "--no-color", "--tail", "80"]).stdout)
            );
        }
        let _ = self.run(&["down", "-v", "-t", "2"]);
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker runs");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn compose_runs_the_demo_and_stops_cleanly() {
    let build = Command::new(repo_root().join("deploy/docker/build.sh")).status().expect("build.sh runs");
    assert!(build.success(), "deploy/docker/build.sh failed");

    let compose = Compose {
        project: format!("vigiltest{}", std::process::id()),
        mqtt_port: free_port(),
        http_port: free_port(),
    };
    compose.ok(&["up", "-d", "--no-build"]);
    // Docker's proxy accepts on the host port even while the container is
    // down, so wait for the broker's container to be running too.
    let mosquitto = compose.container("mosquitto");
    wait_until(Duration::from_secs(30), "Mosquitto in its container", || {
        docker(&["inspect", "-f", "{{.State.Running}}", &mosquitto]) == "true"
            && std::net::TcpStream::connect(("127.0.0.1", compose.mqtt_port)).is_ok()
    });
    let sub = Subscriber::connect(compose.mqtt_port, "vigil/demo/#");
    sub.expect("vigil/demo/status", "online", Duration::from_secs(120));

    // The demo's ball crosses the middle line and enters the left zone: real
    // events from the model, each valid against its schema.
    let events = collect_events(&sub, "vigil/demo/events", Duration::from_secs(120), |evs| {
        evs.iter().any(|e| e["snapshot"].is_string()) && evs.iter().any(|e| e["type"] == "line.cross")
    });
    let with_snapshot = events.iter().find(|e| e["snapshot"].is_string()).expect("an event with a snapshot");

    // The snapshot over HTTP from outside, with the token the appliance made
    // in its data volume.
    let token = compose.ok(&["exec", "-T", "vigil", "cat", "/var/lib/vigil/api-token"]).trim().to_owned();
    assert!(!token.is_empty(), "no API token in the data volume");
    let url =
        format!("http://127.0.0.1:{}{}", compose.http_port, with_snapshot["snapshot"].as_str().unwrap());
    let (status, ctype, body) = http_request("GET", &url, Some(&token), &[], None);
    assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
    assert_eq!(ctype, "image/jpeg");
    assert!(body.starts_with(&[0xFF, 0xD8]) && body.len() > 1000, "not a JPEG: {} bytes", body.len());
    let (status, _, _) = http_request("GET", &url, None, &[], None);
    assert_eq!(status, 401, "the snapshot must need the token");

    // The image's HEALTHCHECK (vigil tools healthcheck) turns healthy.
    let vigil = compose.container("vigil");
    wait_until(Duration::from_secs(90), "the HEALTHCHECK to pass", || {
        docker(&["inspect", "-f", "{{.State.Health.Status}}", &vigil]) == "healthy"
    });
    assert_eq!(
        docker(&["inspect", "-f", "{{.Config.User}}", &vigil]),
        "vigil",
        "the image must not run as root"
    );

    // docker stop: SIGTERM, then Vigil's own 5 s deadline; compose allows 15 s
    // before SIGKILL, so a kill would show as exit code 137 and a long wait.
    let started = Instant::now();
    compose.ok(&["stop", "-t", "15", "vigil"]);
    let took = started.elapsed();
    sub.expect("vigil/demo/status", "offline", Duration::from_secs(10));
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &vigil]);
    assert_eq!(code, "0", "Vigil must exit cleanly on SIGTERM (137 is SIGKILL)");
    assert!(took < Duration::from_secs(8), "docker stop took {took:?}; Vigil's deadline is 5 s");
}
