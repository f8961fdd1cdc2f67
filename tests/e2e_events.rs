//! Events end to end, with a real pipeline and a real Mosquitto: tracked
//! objects, zones, lines and rules on a clip of one object crossing the
//! frame; every event through a 30 s broker outage and through a SIGKILL;
//! inspection commands over MQTT; Azure IoT Hub mode over TLS. Every message
//! received is validated against the JSON Schema of its type.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use support::*;

fn model_line() -> String {
    format!(
        "[[models]]\nname = \"ball\"\npath = \"{}\"\nconfidence = 0.5\niou = 0.45\n",
        ball_model().display()
    )
}

fn head(device: &str, mqtt_url: &str) -> String {
    format!(
        "device_id = \"{device}\"\n[mqtt]\nurl = \"{mqtt_url}\"\nkeep_alive_s = 5\n[http]\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// Received events by type (after de-duplicating by id).
fn by_type(events: &[Value]) -> HashMap<String, Vec<Value>> {
    let mut seen = HashSet::new();
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for e in events {
        if seen.insert(e["id"].as_str().unwrap_or("").to_owned()) {
            out.entry(e["type"].as_str().unwrap_or("").to_owned()).or_default().push(e.clone());
        }
    }
    out
}

/// Collects until every event the device wrote so far has arrived: the
/// received sequence numbers cover 1..=written and the outbox is empty.
fn collect_all(
    vigil: &Vigil,
    sub: &Subscriber,
    topic: &str,
    timeout: Duration,
    mut events: Vec<Value>,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let h = vigil.health();
        let written = h["outbox"]["written"].as_u64().unwrap_or(0);
        let waiting = h["outbox"]["waiting"].as_u64().unwrap_or(1);
        let seqs: BTreeSet<u64> = events.iter().filter_map(|e: &Value| e["seq"].as_u64()).collect();
        if waiting == 0 && written > 0 && (1..=written).all(|s| seqs.contains(&s)) {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all {written} events arrived (waiting {waiting}, got {})",
            seqs.len()
        );
        events.extend(collect_events(sub, topic, Duration::from_secs(20), |v| !v.is_empty()));
    }
}

#[test]
fn one_object_crossing_a_zone_gives_one_of_each_event() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "vigil/belt/events");
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("crossing.avi");
    make_crossing_clip(&clip, 20, 12.0, 30);
    let config = format!(
        r#"{head}{model}
[[cameras]]
name = "belt"
source = "file://{clip}"
model = "ball"
loop = false
zones = [{{ name = "station", polygon = [[0.35, 0.2], [0.65, 0.2], [0.65, 0.8], [0.35, 0.8]], anchor = "center" }}]
lines = [{{ name = "gate", from = [0.8, 0.0], to = [0.8, 1.0], anchor = "center" }}]
[[rules]]
name = "ppe"
type = "safety"
camera = "belt"
labels = ["ball"]
zone = "station"
min_duration_s = 0.2
[[rules]]
name = "bay"
type = "curbside"
camera = "belt"
labels = ["ball"]
zone = "station"
dwell_s = 0.2
[[rules]]
name = "qa"
type = "inspection"
camera = "belt"
labels = ["ball"]
part_labels = ["ball"]
zone = "station"
"#,
        head = head("belt", &broker.url()),
        model = model_line(),
        clip = clip.display(),
    );
    let vigil = Vigil::start(&config);
    wait_until(Duration::from_secs(60), "the clip to end", || {
        camera_health(&vigil, "belt")["state"] == "ended"
    });
    let events = collect_all(&vigil, &sub, "vigil/belt/events", Duration::from_secs(60), Vec::new());
    let t = by_type(&events);
    let count = |k: &str| t.get(k).map_or(0, Vec::len);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for k in [
        "object.start",
        "object.end",
        "zone.enter",
        "zone.exit",
        "line.cross",
        "safety.alert",
        "safety.clear",
        "curbside.arrival",
        "curbside.departure",
        "inspection.verdict",
    ] {
        assert_eq!(count(k), 1, "exactly one {k}: {kinds:?}");
    }
    assert_eq!(
        count("object.update") + 10,
        events.len() - dupes(&events),
        "nothing else was sent: {kinds:?}"
    );
    // All about the same object, in the order things happened.
    let track = t["object.start"][0]["track"]["id"].as_u64().expect("track id");
    for e in events.iter().filter(|e| e.get("track").is_some()) {
        assert_eq!(e["track"]["id"].as_u64(), Some(track), "{e}");
    }
    let pos = |k: &str| kinds.iter().position(|x| *x == k).expect("present");
    assert!(
        pos("object.start") < pos("zone.enter")
            && pos("zone.enter") < pos("zone.exit")
            && pos("zone.exit") < pos("object.end")
    );
    assert!(pos("safety.alert") < pos("safety.clear") && pos("curbside.arrival") < pos("curbside.departure"));
    let exit = &t["zone.exit"][0];
    assert_eq!(exit["zone"], "station");
    assert!(exit["dwell_s"].as_f64().expect("dwell") > 0.3, "{exit}");
    assert_eq!(t["line.cross"][0]["direction"], "left", "moving right across a line drawn downwards");
    let verdict = &t["inspection.verdict"][0];
    assert_eq!((verdict["verdict"].as_str(), verdict["trigger"].as_str()), (Some("NG"), Some("zone")));
    assert_eq!(verdict["part"]["track"].as_u64(), Some(track));
    let end = &t["object.end"][0];
    assert!(end["duration_s"].as_f64().expect("duration") > 1.0, "{end}");
    // Snapshots named in events are there to fetch.
    for e in [end, verdict, &t["safety.alert"][0], &t["curbside.arrival"][0]] {
        let url = e["snapshot"].as_str().unwrap_or_else(|| panic!("no snapshot: {e}"));
        wait_until(Duration::from_secs(10), "snapshot written", || vigil.get(url).0 == 200);
        let (_, ctype, body) = vigil.get(url);
        assert_eq!(ctype, "image/jpeg");
        assert_eq!(&body[..2], &[0xff, 0xd8]);
    }
    // A real JPEG just outside the snapshots folder: only the name check keeps it out.
    let jpeg = vigil.get(end["snapshot"].as_str().expect("snapshot")).2;
    std::fs::write(vigil.dir.path().join("vigil-data").join("outside.jpg"), jpeg).expect("outside.jpg");
    assert_eq!(vigil.get("/api/v1/snapshots/..%2Foutside.jpg").0, 404);
    let lines = &camera_health(&vigil, "belt")["lines"][0];
    assert_eq!(
        (lines["name"].as_str(), lines["left"].as_u64(), lines["right"].as_u64()),
        (Some("gate"), Some(1), Some(0))
    );
}

/// Waits for an instant when every event produced is accounted for
/// (`outbox.emitted` = `written`, none held in memory, none lost) and
/// returns that count. Events keep coming, so it polls: the few on their
/// way to the writer make the two differ only for a moment.
fn every_event_accounted_for(vigil: &Vigil) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = vigil.health();
        let o = &h["outbox"];
        assert_eq!(o["lost"], 0, "events lost before they were stored: {o}");
        let emitted = o["emitted"].as_u64().expect("outbox.emitted");
        if o["pending"] == 0 && o["written"].as_u64() == Some(emitted) {
            return emitted;
        }
        assert!(std::time::Instant::now() < deadline, "events produced but never stored: {o}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dupes(events: &[Value]) -> usize {
    let ids: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    events.len() - ids.len()
}

/// Asserts delivery: every sequence number from `from` to the highest, each
/// id once after de-duplication, first arrivals in order.
fn assert_complete_and_ordered(events: &[Value], from: u64) -> (u64, usize) {
    let mut first_seen = Vec::new();
    let mut ids = HashMap::new();
    for e in events {
        let (id, seq) = (e["id"].as_str().expect("id"), e["seq"].as_u64().expect("seq"));
        if let Some(prev) = ids.insert(id.to_owned(), seq) {
            assert_eq!(prev, seq, "one id, one sequence number");
        } else {
            first_seen.push(seq);
        }
    }
    let max = *first_seen.iter().max().expect("some events");
    let set: BTreeSet<u64> = first_seen.iter().copied().filter(|s| *s >= from).collect();
    let missing: Vec<u64> = (from..=max).filter(|s| !set.contains(s)).collect();
    assert!(missing.is_empty(), "lost events: {missing:?}");
    assert!(first_seen.windows(2).all(|w| w[0] < w[1]), "events arrived out of order");
    (max, events.len() - first_seen.len())
}

fn chatty_ball(device: &str, url: &str) -> String {
    // An update for every frame: a steady 10 events a second to lose.
    format!(
        "{}{}[[cameras]]\nname = \"cam1\"\nsource = \"test://ball?width=320&height=240&fps=10\"\nfps = 10\nmodel = \"ball\"\n[events]\nupdate_interval_s = 0.0\nupdate_min_move = 0.0\n",
        head(device, url),
        model_line()
    )
}

#[test]
fn a_30_s_broker_outage_loses_nothing_and_keeps_the_order() {
    let mut broker = Mosquitto::start();
    let sub = Subscriber::connect_persistent(broker.port, "vigil/outage/events");
    let vigil = Vigil::start(&chatty_ball("outage", &broker.url()));
    let before = collect_events(&sub, "vigil/outage/events", Duration::from_secs(30), |v| v.len() >= 10);

    broker.stop_gracefully();
    let written_before = vigil.health()["outbox"]["written"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(30)); // the outage itself
    let h = vigil.health();
    assert_ne!(h["mqtt"]["state"], "connected", "{h}");
    let during = h["outbox"]["written"].as_u64().unwrap_or(0) - written_before;
    assert!(during >= 200, "events kept coming during the outage: {during}");
    assert!(h["outbox"]["waiting"].as_u64().unwrap_or(0) >= 200, "and waited on disk: {h}");

    broker.restart();
    // Every event produced got a sequence number: a loss before the outbox
    // (which no seq gap can show) leaves `emitted` above `written` for good.
    let accounted = every_event_accounted_for(&vigil);
    let events = collect_all(&vigil, &sub, "vigil/outage/events", Duration::from_secs(120), before);
    let (max, duplicates) = assert_complete_and_ordered(&events, 1);
    assert!(max >= accounted, "all {accounted} events produced were delivered (up to seq {max})");
    eprintln!("{max} events, {during} of them during the outage, {duplicates} duplicates after reconnecting");
    assert_eq!(vigil.health()["outbox"]["dropped"], 0);
}

#[test]
fn events_queued_when_vigil_is_killed_are_delivered_after_a_restart() {
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let vigil = Vigil::start(&chatty_ball("crash", &url));
    wait_until(Duration::from_secs(60), "events waiting for the broker", || {
        vigil.health()["outbox"]["waiting"].as_u64().unwrap_or(0) >= 30
    });
    let queued = vigil.health()["outbox"]["waiting"].as_u64().unwrap_or(0);
    let dir = vigil.kill(); // SIGKILL: no flush, no goodbye

    let broker = Mosquitto::start_on(port);
    let sub = Subscriber::connect_persistent(broker.port, "vigil/crash/events");
    let config = std::fs::read_to_string(dir.path().join("vigil.toml")).expect("config");
    let vigil = Vigil::start_in(dir, &config);
    let events = collect_events(&sub, "vigil/crash/events", Duration::from_secs(60), |v| {
        let seqs: HashSet<u64> = v.iter().filter_map(|e| e["seq"].as_u64()).collect();
        (1..=queued).all(|s| seqs.contains(&s))
    });
    // Every queued event, in order; new ones continue the numbering (a
    // restart at 1 would break the order check).
    let (max, _) = assert_complete_and_ordered(&events, 1);
    assert!(max >= queued);
    drop(vigil);
}

#[test]
fn inspections_come_on_command_and_on_an_interval() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "vigil/qa/events");
    let config = format!(
        "{}{}[[cameras]]\nname = \"cam1\"\nsource = \"test://ball?width=320&height=240&fps=10\"\nfps = 10\nmodel = \"ball\"\n\
         [[rules]]\nname = \"on-demand\"\ntype = \"inspection\"\ncamera = \"cam1\"\nlabels = [\"ball\"]\ntrigger = \"command\"\n\
         [[rules]]\nname = \"tick\"\ntype = \"inspection\"\ncamera = \"cam1\"\nlabels = [\"ball\"]\ntrigger = \"interval\"\ninterval_s = 0.5\n",
        head("qa", &broker.url()),
        model_line()
    );
    let vigil = Vigil::start(&config);
    // Interval verdicts arrive on their own.
    collect_events(&sub, "vigil/qa/events", Duration::from_secs(30), |v| {
        v.iter().filter(|e| e["type"] == "inspection.verdict" && e["rule"] == "tick").count() >= 2
    });
    // A command asks for one now.
    let (client, mut conn) =
        rumqttc::Client::new(rumqttc::MqttOptions::new("qa-operator", "127.0.0.1", broker.port), 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    client
        .publish(
            "vigil/qa/commands",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"command": "inspect", "camera": "cam1", "part": "P-7"}"#,
        )
        .expect("publish command");
    let got = collect_events(&sub, "vigil/qa/events", Duration::from_secs(30), |v| {
        v.iter().any(|e| e["rule"] == "on-demand")
    });
    let v = got.iter().find(|e| e["rule"] == "on-demand").expect("verdict");
    assert_eq!(
        (v["trigger"].as_str(), v["part"].as_str(), v["verdict"].as_str()),
        (Some("command"), Some("P-7"), Some("NG"))
    );
    assert_eq!(v["defects"][0]["label"], "ball");
    drop(vigil);
}

#[test]
fn the_sas_token_matches_azures_documented_recipe() {
    // Azure's reference (docs: "Control access to IoT Hub with SAS tokens"),
    // in Python, computed independently of Vigil.
    let script = r#"
import sys, hmac, hashlib, base64, urllib.parse
uri, key, expiry = sys.argv[1], sys.argv[2], int(sys.argv[3])
sign_key = "%s\n%d" % (urllib.parse.quote_plus(uri), expiry)
signature = base64.b64encode(hmac.HMAC(base64.b64decode(key), sign_key.encode("utf-8"), hashlib.sha256).digest())
print("SharedAccessSignature " + urllib.parse.urlencode({"sr": uri, "sig": signature, "se": str(expiry)}))
"#;
    let (hub, device, key, expiry) =
        ("contoso-line.azure-devices.net", "press-07", "c2VjcmV0LWRldmljZS1rZXktZm9yLXRlc3Rz", "1893456000");
    let out = std::process::Command::new("python3")
        .args(["-c", script, &format!("{hub}/devices/{device}"), key, expiry])
        .output()
        .expect("python3");
    let want = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(want.starts_with("SharedAccessSignature sr="), "{want}");
    let (code, got, err) = vigil_cmd(
        &["tools", "sas-token", "--hub", hub, "--device", device, "--key", key, "--expiry", expiry],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(got.contains(&format!("password: {want}")), "vigil: {got}\npython: {want}");
    assert!(got.contains(&format!("username: {hub}/{device}/?api-version=2021-04-12")));
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let st = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(st.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&st.stderr));
}

/// A throwaway certificate authority `<name>-ca.pem`.
fn make_ca(dir: &std::path::Path, name: &str) {
    let (key, pem) = (format!("{name}-ca.key"), format!("{name}-ca.pem"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-keyout",
            &key,
            "-out",
            &pem,
        ],
    );
}

/// `server.pem` / `server.key` for 127.0.0.1, signed by `<ca>-ca.pem`.
fn make_server_cert(dir: &std::path::Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    let (ca_pem, ca_key) = (format!("{ca}-ca.pem"), format!("{ca}-ca.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

#[test]
fn azure_iot_hub_mode_publishes_over_tls_with_the_hub_username_and_topic() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_ca(certs.path(), "hub");
    make_ca(certs.path(), "other");
    make_server_cert(certs.path(), "hub");
    let tls_port = free_port();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\ncafile {d}/hub-ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
        d = certs.path().display()
    );
    let broker = Mosquitto::start_with(free_port(), &extra);
    wait_until(Duration::from_secs(10), "TLS listener", || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    let sub = Subscriber::connect(broker.port, "devices/press-07/messages/events/#");
    // A 10 s token, renewed at 8 s: the test sees the renewal happen.
    let azure = |ca: &str| {
        format!(
            "device_id = \"press-07\"\n[mqtt]\nmode = \"azure-iot-hub\"\nurl = \"mqtts://127.0.0.1:{tls_port}\"\n\
             azure_hub = \"contoso-line.azure-devices.net\"\nazure_device_key = \"c2VjcmV0LWRldmljZS1rZXktZm9yLXRlc3Rz\"\n\
             azure_token_ttl_s = 10\ntls_ca_file = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n{}\
             [[cameras]]\nname = \"cam1\"\nsource = \"test://ball?width=320&height=240&fps=10\"\nmodel = \"ball\"\n\
             [events]\nupdate_interval_s = 0.5\nupdate_min_move = 0.0\n",
            certs.path().join(ca).display(),
            model_line()
        )
    };
    let vigil = Vigil::start(&azure("hub-ca.pem"));
    let topic = "devices/press-07/messages/events/$.ct=application%2Fjson&$.ce=utf-8";
    let ev: Value = serde_json::from_slice(&sub.next_on(topic, Duration::from_secs(60))).expect("json");
    assert_valid_event(&ev);
    assert_eq!(ev["device"], "press-07");
    // Mosquitto logs each connection as "New client connected from ... as press-07 (..., u'<username>')".
    let connections = || broker.log().matches("New client connected from").filter(|_| true).count();
    wait_until(Duration::from_secs(10), "the connection in the broker log", || connections() >= 1);
    assert!(
        broker.log().contains("as press-07")
            && broker.log().contains("u'contoso-line.azure-devices.net/press-07/?api-version=2021-04-12'"),
        "{}",
        broker.log()
    );
    // The subscriber's own connection is in the log too.
    let first = connections();
    // The token renewal: a new connection with a fresh token, and events keep coming.
    wait_until(Duration::from_secs(30), "a reconnection with a renewed token", || connections() > first);
    let later = Subscriber::connect(broker.port, "devices/press-07/messages/events/#");
    let after = collect_events(&later, topic, Duration::from_secs(30), |v| v.len() >= 3);
    assert_complete_and_ordered(&after, after[0]["seq"].as_u64().unwrap_or(1));
    drop(vigil);

    // The wrong CA: a clear TLS error in health, and events wait in the outbox...
    let vigil = Vigil::start(&azure("other-ca.pem"));
    wait_until(Duration::from_secs(30), "the TLS failure in health", || {
        let h = vigil.health();
        h["mqtt"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("TLS failed") && e.contains("tls_ca_file"))
            && h["outbox"]["waiting"].as_u64().unwrap_or(0) >= 5
    });
    let waiting = vigil.health()["outbox"]["waiting"].as_u64().unwrap_or(0);
    // ...and once the CA is fixed, every one of them is delivered.
    let dir = vigil.stop_keep_dir();
    let fixed = Subscriber::connect(broker.port, "devices/press-07/messages/events/#");
    let vigil = Vigil::start_in(dir, &azure("hub-ca.pem"));
    let delivered = collect_events(&fixed, topic, Duration::from_secs(60), |v| {
        let seqs: HashSet<u64> = v.iter().filter_map(|e| e["seq"].as_u64()).collect();
        (1..=waiting).all(|s| seqs.contains(&s))
    });
    assert_complete_and_ordered(&delivered, 1);
    drop(vigil);
}

#[test]
fn broken_zones_and_rules_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = |extra: &str| {
        format!(
            "{}{}[[cameras]]\nname = \"cam1\"\nsource = \"test://ball\"\nmodel = \"ball\"\nzones = [{{ name = \"bay\", polygon = [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]] }}]\n{extra}",
            head("bad", "mqtt://127.0.0.1:1"),
            model_line()
        )
    };
    let cases = [
        (
            base("").replace("[[0.1, 0.1], [0.5, 0.1], [0.5, 0.5]]", "[[0.1, 0.1], [0.5, 0.1]]"),
            vec!["cameras[0].zones[0] (bay): the polygon has 2 corner(s)"],
        ),
        (
            base("[[rules]]\nname = \"r\"\ntype = \"safety\"\ncamera = \"cam9\"\nlabels = [\"ball\"]\n"),
            vec!["rules[0] (r).camera = \"cam9\": no camera has that name"],
        ),
        (
            base("[[rules]]\nname = \"r\"\ntype = \"safety\"\ncamera = \"cam1\"\nlabels = [\"helmet\"]\n"),
            vec!["rules[0] (r): label \"helmet\" is not one of model \"ball\"'s labels (ball)"],
        ),
        (
            base("[[rules]]\nname = \"r\"\ntype = \"curbside\"\ncamera = \"cam1\"\nzone = \"dock\"\n"),
            vec!["rules[0] (r).zone = \"dock\": camera \"cam1\" has no such zone (zones: bay)"],
        ),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let f = write(dir.path(), &format!("c{i}.toml"), text);
        let (code, _, err) = vigil_cmd(&["check", "--config", f.to_str().expect("utf8")], &[]);
        assert_eq!(code, 2, "case {i}: {err}");
        assert!(!err.contains("panicked"));
        for e in expect {
            assert!(err.contains(e), "case {i}: {e:?} not in {err}");
        }
    }
}

/// The head of a config with `[mqtt]` extras (and keep-alive pings rare
/// enough that they cannot be what notices a dead broker).
fn head_with(device: &str, mqtt_url: &str, mqtt_extra: &str) -> String {
    format!(
        "device_id = \"{device}\"\n[mqtt]\nurl = \"{mqtt_url}\"\nkeep_alive_s = 120\n{mqtt_extra}\n[http]\nlisten = \"127.0.0.1:0\"\n"
    )
}

#[test]
fn a_broker_that_stops_acknowledging_is_left_within_the_ack_deadline_and_nothing_is_lost() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect_persistent(broker.port, "vigil/paused/events");
    let config = chatty_ball("paused", &broker.url())
        .replace(&head("paused", &broker.url()), &head_with("paused", &broker.url(), "ack_timeout_s = 2"));
    assert!(config.contains("ack_timeout_s = 2"));
    let vigil = Vigil::start(&config);
    let before = collect_events(&sub, "vigil/paused/events", Duration::from_secs(30), |v| v.len() >= 10);
    assert_eq!(vigil.health()["mqtt"]["state"], "connected");

    // SIGSTOP: the TCP connection stays open, nothing is acknowledged.
    broker.pause();
    let paused = std::time::Instant::now();
    // 2 s of deadline, plus the 20 ms loop and a loaded machine's slack;
    // keep-alive (120 s) cannot be what notices it.
    wait_until(Duration::from_secs(8), "the link to give up on the paused broker", || {
        vigil.health()["mqtt"]["state"] != "connected"
    });
    let noticed = paused.elapsed();
    let h = vigil.health();
    assert!(h["mqtt"]["ack_timeouts"].as_u64().unwrap_or(0) >= 1, "{h}");
    assert!(h["mqtt"]["last_error"].as_str().unwrap_or("").contains("ack_timeout_s"), "{h}");
    // While paused, events keep being written to the outbox.
    let written = h["outbox"]["written"].as_u64().unwrap_or(0);
    wait_until(Duration::from_secs(20), "events written while the broker is paused", || {
        vigil.health()["outbox"]["written"].as_u64().unwrap_or(0) >= written + 20
    });
    let (_, metrics) = {
        let (code, _, body) = vigil.get("/metrics");
        (code, String::from_utf8_lossy(&body).into_owned())
    };
    assert!(metrics.contains("vigil_mqtt_ack_timeouts_total "), "{metrics}");

    broker.resume();
    let events = collect_all(&vigil, &sub, "vigil/paused/events", Duration::from_secs(120), before);
    let (max, duplicates) = assert_complete_and_ordered(&events, 1);
    eprintln!("paused broker noticed after {noticed:?}; {max} events, {duplicates} duplicates, none lost");
    assert_eq!(vigil.health()["outbox"]["dropped"], 0);
}

#[test]
fn a_retained_command_is_never_run() {
    let broker = Mosquitto::start();
    // An old command, retained, on the broker before Vigil ever connects.
    let (client, mut conn) =
        rumqttc::Client::new(rumqttc::MqttOptions::new("old-operator", "127.0.0.1", broker.port), 10);
    client
        .publish(
            "vigil/retained/commands",
            rumqttc::QoS::AtLeastOnce,
            true,
            r#"{"command": "inspect", "camera": "cam1", "part": "OLD-1"}"#,
        )
        .expect("publish");
    for ev in conn.iter() {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = ev {
            break;
        }
    }
    drop(client);
    drop(conn);

    let sub = Subscriber::connect(broker.port, "vigil/retained/events");
    let config = format!(
        "{}{}[[cameras]]\nname = \"cam1\"\nsource = \"test://ball?width=320&height=240&fps=10\"\nfps = 10\nmodel = \"ball\"\n\
         [[rules]]\nname = \"on-demand\"\ntype = \"inspection\"\ncamera = \"cam1\"\nlabels = [\"ball\"]\ntrigger = \"command\"\n",
        head("retained", &broker.url()),
        model_line()
    );
    let vigil = Vigil::start(&config);
    // Connected (so subscribed, and the retained message delivered), then
    // frames processed after that: a command received would have run.
    wait_until(Duration::from_secs(30), "the link connected", || {
        vigil.health()["mqtt"]["state"] == "connected"
    });
    let processed = |v: &Vigil| v.health()["cameras"][0]["frames_processed"].as_u64().unwrap_or(0);
    let at = processed(&vigil);
    wait_until(Duration::from_secs(30), "frames processed after connecting", || processed(&vigil) >= at + 5);

    // A live command still runs, and is the only verdict.
    let (client, mut conn) =
        rumqttc::Client::new(rumqttc::MqttOptions::new("new-operator", "127.0.0.1", broker.port), 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    client
        .publish(
            "vigil/retained/commands",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"command": "inspect", "camera": "cam1", "part": "NEW-2"}"#,
        )
        .expect("publish command");
    let got = collect_events(&sub, "vigil/retained/events", Duration::from_secs(30), |v| {
        v.iter().any(|e| e["rule"] == "on-demand" && e["part"] == "NEW-2")
    });
    let old: Vec<&Value> = got.iter().filter(|e| e["part"] == "OLD-1").collect();
    assert!(old.is_empty(), "the retained command ran: {old:?}");
    assert!(vigil.stderr().contains("retained command"), "the refusal is logged");
}

#[test]
fn an_event_larger_than_the_brokers_limit_is_refused_and_counted_and_the_rest_flow() {
    // The broker disconnects a client that sends a packet over 1100 bytes;
    // Vigil publishes events of at most 1 KiB (`max_event_kb = 1`).
    // Ten full-frame zones with long names make the object updates (which
    // list the zones an object is in) larger than that; the verdicts of an
    // inspection every 0.5 s stay under it.
    let broker = Mosquitto::start_with(free_port(), "max_packet_size 1100\n");
    let sub = Subscriber::connect(broker.port, "vigil/big/events");
    let zones: Vec<String> = (0..10)
        .map(|i| {
            format!(
                "{{ name = \"zone-{i}-{}\", polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]] }}",
                "x".repeat(50)
            )
        })
        .collect();
    let config = format!(
        "{}{}[[cameras]]\nname = \"cam1\"\nsource = \"test://ball?width=320&height=240&fps=10\"\nfps = 10\nmodel = \"ball\"\nzones = [{}]\n\
         [[rules]]\nname = \"tick\"\ntype = \"inspection\"\ncamera = \"cam1\"\nlabels = [\"ball\"]\ntrigger = \"interval\"\ninterval_s = 0.5\n",
        head_with("big", &broker.url(), "max_event_kb = 1"),
        model_line(),
        zones.join(", ")
    );
    let vigil = Vigil::start(&config);
    // Until an event arrives from behind a refused one: a received
    // sequence number above one that never came.
    let got = collect_events(&sub, "vigil/big/events", Duration::from_secs(60), |v| {
        let seqs: BTreeSet<u64> = v.iter().filter_map(|e| e["seq"].as_u64()).collect();
        let max = seqs.iter().max().copied().unwrap_or(0);
        (1..max).any(|s| !seqs.contains(&s))
    });
    let h = vigil.health();
    let refused = h["mqtt"]["refused"].as_u64().unwrap_or(0);
    let seqs: BTreeSet<u64> = got.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let max = *seqs.iter().max().expect("some");
    let gaps = (1..=max).filter(|s| !seqs.contains(s)).count() as u64;
    assert!(gaps >= 1 && gaps <= refused, "gaps {gaps}, refused {refused}: {h}");
    assert!(vigil.stderr().contains("event too large to publish"), "the refusal is logged");
    assert_eq!(h["mqtt"]["connects"], 1, "the broker never had to close the connection: {h}");
    let (_, _, body) = vigil.get("/metrics");
    let metrics = String::from_utf8_lossy(&body);
    assert!(
        metrics.contains(&format!("vigil_mqtt_refused_total {refused}"))
            || metrics.contains("vigil_mqtt_refused_total "),
        "{metrics}"
    );
}

#[test]
fn a_clean_stop_waits_for_the_acknowledgements_of_the_events_in_flight() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect_persistent(broker.port, "vigil/bye/events");
    let config = chatty_ball("bye", &broker.url())
        .replace(&head("bye", &broker.url()), &head_with("bye", &broker.url(), "ack_timeout_s = 60"));
    let vigil = Vigil::start(&config);
    let mut events = collect_events(&sub, "vigil/bye/events", Duration::from_secs(30), |v| v.len() >= 5);

    // Paused, the broker acknowledges nothing: events pile up in flight.
    broker.pause();
    wait_until(Duration::from_secs(20), "events in flight", || {
        let h = vigil.health();
        let m = &h["mqtt"];
        m["published"].as_u64().unwrap_or(0) >= m["acknowledged"].as_u64().unwrap_or(0) + 3
    });
    let written = vigil.health()["outbox"]["written"].as_u64().unwrap_or(0);
    vigil.send_term();
    wait_until(Duration::from_secs(10), "the link's goodbye to begin", || {
        vigil.stderr().contains("waiting for the broker to acknowledge the events in flight")
    });
    // The broker answers again while the link says goodbye: the events in
    // flight are acknowledged, and a clean stop takes those acks in before
    // it disconnects.
    broker.resume();
    let (status, dir) = vigil.wait_keep_dir();
    assert!(status.success(), "{status}");

    // Whatever was acknowledged is not sent again after a restart.
    let vigil = Vigil::start_in(dir, &config);
    let until = written + 60;
    events.extend(collect_events(&sub, "vigil/bye/events", Duration::from_secs(120), |v| {
        v.iter().filter_map(|e| e["seq"].as_u64()).any(|s| s > until)
    }));
    let (max, duplicates) = assert_complete_and_ordered(&events, 1);
    eprintln!("{max} events across the stop, {duplicates} sent twice");
    assert_eq!(duplicates, 0, "events acknowledged during the stop were sent again after the restart");
    drop(vigil);
}
