//! The web page in a real browser, and the API under a property-based fuzz.
//!
//! - Debian's Chromium, driven by Playwright (`tests/web/page.py`): the live
//!   preview moves, events appear, a model uploaded and activated from the
//!   page takes effect on the line. Screenshots land in
//!   `target/test-artifacts/`.
//! - Schemathesis generates requests from `/api/v1/openapi.json` (with and
//!   without the token, valid and invalid): no 5xx, every status and content
//!   type as documented, every JSON body as its schema says.
//!
//! Both tools come from PyPI into .deps/venv (deploy/bootstrap.sh).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::*;

fn artifacts() -> PathBuf {
    let dir = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

#[test]
fn the_web_page_shows_the_line_and_swaps_a_model_in_chromium() {
    let python = repo_root().join(".deps/venv/bin/python");
    let has_playwright = Command::new(&python).args(["-c", "import playwright"]).status();
    assert!(
        has_playwright.is_ok_and(|s| s.success()),
        "Playwright is missing from {}: run deploy/bootstrap.sh",
        python.display()
    );

    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "vigil/web/detections");
    let v = Vigil::start(&ball_config("web", &broker.url(), 15));
    wait_until(Duration::from_secs(30), "cam1 streaming", || {
        camera_health(&v, "cam1")["state"] == "streaming"
    });

    let model = v.dir.path().join("ball-v2.onnx");
    let v2 = ball_model_variant("uploaded from the web page");
    std::fs::write(&model, &v2).expect("model file");
    let out_dir = artifacts();
    for f in ["web-page.png", "web-page-phone.png"] {
        let _ = std::fs::remove_file(out_dir.join(f));
    }

    let out = Command::new(&python)
        .arg(repo_root().join("tests/web/page.py"))
        .env("VIGIL_URL", &v.web)
        .env("VIGIL_TOKEN", v.token.as_deref().expect("token"))
        .env("MODEL_FILE", &model)
        .env("ARTIFACTS", &out_dir)
        .output()
        .expect("the venv's python (deploy/bootstrap.sh makes it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "the browser run failed:\n{stdout}\n{}\nvigil (last lines):\n{}",
        String::from_utf8_lossy(&out.stderr),
        v.stderr()
            .lines()
            .filter(|l| !l.contains("ort::logging"))
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );

    // What the page did took effect on the line: v2 infers every frame now.
    let sha = format!("{:x}", Sha256::digest(&v2));
    loop {
        let ev: serde_json::Value =
            serde_json::from_slice(&sub.next_on("vigil/web/detections", Duration::from_secs(30)))
                .expect("JSON");
        if ev["model"]["version"] == 2 {
            assert_eq!(ev["model"]["sha256"], sha.as_str());
            break;
        }
    }
    let h = v.health();
    assert_eq!(h["models"][0]["version"], 2);

    for f in ["web-page.png", "web-page-phone.png"] {
        let png = std::fs::read(out_dir.join(f)).unwrap_or_else(|_| panic!("no screenshot {f}"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{f} is a PNG");
        let width = u32::from_be_bytes(png[16..20].try_into().expect("IHDR"));
        assert!(width == 1280 || width == 390, "{f}: {width} px wide");
    }
}

#[test]
fn the_api_survives_a_schemathesis_fuzz_from_its_openapi_document() {
    let st = repo_root().join(".deps/venv/bin/schemathesis");
    assert!(st.exists(), "{} is missing: run deploy/bootstrap.sh", st.display());

    let broker = Mosquitto::start();
    let v = Vigil::start(&ball_config("fuzz", &broker.url(), 10));
    wait_until(Duration::from_secs(30), "cam1 streaming", || {
        camera_health(&v, "cam1")["state"] == "streaming"
    });

    // Real names for path parameters so the fuzz reaches the handlers
    // (random slot names stop at 404), the token from the environment.
    let cfg = v.dir.path().join("schemathesis.toml");
    std::fs::write(
        &cfg,
        "headers = { Authorization = \"Bearer ${VIGIL_TOKEN}\" }\n\
         parameters = { \"path.slot\" = \"ball\", \"path.name\" = \"cam1\" }\n\
         [generation]\nmax-examples = 40\n",
    )
    .expect("config");
    let out = Command::new(&st)
        .arg("--config-file")
        .arg(&cfg)
        .args(["run", &format!("{}/api/v1/openapi.json", v.web)])
        // Streams never end, so a request generator cannot wait for them;
        // the route tests in tests/api.rs read them.
        .args(["--exclude-path-regex", "stream"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,missing_required_header,ignored_auth",
        ])
        .args(["--workers", "2", "--seed", "1", "--request-timeout", "30"])
        .env("VIGIL_TOKEN", v.token.as_deref().expect("token"))
        .env("NO_COLOR", "1")
        .current_dir(v.dir.path())
        .output()
        .expect("schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> =
        stdout.lines().filter(|l| l.contains("generated") || l.contains("passed")).collect();
    println!("{}", summary.join("\n"));
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It did test: the summary counts generated cases.
    assert!(stdout.contains("generated"), "{stdout}");

    // The appliance is still serving after the fuzz.
    let mut v = v;
    assert!(v.is_running(), "vigil exited: {}", v.stderr());
    let h = v.health();
    assert_eq!(h["models"][0]["version"], 1, "the fuzz must not have changed the model");
    assert!(!v.stderr().contains("panicked"), "{}", v.stderr());
}
