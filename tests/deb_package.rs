//! The Debian package, for real: built by deploy/deb/build.sh from the
//! container image's files, installed with `apt-get install ./vigil_*.deb`
//! into a fresh container of the local Debian base (its dependencies come
//! from Debian's packages), then: the unit passes `systemd-analyze verify`,
//! `vigil check` passes on the shipped config, and the unit's own ExecStart
//! line, run as the `vigil` user, publishes the demo's events to a broker.
//!
//! Needs a Docker Engine (the project's machines and CI run one).

mod support;

use std::process::Command;

use support::*;

#[test]
fn the_deb_installs_checks_and_runs_its_service_command() {
    let root = repo_root();
    let build = Command::new(root.join("deploy/docker/build.sh")).status().expect("build.sh runs");
    assert!(build.success(), "deploy/docker/build.sh failed");
    let out = tempfile::tempdir().expect("tempdir");
    let deb = Command::new(root.join("deploy/deb/build.sh"))
        .args(["vigil:local"])
        .arg(out.path())
        .output()
        .expect("deploy/deb/build.sh runs");
    assert!(deb.status.success(), "deb build failed: {}", String::from_utf8_lossy(&deb.stderr));
    let deb = String::from_utf8_lossy(&deb.stdout).trim().to_owned();
    let name = std::path::Path::new(&deb).file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("vigil_") && name.ends_with("_amd64.deb"), "{name}");

    // Everything inside one fresh container; each step prints a marker the
    // assertions below look for, and the script stops at the first failure.
    let script = format!(
        r#"set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends /deb/{name} mosquitto mosquitto-clients systemd >/tmp/apt.log 2>&1 \
    || {{ tail -n 30 /tmp/apt.log; exit 1; }}
echo "installed: $(dpkg-query -W -f '${{Version}}' vigil)"
systemd-analyze verify /lib/systemd/system/vigil.service
echo "unit verified"
id vigil
runuser -u vigil -- vigil check --config /etc/vigil/vigil.toml
echo "config checked"
mosquitto -d -c /dev/null -p 1883 2>/dev/null || mosquitto -d
exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/vigil.service)
cd /var/lib/vigil
runuser -u vigil -- $exec_start >/tmp/vigil.log 2>&1 &
mosquitto_sub -h 127.0.0.1 -t 'vigil/vigil/events' -C 1 -W 90 >/tmp/event.json || {{ tail -n 30 /tmp/vigil.log; exit 1; }}
echo "event: $(cat /tmp/event.json)"
ls -ld /var/lib/vigil
"#
    );
    let run = Command::new("docker")
        .args(["run", "--rm", "-v"])
        .arg(format!("{}:/deb:ro", out.path().display()))
        .args(["debian:bookworm-slim", "bash", "-c", &script])
        .output()
        .expect("docker runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "in the container: {}\n{stdout}\n{stderr}", run.status);
    assert!(stdout.contains("installed: "), "{stdout}");
    assert!(stdout.contains("unit verified"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("groups=") && stdout.contains("(video)"),
        "vigil must be in the video group: {stdout}"
    );
    assert!(stdout.contains("config checked"), "{stdout}");
    let event = stdout.lines().find_map(|l| l.strip_prefix("event: ")).expect("an event line");
    let event: serde_json::Value = serde_json::from_str(event).expect("event JSON");
    assert_valid_event(&event);
    assert_eq!(event["device"], "vigil");
    assert!(stdout.contains("vigil vigil"), "data_dir owned by vigil: {stdout}");
}
