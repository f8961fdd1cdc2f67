//! Cameras, end to end: a real RTSP server on loopback that dies, comes back
//! and stalls; several kinds of camera at once with one dead; bad sources
//! reported per camera. Nothing here is simulated: GStreamer pipelines
//! connect to real servers and files.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn frames(vigil: &Vigil, name: &str) -> u64 {
    camera_health(vigil, name)["frames_received"].as_u64().unwrap_or(0)
}

fn state(vigil: &Vigil, name: &str) -> String {
    camera_health(vigil, name)["state"].as_str().unwrap_or("").to_owned()
}

/// Waits until the camera streams and has received frames since `after`.
fn wait_streaming(vigil: &Vigil, name: &str, after: u64, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    wait_until(timeout, &format!("{name} streaming again"), || {
        state(vigil, name) == "streaming" && frames(vigil, name) > after + 2
    });
    t0.elapsed()
}

#[test]
fn an_rtsp_camera_comes_back_within_5_s_of_each_of_three_server_restarts() {
    let mut server = RtspServer::start();
    let vigil = Vigil::start(&cameras_config(&format!(
        "[[cameras]]\nname = \"door\"\nsource = \"{}\"\nrtsp_transport = \"tcp\"\nlatency_ms = 50\nstall_timeout_s = 2\n",
        server.url()
    )));
    wait_streaming(&vigil, "door", 0, Duration::from_secs(30));
    for cycle in 1..=3 {
        server.kill();
        wait_until(Duration::from_secs(15), "the camera to notice the server is gone", || {
            state(&vigil, "door") != "streaming"
        });
        let h = camera_health(&vigil, "door");
        assert!(
            h["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "cycle {cycle}: an error is reported: {h}"
        );
        // Let the back-off grow a little, as a real outage would.
        let down = Instant::now();
        wait_until(Duration::from_secs(10), "a few failed reconnects", || {
            camera_health(&vigil, "door")["reconnects"].as_u64().unwrap_or(0) >= 2 * cycle
                && down.elapsed() > Duration::from_secs(2)
        });
        let before = frames(&vigil, "door");
        server.restart();
        let took = wait_streaming(&vigil, "door", before, Duration::from_secs(20));
        eprintln!("restart {cycle}: streaming again {:.2} s after the server came back", took.as_secs_f64());
        assert!(took < Duration::from_secs(5), "restart {cycle}: took {took:?}");
    }
}

#[test]
fn an_rtsp_camera_that_stays_connected_but_sends_nothing_is_detected_and_recovered() {
    let mut server = RtspServer::start();
    let vigil = Vigil::start(&cameras_config(&format!(
        "[[cameras]]\nname = \"gate\"\nsource = \"{}\"\nrtsp_transport = \"tcp\"\nlatency_ms = 50\nstall_timeout_s = 2\n",
        server.url()
    )));
    wait_streaming(&vigil, "gate", 0, Duration::from_secs(30));
    server.stall();
    wait_until(Duration::from_secs(15), "the stall to be detected", || {
        let h = camera_health(&vigil, "gate");
        h["last_error"].as_str().is_some_and(|e| e.contains("stall timeout")) && h["state"] != "streaming"
    });
    let before = frames(&vigil, "gate");
    server.resume();
    let took = wait_streaming(&vigil, "gate", before, Duration::from_secs(30));
    eprintln!("stall recovered {:.2} s after the server resumed", took.as_secs_f64());
    assert!(camera_health(&vigil, "gate")["reconnects"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn four_kinds_of_camera_keep_their_rate_while_a_fifth_is_dead() {
    let server = RtspServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("clip.mp4");
    make_clip(&clip, 30, 10);
    let cams = format!(
        r#"
[[cameras]]
name = "rtsp"
source = "{rtsp}"
rtsp_transport = "tcp"
fps = 5
[[cameras]]
name = "file"
source = "file://{clip}"
fps = 5
[[cameras]]
name = "pattern"
source = "test://smpte?width=320&height=240&fps=10"
fps = 5
[[cameras]]
name = "launch"
source = "launch:videotestsrc is-live=true pattern=snow ! video/x-raw,width=160,height=120,framerate=10/1"
fps = 5
[[cameras]]
name = "dead"
source = "rtsp://admin:s3cr3t-pw@127.0.0.1:{dead}/nothing"
"#,
        rtsp = server.url(),
        clip = clip.display(),
        dead = free_port(),
    );
    let vigil = Vigil::start(&cameras_config(&cams));
    let live = ["rtsp", "file", "pattern", "launch"];
    for name in live {
        wait_streaming(&vigil, name, 0, Duration::from_secs(30));
    }
    // Count frames over a measured window; each camera is limited to 5 fps.
    let start: Vec<u64> = live.iter().map(|n| frames(&vigil, n)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(4)); // the measurement window itself
    let secs = t0.elapsed().as_secs_f64();
    for (i, name) in live.iter().enumerate() {
        let fps = (frames(&vigil, name) - start[i]) as f64 / secs;
        eprintln!("{name}: {fps:.1} fps");
        assert!((4.0..=6.0).contains(&fps), "{name} delivered {fps:.1} fps, configured 5");
        assert_eq!(state(&vigil, name), "streaming");
    }
    let dead = camera_health(&vigil, "dead");
    assert!(matches!(dead["state"].as_str(), Some("reconnecting" | "starting")), "{dead}");
    assert!(dead["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{dead}");
    assert!(dead["reconnects"].as_u64().unwrap_or(0) >= 1, "{dead}");
    // Credentials never show: not in health, not in the logs.
    assert!(dead["source"].as_str().is_some_and(|s| s.starts_with("rtsp://admin:***@127.0.0.1:")), "{dead}");
    assert!(!vigil.health().to_string().contains("s3cr3t-pw"), "password in health");
    assert!(!vigil.stderr().contains("s3cr3t-pw"), "password in the log");
    let rate_drops = camera_health(&vigil, "pattern")["frames_dropped_rate"].as_u64().unwrap_or(0);
    assert!(rate_drops > 10, "the 10 fps pattern at fps = 5 drops half: {rate_drops}");
}

#[test]
fn bad_sources_are_each_reported_for_their_camera_and_the_rest_run() {
    let cams = r#"
[[cameras]]
name = "good"
source = "test://ball?width=160&height=120&fps=10"
[[cameras]]
name = "nohost"
source = "rtsp://"
[[cameras]]
name = "scheme"
source = "gopher://cam/1"
[[cameras]]
name = "missing"
source = "file:///nonexistent/line3.mp4"
[[cameras]]
name = "launch"
source = "launch:videotestsrc ! no_such_element_anywhere"
"#;
    let config = cameras_config(cams);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "v.toml", &config);
    let (code, _, err) = vigil_cmd(&["check", "--config", file.to_str().expect("utf8")], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("panicked"));
    for needle in [
        "cameras[1].source",
        "has no host",
        "cameras[2].source",
        "unknown source scheme `gopher://`",
        "cameras[3].source",
        "does not exist",
        "cameras[4] (launch)",
        "no_such_element_anywhere",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    assert_eq!(err.lines().count(), 4, "one line per broken camera:\n{err}");

    let vigil = Vigil::start(&config);
    wait_streaming(&vigil, "good", 0, Duration::from_secs(30));
    let expect = [
        ("nohost", "failed", "has no host"),
        ("scheme", "failed", "unknown source scheme"),
        ("launch", "failed", "no_such_element_anywhere"),
    ];
    for (name, want_state, want_error) in expect {
        wait_until(Duration::from_secs(15), &format!("{name} to be reported"), || {
            let h = camera_health(&vigil, name);
            h["state"] == want_state && h["last_error"].as_str().is_some_and(|e| e.contains(want_error))
        });
    }
    // A missing file may appear later (a mounted share): retried, with the reason.
    wait_until(Duration::from_secs(15), "missing file reported", || {
        let h = camera_health(&vigil, "missing");
        h["state"] == "reconnecting" && h["last_error"].as_str().is_some_and(|e| e.contains("does not exist"))
    });
    assert_eq!(state(&vigil, "good"), "streaming");
}

#[test]
fn an_http_mjpeg_camera_streams() {
    let server = MjpegServer::start();
    let vigil =
        Vigil::start(&cameras_config(&format!("[[cameras]]\nname = \"web\"\nsource = \"{}\"\n", server.url)));
    wait_streaming(&vigil, "web", 0, Duration::from_secs(30));
    let h = camera_health(&vigil, "web");
    assert_eq!((h["width"].as_u64(), h["height"].as_u64()), (Some(64), Some(48)));
}

#[test]
fn rotation_scaling_and_crop_shape_the_frame() {
    let cams = r#"
[[cameras]]
name = "turned"
source = "test://ball?width=320&height=240&fps=10"
rotate = 90
width = 120
crop = [0.0, 0.5, 1.0, 0.5]
"#;
    let vigil = Vigil::start(&cameras_config(cams));
    wait_streaming(&vigil, "turned", 0, Duration::from_secs(30));
    let h = camera_health(&vigil, "turned");
    // 320x240 rotated is 240x320; scaled to width 120 keeps the aspect: 120x160;
    // the lower half of that is 120x80.
    assert_eq!((h["width"].as_u64(), h["height"].as_u64()), (Some(120), Some(80)), "{h}");
    let (status, ctype, body) = vigil.get("/api/v1/cameras/turned/snapshot.jpg");
    assert_eq!((status, ctype.as_str()), (200, "image/jpeg"));
    let mut dec = zune_jpeg::JpegDecoder::new(&body[..]);
    dec.decode().expect("jpeg");
    assert_eq!(dec.dimensions(), Some((120, 80)));
}

/// A minimal HTTP server streaming `multipart/x-mixed-replace` JPEG frames,
/// the way IP cameras serve MJPEG.
struct MjpegServer {
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl MjpegServer {
    fn start() -> MjpegServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/video.mjpg", listener.local_addr().expect("addr"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let stop = stop2.clone();
                std::thread::spawn(move || {
                    let mut req = [0u8; 4096];
                    let _ = conn.read(&mut req);
                    let head = "HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=vigilframe\r\n\r\n";
                    if conn.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let mut n = 0u8;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let rgb: Vec<u8> =
                            (0..64 * 48).flat_map(|i| [n.wrapping_add(i as u8), 128, 255 - n]).collect();
                        let jpeg = vigil_pipeline::annotate::encode_jpeg(&rgb, 64, 48, 80).expect("jpeg");
                        let part = format!(
                            "--vigilframe\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                            jpeg.len()
                        );
                        if conn.write_all(part.as_bytes()).is_err()
                            || conn.write_all(&jpeg).is_err()
                            || conn.write_all(b"\r\n").is_err()
                        {
                            return;
                        }
                        n = n.wrapping_add(8);
                        std::thread::sleep(Duration::from_millis(100)); // the camera's own 10 fps pace
                    }
                });
            }
        });
        MjpegServer { url, stop }
    }
}

impl Drop for MjpegServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn an_rtsp_camera_streams_over_udp_too() {
    let server = RtspServer::start();
    let vigil = Vigil::start(&cameras_config(&format!(
        "[[cameras]]\nname = \"udp\"\nsource = \"{}\"\nrtsp_transport = \"udp\"\nlatency_ms = 100\n",
        server.url()
    )));
    wait_streaming(&vigil, "udp", 0, Duration::from_secs(30));
    let h = camera_health(&vigil, "udp");
    assert_eq!((h["width"].as_u64(), h["height"].as_u64()), (Some(320), Some(240)));
}
