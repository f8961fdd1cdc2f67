//! Stopping, end to end (issue #20 item 1): the real `vigil` binary, a real
//! Mosquitto, and raw HTTP clients that hold a live view and the event
//! stream open, as the web page always does. SIGTERM must end every stream,
//! end the open tracks, flush the events, say `offline`, and exit 0 within
//! the stated 5 s, whatever the clients do.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// The stated shutdown deadline (app/src/main.rs `SHUTDOWN_DEADLINE`).
const DEADLINE: Duration = Duration::from_secs(5);

fn chatty_ball(device: &str, url: &str) -> String {
    // An update for every frame: events flow all the time.
    format!(
        "device_id = \"{device}\"\n[mqtt]\nurl = \"{url}\"\nkeep_alive_s = 5\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[models]]\nname = \"ball\"\npath = \"{}\"\nconfidence = 0.5\niou = 0.45\n\
         [[cameras]]\nname = \"cam1\"\nsource = \"test://ball?width=320&height=240&fps=10\"\nfps = 10\nmodel = \"ball\"\n\
         [events]\nupdate_interval_s = 0.0\nupdate_min_move = 0.0\n",
        ball_model().display()
    )
}

/// Opens the live view and the event stream and waits until both deliver.
fn open_streams(vigil: &Vigil) -> (StreamReader, StreamReader) {
    let token = vigil.token.as_deref();
    let mjpeg = StreamReader::open(&vigil.web, "/api/v1/cameras/cam1/stream.mjpg", token);
    let sse = StreamReader::open(&vigil.web, "/api/v1/events/stream", token);
    wait_until(Duration::from_secs(30), "both streams to deliver", || {
        mjpeg.bytes() > 10_000 && sse.bytes() > 500
    });
    (mjpeg, sse)
}

/// Every track that started among `events` ended among them too.
fn assert_every_start_has_its_end(events: &[Value]) {
    let mut open: HashMap<u64, &Value> = HashMap::new();
    let mut seen = HashSet::new();
    for e in events {
        if !seen.insert(e["id"].as_str().unwrap_or("").to_owned()) {
            continue;
        }
        let track = e["track"]["id"].as_u64();
        match (e["type"].as_str(), track) {
            (Some("object.start"), Some(t)) => {
                open.insert(t, e);
            }
            (Some("object.end"), Some(t)) => {
                open.remove(&t);
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "tracks that never ended: {:?}", open.keys().collect::<Vec<_>>());
}

#[test]
fn sigterm_with_a_live_view_and_an_event_stream_open_exits_within_the_deadline_and_says_offline() {
    let broker = Mosquitto::start();
    let status = Subscriber::connect(broker.port, "vigil/stop/status");
    let sub = Subscriber::connect_persistent(broker.port, "vigil/stop/events");
    let vigil = Vigil::start(&chatty_ball("stop", &broker.url()));
    status.expect("vigil/stop/status", "online", Duration::from_secs(30));
    let mut events = collect_events(&sub, "vigil/stop/events", Duration::from_secs(30), |v| {
        v.iter().any(|e| e["type"] == "object.start")
    });
    let (mjpeg, sse) = open_streams(&vigil);

    let (exit, took, _dir) = vigil.terminate_within(DEADLINE + Duration::from_secs(10));
    let exit = exit.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM: killed"));
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took < DEADLINE, "exit took {took:?}, over the {DEADLINE:?} deadline");
    assert!(mjpeg.ended() && sse.ended(), "the server ended both streams");
    status.expect("vigil/stop/status", "offline", Duration::from_secs(5));
    // The open track's end went out before `offline`: nothing is left behind.
    while let Some(p) = sub.try_next_on("vigil/stop/events", Duration::from_secs(2)) {
        let v: Value = serde_json::from_slice(&p).expect("event JSON");
        assert_valid_event(&v);
        events.push(v);
    }
    assert!(events.iter().any(|e| e["type"] == "object.end"), "the open track ended");
    assert_every_start_has_its_end(&events);
    eprintln!("SIGTERM to exit: {took:?}, {} events", events.len());
}

#[test]
fn sigterm_while_the_broker_is_away_keeps_the_queued_events_for_the_next_run() {
    let mut broker = Mosquitto::start();
    let sub = Subscriber::connect_persistent(broker.port, "vigil/stopq/events");
    let config = chatty_ball("stopq", &broker.url());
    let vigil = Vigil::start(&config);
    let mut events = collect_events(&sub, "vigil/stopq/events", Duration::from_secs(30), |v| v.len() >= 5);

    broker.stop_gracefully();
    wait_until(Duration::from_secs(60), "events queued for the broker", || {
        vigil.health()["outbox"]["waiting"].as_u64().unwrap_or(0) >= 20
    });
    let (mjpeg, sse) = open_streams(&vigil);
    let written = vigil.health()["outbox"]["written"].as_u64().unwrap_or(0);

    let (exit, took, dir) = vigil.terminate_within(DEADLINE + Duration::from_secs(10));
    let exit = exit.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM: killed"));
    assert!(exit.success(), "exit status {exit:?}");
    assert!(took < DEADLINE, "exit took {took:?}, over the {DEADLINE:?} deadline");
    assert!(mjpeg.ended() && sse.ended(), "the server ended both streams");
    let stopped_ms = unix_ms_now();

    // The next run finds them on disk and delivers them, the open tracks'
    // ends included, before anything new.
    broker.restart();
    let vigil = Vigil::start_in(dir, &config);
    events.extend(collect_events(&sub, "vigil/stopq/events", Duration::from_secs(60), |v| {
        v.iter().any(|e| event_made_ms(e) > stopped_ms)
    }));
    let first_run: Vec<Value> = events.iter().filter(|e| event_made_ms(e) <= stopped_ms).cloned().collect();
    let seqs: BTreeSet<u64> = first_run.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let last = *seqs.iter().max().expect("events");
    assert!(last >= written, "the first run wrote {written} events, {last} came");
    let missing: Vec<u64> = (1..=last).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "lost at shutdown: {missing:?}");
    assert_every_start_has_its_end(&first_run);
    eprintln!("SIGTERM to exit: {took:?}; {last} events from the first run delivered by the second");
    drop(vigil);
}
