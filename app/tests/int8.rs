//! INT8 models made by `models/quantize.py` are models like any other:
//! `vigil infer` gives what the Python reference gives on them, and
//! `vigil models inspect` says they are quantized and how. Also the shadow
//! evaluation's candidates (models/ball/make_candidates.py): the bad one
//! disagrees with the ball model, the good one agrees.
//!
//! The INT8 YOLOv8n (3.8 MB) is not committed: it is made at test time from
//! the refilled YOLOv8n and a calibration set synthesised from the test
//! photographs, and cached in `.deps/fixtures` under the hash of everything
//! that makes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repo root")
}

fn venv_python() -> PathBuf {
    let py = repo_root().join(".deps/venv/bin/python");
    assert!(py.is_file(), "{} missing: run deploy/bootstrap.sh", py.display());
    py
}

fn photos() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo_root().join("tests/data/photos"))
        .expect("photos")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    assert_eq!(v.len(), 4, "four test photographs");
    v
}

/// 16 hex digits of the sha256 of the inputs' bytes.
fn key(inputs: &[PathBuf]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in inputs {
        h.update(std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `.deps/fixtures/<name>`, made by `build` the first time (under a temp
/// name, renamed into place, so parallel tests never see half a file).
fn cached(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let dir = repo_root().join(".deps/fixtures");
    std::fs::create_dir_all(&dir).expect("fixtures dir");
    let out = dir.join(name);
    if !out.is_file() {
        let tmp = tempfile::Builder::new().suffix(".onnx").tempfile_in(&dir).expect("temp").into_temp_path();
        build(&tmp);
        tmp.persist(&out).expect("rename");
    }
    out
}

fn python(args: &[&std::ffi::OsStr]) {
    let out = Command::new(venv_python()).args(args).output().expect("python");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The refilled YOLOv8n (same cache entry as the parity tests').
fn float_yolov8n() -> PathBuf {
    let root = repo_root();
    let skeleton = root.join("models/yolo/yolov8n.skeleton.onnx");
    let script = root.join("models/yolo/refill_weights.py");
    let k = key(&[skeleton.clone(), script.clone()]);
    cached(&format!("yolov8n-{k}.onnx"), |out| {
        python(&[script.as_os_str(), skeleton.as_os_str(), out.as_os_str()]);
    })
}

/// YOLOv8n quantized by models/quantize.py on 32 frames synthesised from
/// the photographs (MinMax only, to keep the test short; `--method auto`
/// tries all three).
fn int8_yolov8n() -> PathBuf {
    let root = repo_root();
    let float = float_yolov8n();
    let quantize = root.join("models/quantize.py");
    let calib_script = root.join("models/calibration_set.py");
    let mut inputs = vec![
        float.clone(),
        quantize.clone(),
        calib_script.clone(),
        root.join("tests/reference/reference.py"),
    ];
    inputs.extend(photos());
    let k = key(&inputs);
    cached(&format!("yolov8n-int8-{k}.onnx"), |out| {
        let calib = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            calib_script.as_os_str(),
            "synth".as_ref(),
            calib.path().as_os_str(),
            "--camera".as_ref(),
            "test-photos".as_ref(),
            "--frames".as_ref(),
            "32".as_ref(),
        ];
        let ps = photos();
        args.extend(ps.iter().map(|p| p.as_os_str()));
        python(&args);
        python(&[
            quantize.as_os_str(),
            float.as_os_str(),
            calib.path().as_os_str(),
            out.as_os_str(),
            "--method".as_ref(),
            "minmax".as_ref(),
            "--speed-rounds".as_ref(),
            "2".as_ref(),
        ]);
    })
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// `vigil infer --json` on each image, in order.
fn vigil_infer(model: &Path, images: &[PathBuf]) -> Vec<Value> {
    let mut all = Vec::new();
    for img in images {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["infer", "--json", "--model"])
            .arg(model)
            .arg(img)
            .output()
            .expect("run vigil infer");
        assert!(
            out.status.success(),
            "vigil infer {}: {}",
            model.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        all.extend(json_lines(&out.stdout));
    }
    all
}

fn reference(model: &Path, images: &[PathBuf]) -> Vec<Value> {
    let out = Command::new(venv_python())
        .arg(repo_root().join("tests/reference/reference.py"))
        .arg("--model")
        .arg(model)
        .args(images)
        .output()
        .expect("run reference.py");
    assert!(out.status.success(), "reference {}: {}", model.display(), String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout)
}

fn boxes(v: &Value) -> Vec<(i64, [f64; 4], f64)> {
    v["detections"]
        .as_array()
        .expect("detections")
        .iter()
        .map(|d| {
            let b: Vec<f64> =
                d["box"].as_array().expect("box").iter().map(|x| x.as_f64().expect("num")).collect();
            (
                d["class_id"].as_i64().expect("class"),
                [b[0], b[1], b[2], b[3]],
                d["score"].as_f64().expect("score"),
            )
        })
        .collect()
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h;
    if union <= 0.0 {
        // Two degenerate boxes (zero area, clipped in the pad): equal when their corners are.
        if a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3) { 1.0 } else { 0.0 }
    } else {
        w * h / union
    }
}

/// Greedy one-to-one matching by class at IoU >= `min_iou`: (pairs, |a|, |b|).
fn matches(a: &[(i64, [f64; 4], f64)], b: &[(i64, [f64; 4], f64)], min_iou: f64) -> Vec<(usize, usize, f64)> {
    let mut used = vec![false; b.len()];
    let mut pairs = Vec::new();
    for (i, (class, bx, _)) in a.iter().enumerate() {
        let best = b
            .iter()
            .enumerate()
            .filter(|(j, d)| !used[*j] && d.0 == *class)
            .map(|(j, d)| (j, iou(bx, &d.1)))
            .filter(|(_, o)| *o >= min_iou)
            .max_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((j, o)) = best {
            used[j] = true;
            pairs.push((i, j, o));
        }
    }
    pairs
}

#[test]
fn an_int8_yolov8n_gives_what_the_reference_gives_through_vigil_infer() {
    let model = int8_yolov8n();
    let photos = photos();
    let got = vigil_infer(&model, &photos);
    let want = reference(&model, &photos);
    assert_eq!((got.len(), want.len()), (4, 4));
    let mut compared = 0;
    for (g, w) in got.iter().zip(&want) {
        let ctx = w["image"].as_str().unwrap_or("?").to_owned();
        // Recognised from its outputs and Ultralytics metadata, as the float model is.
        assert_eq!(g["decoder"], "yolov8", "{ctx}");
        assert_eq!(w["decoder"], "yolov8", "{ctx}");
        let (gb, wb) = (boxes(g), boxes(w));
        assert_eq!(
            gb.len(),
            wb.len(),
            "{ctx}: detection count (vigil {} vs reference {})",
            gb.len(),
            wb.len()
        );
        let pairs = matches(&wb, &gb, 0.99);
        assert_eq!(pairs.len(), wb.len(), "{ctx}: every reference detection has a vigil one at IoU >= 0.99");
        for (i, j, _) in pairs {
            assert!((wb[i].2 - gb[j].2).abs() <= 1e-3, "{ctx}: score {} vs {}", gb[j].2, wb[i].2);
        }
        compared += wb.len();
    }
    assert!(compared > 0, "the INT8 model found nothing on any photo: nothing was compared");
}

#[test]
fn vigil_models_inspect_says_the_int8_model_is_quantized_and_the_float_one_is_not() {
    let inspect = |model: &Path, json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vigil"));
        c.args(["models", "inspect"]).arg(model);
        if json {
            c.arg("--json");
        }
        let out = c.output().expect("vigil models inspect");
        assert!(
            out.status.success(),
            "inspect {}: {}",
            model.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    let int8 = int8_yolov8n();
    let text = inspect(&int8, false);
    let line = text
        .lines()
        .find(|l| l.starts_with("quantized"))
        .unwrap_or_else(|| panic!("no quantized line:\n{text}"));
    assert!(line.contains("yes: QDQ ("), "{line}");
    assert!(line.contains("int8 weights per channel, uint8 activations"), "{line}");
    assert!(text.lines().any(|l| l.starts_with("decoder") && l.contains("yolov8")), "{text}");

    let j: Value = serde_json::from_str(&inspect(&int8, true)).expect("JSON");
    let q = &j["quantization"];
    assert_eq!(q["format"], "qdq");
    assert_eq!(q["per_channel"], true);
    assert_eq!(q["weight_types"], serde_json::json!(["int8"]));
    assert!(q["quantize_linear"].as_u64().expect("count") > 50, "{q}");
    assert!(q["dequantize_linear"].as_u64().expect("count") > 100, "{q}");
    // YOLOv8n has 64 convs; quantize.py keeps the head's last seven in
    // float (3 box, 3 class, the DFL's).
    assert_eq!(q["float_layers"], 7, "{q}");
    assert_eq!(q["quantized_layers"], 57, "{q}");
    // The quantizer's own summary travels in the metadata.
    let summary: Value = serde_json::from_str(
        j["metadata"]["vigil_quantization"].as_str().expect("vigil_quantization metadata"),
    )
    .expect("summary JSON");
    assert_eq!(summary["method"], "minmax");
    assert_eq!(summary["camera"], "test-photos");
    assert_eq!(summary["calibration_frames"], 24);
    assert_eq!(j["metadata"]["task"], "detect", "the float model's metadata is kept");

    let float = inspect(&float_yolov8n(), false);
    let line = float.lines().find(|l| l.starts_with("quantized")).expect("quantized line");
    assert!(line.contains("no (float: 64 Conv/Gemm/MatMul layers"), "{line}");
}

/// A 640x480 frame like `videotestsrc pattern=ball`: a white disk on black.
fn ball_frame(dir: &Path, n: usize, (x, y, r): (f64, f64, f64)) -> PathBuf {
    let img = image::RgbImage::from_fn(640, 480, |px, py| {
        let (dx, dy) = (f64::from(px) + 0.5 - x, f64::from(py) + 0.5 - y);
        if dx * dx + dy * dy <= r * r { image::Rgb([255, 255, 255]) } else { image::Rgb([0, 0, 0]) }
    });
    let path = dir.join(format!("ball{n}.png"));
    img.save(&path).expect("png");
    path
}

#[test]
fn the_bad_candidate_disagrees_with_the_ball_model_and_the_good_one_agrees() {
    let root = repo_root();
    let dir = tempfile::tempdir().expect("tempdir");
    python(&[root.join("models/ball/make_candidates.py").as_os_str(), dir.path().as_os_str()]);
    for name in ["candidate_good.onnx", "candidate_bad.onnx"] {
        assert!(
            std::fs::read(dir.path().join(name)).expect("built")
                == std::fs::read(root.join("models/ball").join(name)).expect("committed"),
            "models/ball/{name} differs from what make_candidates.py builds; re-run it"
        );
    }
    let frames: Vec<PathBuf> =
        [(100.0, 100.0, 20.0), (320.0, 240.0, 20.0), (500.0, 380.0, 30.0), (200.0, 400.0, 15.0)]
            .into_iter()
            .enumerate()
            .map(|(n, b)| ball_frame(dir.path(), n, b))
            .collect();
    let active: Vec<_> =
        vigil_infer(&root.join("models/ball/ball.onnx"), &frames).iter().map(boxes).collect();
    let f1 = |name: &str| {
        let cand: Vec<_> =
            vigil_infer(&root.join("models/ball").join(name), &frames).iter().map(boxes).collect();
        let (mut m, mut na, mut nc) = (0, 0, 0);
        for (a, c) in active.iter().zip(&cand) {
            m += matches(a, c, 0.5).len();
            na += a.len();
            nc += c.len();
        }
        let (p, r) = (m as f64 / nc.max(1) as f64, m as f64 / na.max(1) as f64);
        (if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 }, nc)
    };
    assert_eq!(active.iter().map(Vec::len).sum::<usize>(), 4, "the ball model finds each ball");
    let (bad, bad_n) = f1("candidate_bad.onnx");
    let (good, _) = f1("candidate_good.onnx");
    assert_eq!(bad_n, 4, "the bad candidate still fires on every ball");
    assert!(bad < 0.2, "bad candidate F1 {bad}");
    assert!(good >= 0.95, "good candidate F1 {good}");
}

/// A process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn http(method: &str, url: &str, token: &str, body: Option<&[u8]>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(120)))
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Authorization", format!("Bearer {token}"))
        .body(body.map(<[u8]>::to_vec).unwrap_or_default())
        .expect("request");
    let mut resp = agent.run(req).expect("HTTP request");
    let body = resp.body_mut().read_to_vec().expect("body");
    (resp.status().as_u16(), serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Through the real API of a running Vigil: the INT8 file is uploaded to
/// the float model's slot, passes the same checks as any upload (loads,
/// fits the slot's decoder and labels, self-test without NaN), is activated
/// and serves the camera.
#[test]
fn an_int8_model_passes_the_upload_checks_and_serves() {
    use std::io::BufRead;
    let int8 = int8_yolov8n();
    let dir = tempfile::tempdir().expect("tempdir");

    let broker_port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {broker_port} 127.0.0.1\nallow_anonymous true\n")).expect("conf");
    let _broker = Killed(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (deploy/bootstrap.sh installs it)"),
    );

    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        format!(
            "device_id = \"int8\"\ndata_dir = \"{data}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[[models]]\nname = \"det\"\npath = \"{model}\"\n\
             [[cameras]]\nname = \"cam1\"\nsource = \"test://ball?width=640&height=480&fps=5\"\nmodel = \"det\"\n",
            data = dir.path().join("data").display(),
            model = float_yolov8n().display()
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log"))
        .spawn()
        .expect("spawn vigil");
    let stdout = child.stdout.take().expect("stdout");
    let _vigil = Killed(child);
    // The web address and the token file are printed once it listens.
    let (mut web, mut token) = (None, None);
    for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(url) = line.trim().strip_prefix("web page: ") {
            web = Some(url.trim_end_matches('/').to_owned());
        }
        if let Some(file) = line.trim().strip_prefix("api token: ") {
            token = Some(std::fs::read_to_string(file).expect("token file").trim().to_owned());
        }
        if web.is_some() && token.is_some() {
            break;
        }
    }
    let stderr = || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    let (Some(web), Some(token)) = (web, token) else { panic!("vigil did not start:\n{}", stderr()) };

    let bytes = std::fs::read(&int8).expect("int8 model");
    let (status, body) =
        http("POST", &format!("{web}/api/v1/models/det/versions?activate=true"), &token, Some(&bytes));
    assert_eq!(status, 201, "upload: {body}\n{}", stderr());
    assert_eq!(body["activation"]["version"], 2, "{body}");

    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let (status, health) = http("GET", &format!("{web}/healthz"), &token, None);
    assert_eq!(status, 200);
    let model = &health["models"][0];
    assert_eq!(model["version"], 2, "{health}");
    assert_eq!(model["sha256"], sha.as_str(), "the INT8 model is the active one: {health}");
    // And it runs the camera's frames (every frame after the swap is run
    // wholly by version 2), without an inference error.
    let runs = |h: &Value| h["models"][0]["frames_run"].as_u64().expect("frames_run");
    let start = runs(&health);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, h) = http("GET", &format!("{web}/healthz"), &token, None);
        assert_eq!(h["models"][0]["version"], 2, "{h}");
        assert_eq!(h["cameras"][0]["inference_errors"], 0, "{h}");
        if runs(&h) >= start + 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the INT8 model ran no frames in 60 s: {h}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn quantize_py_refuses_a_calibration_set_whose_manifest_lies_and_says_which_frame() {
    let root = repo_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let set = dir.path().join("set");
    let photo = &photos()[0];
    python(&[
        root.join("models/calibration_set.py").as_os_str(),
        "synth".as_ref(),
        set.as_os_str(),
        "--camera".as_ref(),
        "c".as_ref(),
        "--frames".as_ref(),
        "3".as_ref(),
        photo.as_os_str(),
    ]);
    let manifest = set.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).expect("manifest")).expect("JSON");
    m["frames"][1]["width"] = serde_json::json!(9999);
    std::fs::write(&manifest, serde_json::to_vec(&m).expect("JSON")).expect("write");
    let out_model = dir.path().join("out.onnx");
    let out = Command::new(venv_python())
        .arg(root.join("models/quantize.py"))
        .arg(root.join("models/ball/ball.onnx"))
        .arg(&set)
        .arg(&out_model)
        .output()
        .expect("quantize.py");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("000001.jpg") && err.contains("manifest.json says 9999x"), "{err}");
    assert!(!out_model.exists(), "nothing is written");
}
