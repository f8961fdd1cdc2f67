//! Motion gating end to end: a mostly still scene (a ball comes in, stays,
//! leaves; long empty stretches) played by two cameras of one Vigil, one with
//! gating (the default for detectors) and one without. The gated camera runs
//! the model on far fewer frames and reports the same events.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

/// The camera ended with its decoder, and its last frames are back from the
/// model: every frame received is counted as processed, skipped or dropped.
fn all_frames_handled(h: &serde_json::Value) -> bool {
    let n = |k: &str| h[k].as_u64().unwrap_or(0);
    h["state"] == "ended"
        && n("frames_processed")
            + n("frames_skipped_still")
            + n("frames_dropped_busy")
            + n("inference_errors")
            >= n("frames_received")
}

#[test]
fn a_still_scene_needs_five_times_fewer_inferences_and_gives_the_same_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("still.avi");
    // 24 s at 30 fps: 5 s empty, 1 s coming in from the left, 8 s standing
    // in the middle, 1 s leaving to the right, 9 s empty.
    let fps = 30;
    let mut centres = vec![None; 150];
    centres.extend((0..30).map(|i| Some((-20.0 + i as f32 * 340.0 / 30.0, 240.0))));
    centres.extend((0..240).map(|_| Some((320.0, 240.0))));
    centres.extend((0..30).map(|i| Some((320.0 + (i + 1) as f32 * 340.0 / 30.0, 240.0))));
    centres.extend((0..270).map(|_| None));
    make_scene_clip(&clip, fps, &centres);

    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "vigil/motion/events");
    let camera = |name: &str, motion: &str| {
        format!(
            r#"
[[cameras]]
name = "{name}"
source = "file://{clip}"
model = "ball"
loop = false
motion = {{ {motion} }}
zones = [{{ name = "middle", polygon = [[0.35, 0.2], [0.65, 0.2], [0.65, 0.8], [0.35, 0.8]], anchor = "center" }}]
lines = [{{ name = "gate", from = [0.8, 0.0], to = [0.8, 1.0], anchor = "center" }}]
"#,
            clip = clip.display()
        )
    };
    let config = format!(
        r#"device_id = "motion"
[mqtt]
url = "{mqtt}"
[http]
listen = "127.0.0.1:0"
[[models]]
name = "ball"
path = "{model}"
confidence = 0.5
{gated}{every}"#,
        mqtt = broker.url(),
        model = ball_model().display(),
        gated = camera("gated", ""),
        every = camera("every", "enabled = false"),
    );
    let v = Vigil::start(&config);
    wait_until(Duration::from_secs(90), "both cameras at the end of the clip", || {
        ["gated", "every"].iter().all(|c| all_frames_handled(&camera_health(&v, c)))
    });
    let gated = camera_health(&v, "gated");
    let every = camera_health(&v, "every");
    assert_eq!(gated["motion_gating"], true, "on by default for a detector");
    assert_eq!(every["motion_gating"], false);
    let frames = gated["frames_received"].as_u64().expect("received");
    let inferred = gated["frames_processed"].as_u64().expect("processed");
    let skipped = gated["frames_skipped_still"].as_u64().expect("skipped");
    println!(
        "gated: {frames} frames, {inferred} inferences, {skipped} skipped ({:.1}x fewer); ungated: {} inferences",
        frames as f64 / inferred as f64,
        every["frames_processed"]
    );
    assert!(frames >= 700, "the whole clip played: {frames}");
    assert_eq!(inferred + skipped + gated["frames_dropped_busy"].as_u64().unwrap_or(0), frames);
    assert!(frames >= 5 * inferred, "{frames} frames but {inferred} inferences");
    assert!(every["frames_processed"].as_u64() > Some(frames * 9 / 10), "{every}");
    let metrics = String::from_utf8(v.get("/metrics").2).expect("utf-8");
    assert!(metrics.contains(&format!(
        "vigil_camera_frames_total{{camera=\"gated\",stage=\"skipped_still\"}} {skipped}"
    )));

    // The same events from both cameras (object.update excepted: it rides
    // on how often the moving ball was seen, which is what gating changes
    // least but still changes).
    let mut by_camera: HashMap<String, Vec<String>> = HashMap::new();
    let events = collect_events(&sub, "vigil/motion/events", Duration::from_secs(30), |evs| {
        ["gated", "every"].iter().all(|c| evs.iter().any(|e| e["camera"] == *c && e["type"] == "object.end"))
    });
    for e in &events {
        let kind = e["type"].as_str().expect("type").to_owned();
        if kind == "object.update" {
            continue;
        }
        let detail = match kind.as_str() {
            "zone.enter" | "zone.exit" => format!("{kind} {}", e["zone"]),
            "line.cross" => format!("{kind} {} {}", e["line"], e["direction"]),
            _ => format!("{kind} {}", e["track"]["label"]),
        };
        by_camera.entry(e["camera"].as_str().expect("camera").to_owned()).or_default().push(detail);
    }
    println!("{by_camera:?}");
    let every_events = &by_camera["every"];
    assert_eq!(
        every_events,
        &[
            "object.start \"ball\"",
            "zone.enter \"middle\"",
            "zone.exit \"middle\"",
            "line.cross \"gate\" \"left\"",
            "object.end \"ball\""
        ],
        "the ungated camera sees the scene as it is"
    );
    assert_eq!(&by_camera["gated"], every_events, "gating changes no event");
}

#[test]
fn with_regions_the_detector_sees_the_moving_part_at_full_resolution_and_boxes_land_in_the_frame() {
    // 1920x1080 with a ball of radius 20 crossing it: the whole frame goes
    // to the 640 model at a third of its size, a region at its own size.
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("wide.avi");
    let (fps, frames) = (30, 60usize);
    let centre = |n: usize| (300.0 + n as f32 * 22.0, 800.0 - n as f32 * 8.0);
    let centres: Vec<Option<(f32, f32)>> = (0..frames).map(|n| Some(centre(n))).collect();
    make_scene_clip_sized(&clip, fps, (1920, 1080), &centres);

    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "vigil/regions/detections");
    let config = detections_config("regions", &broker.url(), &ball_model())
        + &format!(
            r#"[[cameras]]
name = "wide"
source = "file://{clip}"
model = "ball"
loop = false
realtime = false
motion = {{ regions = true, min_area = 0.0002 }}
"#,
            clip = clip.display()
        );
    let v = Vigil::start(&config);
    wait_until(Duration::from_secs(90), "every frame of the clip handled", || {
        all_frames_handled(&camera_health(&v, "wide"))
    });
    let health = camera_health(&v, "wide");
    let processed = health["frames_processed"].as_u64().expect("processed");
    let on_regions = health["frames_on_regions"].as_u64().expect("frames_on_regions");
    println!("{processed} inferences, {on_regions} on a region");
    // The first frame (everything is new) and interval inferences see the whole frame.
    assert!(on_regions >= processed / 2 && on_regions < processed, "{health}");
    let metrics = String::from_utf8(v.get("/metrics").2).expect("utf-8");
    assert!(metrics.contains(&format!(
        "vigil_camera_frames_total{{camera=\"wide\",stage=\"processed_on_region\"}} {on_regions}"
    )));

    // Every box is where the ball is in the frame, whichever way it was seen.
    let mut checked = 0;
    while let Some(bytes) = sub.try_next_on("vigil/regions/detections", Duration::from_millis(500)) {
        let m: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let n = m["frame"]["seq"].as_u64().expect("seq") as usize;
        let Some(&Some((cx, cy))) = centres.get(n) else { continue };
        for d in m["detections"].as_array().expect("detections") {
            let b: Vec<f64> =
                d["box"].as_array().expect("box").iter().map(|v| v.as_f64().expect("f64")).collect();
            let (bx, by) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            assert!(
                (bx - f64::from(cx)).abs() < 5.0 && (by - f64::from(cy)).abs() < 5.0,
                "frame {n}: box {b:?}, ball at ({cx}, {cy})"
            );
            assert!((b[2] - b[0] - 40.0).abs() < 8.0, "frame {n}: {b:?} for a 40 px ball");
            checked += 1;
        }
    }
    assert!(checked as u64 >= on_regions, "{checked} boxes checked, {on_regions} region inferences");
}
