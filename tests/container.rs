//! The container image, for real: built from this checkout by
//! deploy/docker/build.sh (base images made locally where no registry can be
//! reached), brought up with deploy/compose.yaml next to Mosquitto, and
//! watched from outside the containers: the demo's events over MQTT, a
//! snapshot over HTTP, the image's HEALTHCHECK, and `docker stop` ending
//! Vigil cleanly within its shutdown deadline with `offline` published.
//!
//! The Azure IoT Edge manifest's `createOptions` are given to the same
//! Docker Engine API call that IoT Edge's agent makes, and the image must
//! start and work with them.
//!
//! Needs a Docker Engine (the project's machines and CI run one).

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output};
use std::sync::OnceLock;
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

/// Docker's proxy accepts on the host port even while the container is
/// down, so wait for the broker's container to be running too.
fn wait_for_broker(container: &str, port: u16) {
    wait_until(Duration::from_secs(30), "Mosquitto in its container", || {
        docker(&["inspect", "-f", "{{.State.Running}}", container]) == "true"
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Builds vigil:local and vigil-mosquitto:local once for the tests here.
fn build_images() {
    static BUILT: OnceLock<bool> = OnceLock::new();
    let ok = *BUILT.get_or_init(|| {
        Command::new(repo_root().join("deploy/docker/build.sh")).status().expect("build.sh runs").success()
    });
    assert!(ok, "deploy/docker/build.sh failed");
}

#[test]
fn compose_runs_the_demo_and_stops_cleanly() {
    build_images();

    let compose = Compose {
        project: format!("vigiltest{}", std::process::id()),
        mqtt_port: free_port(),
        http_port: free_port(),
    };
    compose.ok(&["up", "-d", "--no-build"]);
    wait_for_broker(&compose.container("mosquitto"), compose.mqtt_port);
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

/// One call to the Docker Engine API on its Unix socket, the way IoT Edge's
/// agent creates and starts modules. HTTP/1.0: the answer is neither chunked
/// nor kept open.
fn docker_api(method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
    let mut sock = UnixStream::connect("/var/run/docker.sock").expect("the Docker Engine's socket");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        sock,
        "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write to the Docker socket");
    let mut answer = Vec::new();
    sock.read_to_end(&mut answer).expect("read from the Docker socket");
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// What the IoT Edge test starts; removed on drop, with the logs on failure.
#[derive(Default)]
struct EdgeSite {
    containers: Vec<String>,
    network: Option<String>,
    volume: Option<String>,
}

impl Drop for EdgeSite {
    fn drop(&mut self) {
        for c in &self.containers {
            if std::thread::panicking() {
                let logs = Command::new("docker").args(["logs", "--tail", "60", c]).output();
                if let Ok(out) = logs {
                    eprintln!(
                        "--- {c}\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        if let Some(n) = &self.network {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
        if let Some(v) = &self.volume {
            let _ = Command::new("docker").args(["volume", "rm", "-f", v]).output();
        }
    }
}

#[test]
fn the_iot_edge_create_options_start_the_image() {
    build_images();
    let id = std::process::id();
    let mut site = EdgeSite::default();
    let (mqtt_port, http_port) = (free_port(), free_port());

    // The site's files: the config folder the template mounts read-only at
    // /etc/vigil (readable by the image's non-root user, as /etc/vigil is on
    // a box), and a V4L2 device node (char 81:0) standing in for the camera
    // the template passes in.
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    write(
        &config_dir,
        "vigil.toml",
        r#"device_id = "edge"
data_dir = "/var/lib/vigil"
[mqtt]
url = "mqtt://broker:1883"
[http]
listen = "0.0.0.0:8080"
[[models]]
name = "ball"
path = "/usr/share/vigil/models/ball.onnx"
[[cameras]]
name = "demo"
source = "test://ball?width=320&height=240&fps=10"
fps = 10
model = "ball"
"#,
    );
    let camera = dir.path().join("video0");
    let made = Command::new("mknod").arg(&camera).args(["c", "81", "0"]).status().expect("mknod runs");
    assert!(made.success(), "mknod {camera:?} failed (the tests run as root)");
    for p in [dir.path(), &config_dir] {
        Command::new("chmod").arg("755").arg(p).status().unwrap();
    }

    // The template, filled in as the IoT Edge tools fill it from template.env.
    let iotedge = repo_root().join("deploy/iotedge");
    let template = std::fs::read_to_string(iotedge.join("deployment.template.json")).unwrap();
    let site_env = std::fs::read_to_string(iotedge.join("template.env")).unwrap();
    let volume = format!("vigiltest-data-{id}");
    let values = [
        ("VIGIL_IMAGE", "vigil:local".to_owned()),
        ("VIGIL_HTTP_PORT", http_port.to_string()),
        ("VIGIL_CONFIG_DIR", config_dir.display().to_string()),
        ("VIGIL_DATA_VOLUME", volume.clone()),
        ("VIGIL_CAMERA_DEVICE", camera.display().to_string()),
    ];
    let mut filled = template.clone();
    for (key, value) in &values {
        assert!(template.contains(&format!("${{{key}}}")), "the template no longer uses ${{{key}}}");
        assert!(site_env.contains(&format!("\n{key}=")), "template.env does not document {key}");
        filled = filled.replace(&format!("${{{key}}}"), value);
    }
    assert!(!filled.contains("${"), "a placeholder the test does not know: {filled}");
    let manifest: serde_json::Value = serde_json::from_str(&filled).expect("the template is JSON");
    let module = &manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["vigil"];
    assert_eq!(module["settings"]["image"], "vigil:local");
    let mut create = module["settings"]["createOptions"].clone();
    assert!(create.is_object(), "no createOptions for the vigil module");
    let route = manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
        .as_object()
        .expect("edgeHub routes");
    assert!(route.values().any(|r| r.as_str().is_some_and(|r| r.contains("INTO $upstream"))));

    // A broker on the module network (IoT Edge's is `azure-iot-edge`).
    let network = format!("vigiltest-edge-{id}");
    docker(&["network", "create", &network]);
    site.network = Some(network.clone());
    site.volume = Some(volume);
    let broker = format!("vigiltest-edge-broker-{id}");
    docker(&[
        "run",
        "-d",
        "--name",
        &broker,
        "--network",
        &network,
        "--network-alias",
        "broker",
        "-p",
        &format!("127.0.0.1:{mqtt_port}:1883"),
        "vigil-mosquitto:local",
    ]);
    site.containers.push(broker.clone());
    wait_for_broker(&broker, mqtt_port);
    let sub = Subscriber::connect(mqtt_port, "vigil/edge/#");

    // What the agent does with a module: its createOptions as the body of
    // POST /containers/create, plus the image and the module network.
    create["Image"] = "vigil:local".into();
    create["HostConfig"]["NetworkMode"] = network.clone().into();
    let name = format!("vigiltest-edge-vigil-{id}");
    let (status, created) = docker_api("POST", &format!("/containers/create?name={name}"), Some(&create));
    assert_eq!(status, 201, "the Docker Engine refused the createOptions: {created}");
    site.containers.push(name.clone());
    let (status, answer) = docker_api("POST", &format!("/containers/{name}/start"), None);
    assert_eq!(status, 204, "the container did not start: {answer}");

    sub.expect("vigil/edge/status", "online", Duration::from_secs(120));
    let url = format!("http://127.0.0.1:{http_port}/healthz");
    wait_until(Duration::from_secs(60), "/healthz on the published port to say ok", || {
        let (status, _, body) = http_get(&url);
        status == 200 && serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|h| h["status"] == "ok")
    });
    let exec = |args: &[&str]| {
        Command::new("docker").args(["exec", &name]).args(args).status().expect("docker exec runs").success()
    };
    assert_eq!(docker(&["exec", &name, "id", "-un"]), "vigil", "the module must not run as root");
    let uid = docker(&["exec", &name, "id", "-u"]);
    let k8s = std::fs::read_to_string(repo_root().join("deploy/k8s/vigil.yaml")).unwrap();
    assert!(
        k8s.contains(&format!("runAsUser: {uid}")) && k8s.contains(&format!("fsGroup: {uid}")),
        "deploy/k8s/vigil.yaml must run as the image's vigil user, uid and gid {uid}"
    );
    assert!(exec(&["test", "-c", "/dev/video0"]), "the camera device is not in the container");
    assert!(exec(&["test", "-s", "/var/lib/vigil/api-token"]), "data_dir is not on the writable volume");
    assert!(!exec(&["touch", "/usr/lib/vigil/x"]), "the root file system should be read-only");

    // Stopping a module: SIGTERM, and Vigil's own 5 s deadline.
    let started = Instant::now();
    let (status, answer) = docker_api("POST", &format!("/containers/{name}/stop?t=15"), None);
    assert_eq!(status, 204, "stop: {answer}");
    let took = started.elapsed();
    sub.expect("vigil/edge/status", "offline", Duration::from_secs(10));
    assert_eq!(docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]), "0", "Vigil must exit cleanly");
    assert!(took < Duration::from_secs(8), "stopping took {took:?}; Vigil's deadline is 5 s");
}
