//! `vigil bench-events`: what the event side costs.
//!
//! 1. Tracker + zones + lines + rules per frame with many objects moving
//!    (p50/p99 microseconds per frame), next to nothing else.
//! 2. The outbox: events per second written (one transaction per batch of
//!    100, as the writer does, and per single event, the worst case).
//! 3. Delivery to a real broker: a burst drained through the link (events
//!    per second acknowledged), then a steady stream with its
//!    capture-to-publish latency (p50/p99).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use vigil_camera::Frame;
use vigil_inference::{BBox, Detection, Detector, ModelOptions, Prediction};
use vigil_pipeline::lifecycle::{CameraEvents, UpdatePolicy};
use vigil_pipeline::mqtt::{self, LinkConfig, MqttStatus, Topics};
use vigil_pipeline::outbox::{Outbox, OutboxLimits};
use vigil_pipeline::rules::{RuleConfig, RuleKind, RuleState};
use vigil_pipeline::tracker::TrackerConfig;
use vigil_pipeline::zones::{Anchor, LineConfig, ZoneConfig};

#[derive(Debug, clap::Args)]
pub(crate) struct BenchEventsArgs {
    /// Any model: its labels and identity go into the events.
    #[arg(long, default_value = "models/ball/ball.onnx")]
    pub model: PathBuf,
    /// Objects in every frame.
    #[arg(long, default_value_t = 50)]
    pub objects: usize,
    #[arg(long, default_value_t = 2000)]
    pub frames: usize,
    /// Events for the outbox and delivery measurements.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// A broker to deliver to (bench/events.sh starts one); without it the
    /// delivery part is skipped.
    #[arg(long)]
    pub mqtt: Option<String>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn run(args: &BenchEventsArgs) -> anyhow::Result<()> {
    let det = Detector::load("bench", &args.model, ModelOptions::default())?;
    let info = det.info().clone();
    let label: Arc<str> = info.labels().first().cloned().unwrap_or_else(|| "object".into()).into();
    tracker_and_rules(args, &info, &label)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(outbox_and_delivery(args))
}

fn tracker_and_rules(
    args: &BenchEventsArgs,
    info: &Arc<vigil_inference::ModelInfo>,
    label: &Arc<str>,
) -> anyhow::Result<()> {
    let (w, h) = (1920u32, 1080u32);
    let zone = |name: &str, x: f32| ZoneConfig {
        name: name.into(),
        polygon: vec![[x, 0.1], [x + 0.2, 0.1], [x + 0.2, 0.9], [x, 0.9]],
        labels: vec![],
        min_dwell_s: 0.5,
        anchor: Anchor::Bottom,
    };
    let zones = vec![zone("z1", 0.05), zone("z2", 0.3), zone("z3", 0.55), zone("z4", 0.78)];
    let lines = vec![
        LineConfig {
            name: "l1".into(),
            from: [0.5, 0.0],
            to: [0.5, 1.0],
            labels: vec![],
            anchor: Anchor::Center,
        },
        LineConfig {
            name: "l2".into(),
            from: [0.0, 0.5],
            to: [1.0, 0.5],
            labels: vec![],
            anchor: Anchor::Center,
        },
    ];
    let rule = |name: &str, kind: RuleKind, zone: &str| RuleConfig {
        name: name.into(),
        kind,
        camera: "bench".into(),
        labels: vec![label.to_string()],
        zone: Some(zone.into()),
        min_duration_s: Some(1.0),
        dwell_s: Some(1.0),
        trigger: None,
        interval_s: None,
        min_score: None,
        part_labels: vec![],
    };
    let rules = vec![
        RuleState::new(rule("safety", RuleKind::Safety, "z1"), Some(zones[0].clone()), 0.25),
        RuleState::new(rule("curbside", RuleKind::Curbside, "z2"), Some(zones[1].clone()), 0.25),
        RuleState::new(rule("inspection", RuleKind::Inspection, "z3"), Some(zones[2].clone()), 0.25),
    ];
    let mut ev = CameraEvents::new(
        "bench",
        "bench",
        TrackerConfig::default(),
        zones,
        lines,
        rules,
        UpdatePolicy { interval_s: 2.0, min_move: 0.02 },
        None,
    );
    let frame = Frame::from_rgb("bench", 0, w, h, vec![0; (w * h * 3) as usize]);
    // Objects on straight paths that bounce off the edges.
    let mut objs: Vec<(f32, f32, f32, f32)> = (0..args.objects)
        .map(|i| {
            let f = i as f32;
            (
                (f * 137.0) % (w as f32 - 80.0),
                (f * 61.0) % (h as f32 - 80.0),
                3.0 + (f % 7.0),
                2.0 + (f % 5.0),
            )
        })
        .collect();
    let mut times = Vec::with_capacity(args.frames);
    let mut emitted = 0usize;
    for n in 0..args.frames {
        let dets: Vec<Detection> = objs
            .iter_mut()
            .map(|o| {
                o.0 += o.2;
                o.1 += o.3;
                if o.0 < 0.0 || o.0 > w as f32 - 60.0 {
                    o.2 = -o.2;
                }
                if o.1 < 0.0 || o.1 > h as f32 - 60.0 {
                    o.3 = -o.3;
                }
                Detection {
                    class_id: 0,
                    label: label.clone(),
                    score: 0.9,
                    bbox: BBox { x1: o.0, y1: o.1, x2: o.0 + 50.0, y2: o.1 + 50.0 },
                }
            })
            .collect();
        let pred = Prediction { detections: dets, ..Prediction::default() };
        // Frames 1/30 s apart, as a camera would deliver them.
        let f = Frame::from_rgb_at(
            "bench",
            n as u64,
            &frame,
            UNIX_EPOCH + Duration::from_secs_f64(1.8e9 + n as f64 / 30.0),
        );
        let t = Instant::now();
        emitted += ev.process(&f, &pred, info, None).len();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "tracker + 4 zones + 2 lines + 3 rules, {} objects: p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs per frame ({} events in {} frames)",
        args.objects,
        pct(&mut times, 0.5),
        pct(&mut times, 0.99),
        mean,
        emitted,
        args.frames
    );
    Ok(())
}

async fn outbox_and_delivery(args: &BenchEventsArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = OutboxLimits { max_events: u64::MAX, max_bytes: u64::MAX };
    let outbox = Arc::new(Outbox::open(&dir.path().join("bench.redb"), limits)?);
    let payload = br#"{"schema_version":1,"type":"object.update","id":"01a21868-f88b-7720-b347-3fc3a8470055","device":"bench","camera":"bench","time":"2026-11-26T15:11:02.283Z","frame":{"seq":1,"width":1920,"height":1080},"model":{"name":"bench","sha256":"0000000000000000000000000000000000000000000000000000000000000000"},"track":{"id":7,"label":"person","class_id":0,"score":0.91,"box":[311.1,231.5,348.7,269.1],"box_norm":[0.16,0.21,0.18,0.25]},"zones":["z1"]}"#.to_vec();

    let singles = 500.min(args.events);
    let t = Instant::now();
    for _ in 0..singles {
        outbox.append(&[(now_ms(), payload.clone())])?;
    }
    let single_rate = singles as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for chunk in (0..args.events).collect::<Vec<_>>().chunks(100) {
        let rows: Vec<(u64, Vec<u8>)> = chunk.iter().map(|_| (now_ms(), payload.clone())).collect();
        outbox.append(&rows)?;
    }
    let batch_rate = args.events as f64 / t.elapsed().as_secs_f64();
    println!(
        "outbox writes: {batch_rate:.0} events/s in batches of 100 (one fsync each), {single_rate:.0} events/s one at a time"
    );

    let Some(url) = &args.mqtt else {
        println!("delivery: skipped (no --mqtt broker)");
        return Ok(());
    };
    let u = url::Url::parse(url).context("--mqtt")?;
    let target = vigil_pipeline::config::MqttTarget {
        host: u.host_str().unwrap_or("127.0.0.1").to_owned(),
        port: u.port().unwrap_or(1883),
        username: None,
        password: None,
        tls: None,
        azure: None,
    };
    let status = MqttStatus::new(url.clone());
    let wake = Arc::new(tokio::sync::Notify::new());
    let (_det_tx, det_rx) = tokio::sync::mpsc::channel(1);
    let (cmd_tx, _cmd_rx) = tokio::sync::mpsc::channel(1);
    let stop = tokio_util::sync::CancellationToken::new();
    let link = mqtt::spawn(
        LinkConfig {
            target,
            client_id: "vigil-bench".into(),
            keep_alive: Duration::from_secs(15),
            topics: Topics::new("vigil-bench", "bench", false),
            azure: None,
            max_event_bytes: 256 * 1024,
            ack_timeout: Duration::from_secs(10),
        },
        outbox.clone(),
        wake.clone(),
        det_rx,
        cmd_tx,
        status.clone(),
        stop.clone(),
    );
    // Burst: everything written above, drained.
    let total = outbox.len();
    let t = Instant::now();
    while !outbox.is_empty() {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(300), "delivery stalled: {:?}", status.health());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_rate = total as f64 / t.elapsed().as_secs_f64();

    // Steady: 500 events a second for 5 s, each stamped when written.
    status.take_latencies();
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let due = (start.elapsed().as_secs_f64() * 500.0) as usize;
        if due > sent {
            let rows: Vec<(u64, Vec<u8>)> = (sent..due).map(|_| (now_ms(), payload.clone())).collect();
            let ob = outbox.clone();
            tokio::task::spawn_blocking(move || ob.append(&rows)).await??;
            wake.notify_one();
            sent = due;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    while !outbox.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lat = status.take_latencies();
    stop.cancel();
    let _ = link.await;
    println!(
        "delivery to {url}: {drain_rate:.0} events/s acknowledged (burst of {total}); steady 500 events/s: capture-to-publish p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    Ok(())
}
