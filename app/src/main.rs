//! `vigil`: the appliance binary.
//!
//! ```text
//! vigil run   --config vigil.toml   # run cameras, models, MQTT and the web page
//! vigil check --config vigil.toml   # validate config, load models, build pipelines; exit non-zero on problems
//! vigil models inspect M.onnx       # what a model is and how Vigil would run it
//! vigil infer --model M.onnx INPUT  # run a model on images, a directory, a video or a camera
//! vigil bench --model M.onnx        # preprocess / session.run / post-process timings
//! ```
//! Logs go to stderr (`RUST_LOG=debug` for more); the few lines a person needs
//! (where the web page is, how to watch events) go to stdout.

use std::future::IntoFuture;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod bench;
mod bench_cameras;
mod bench_events;
mod healthcheck;
mod infer;
mod inspect;
mod systemd;
use vigil_pipeline::{Appliance, LoadedConfig};

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Edge computer vision: cameras in, ONNX models, events out over MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance until SIGINT or SIGTERM.
    Run {
        /// The TOML config file.
        #[arg(long, short, default_value = "vigil.toml")]
        config: PathBuf,
    },
    /// Validate a config: fields, model files (loaded with ONNX Runtime) and
    /// camera pipelines (built, not started). Exit 0 when everything is fine.
    Check {
        #[arg(long, short, default_value = "vigil.toml")]
        config: PathBuf,
    },
    /// Run a model on images, a directory of images, a video or a camera.
    Infer(infer::InferArgs),
    /// Time preprocessing, session.run and post-processing for a model.
    Bench(bench::BenchArgs),
    /// Measure each camera of a config: fps, decode+convert CPU per frame,
    /// latency to inference; then memory over many reconnects.
    BenchCameras(bench_cameras::BenchCamerasArgs),
    /// Measure the event side: tracker and rules per frame, outbox writes,
    /// delivery to a broker and its latency.
    BenchEvents(bench_events::BenchEventsArgs),
    /// Work with model files.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Helpers for integrators.
    Tools {
        #[command(subcommand)]
        command: ToolsCommand,
    },
}

#[derive(Subcommand)]
enum ToolsCommand {
    /// Print the Azure IoT Hub SAS token Vigil would connect with.
    SasToken {
        /// IoT Hub host name, e.g. myhub.azure-devices.net.
        #[arg(long)]
        hub: String,
        #[arg(long)]
        device: String,
        /// The device's symmetric key (base64).
        #[arg(long)]
        key: String,
        /// Expiry, unix seconds (default: one hour from now).
        #[arg(long)]
        expiry: Option<u64>,
    },
    /// Exit 0 when the running appliance answers `/healthz` (the container
    /// image's HEALTHCHECK; no curl needed).
    Healthcheck(healthcheck::HealthcheckArgs),
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Print a model's inputs, outputs, metadata and the decoder Vigil picks
    /// (or why it cannot pick one; exit status 2 then).
    Inspect(inspect::InspectArgs),
}

/// Exit status for a config that fails validation (distinct from runtime failures).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    vigil_inference::runtime::tune_allocator(
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
    );
    let cli = Cli::parse();
    // Benchmarks reconnect on purpose: their own output is the report.
    let default_filter = if matches!(cli.command, Command::BenchCameras(_) | Command::BenchEvents(_)) {
        "error"
    } else {
        "info,ort=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Infer(args) => report(infer::run(&args)),
        Command::Bench(args) => report(bench::run(&args)),
        Command::BenchCameras(args) => report(bench_cameras::run(&args)),
        Command::BenchEvents(args) => report(bench_events::run(&args)),
        Command::Tools { command: ToolsCommand::Healthcheck(args) } => match healthcheck::run(&args) {
            Ok(status) => {
                println!("{status}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vigil: unhealthy: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Tools { command: ToolsCommand::SasToken { hub, device, key, expiry } } => {
            let expiry = expiry.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    + 3600
            });
            match vigil_pipeline::azure::sas_token(&format!("{hub}/devices/{device}"), &key, expiry) {
                Ok(t) => {
                    println!("username: {}", vigil_pipeline::azure::username(&hub, &device));
                    println!("password: {t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vigil: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Models { command: ModelsCommand::Inspect(args) } => match inspect::run(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(EXIT_CONFIG),
            Err(e) => report(Err(e)),
        },
    }
}

/// One line on stderr for a failed tool command.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &Path) -> ExitCode {
    let loaded = match LoadedConfig::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = vigil_camera::init() {
        eprintln!("{}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    let problems = vigil_pipeline::check_deep(&loaded);
    if !problems.is_empty() {
        for p in problems {
            eprintln!("{}: {p}", file.display());
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    println!(
        "{}: ok ({} model(s), {} camera(s))",
        file.display(),
        loaded.config.models.len(),
        loaded.config.cameras.len()
    );
    ExitCode::SUCCESS
}

fn run(file: &Path) -> ExitCode {
    let loaded = match LoadedConfig::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vigil-rt")
        .max_blocking_threads(blocking_threads(cores))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vigil: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(loaded));
    // Blocking tasks still running (a camera that would not stop, a JPEG
    // being encoded for a client that left) must not hold up the exit:
    // everything that matters was flushed within the deadline, or given up.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// From SIGTERM to exit, whatever clients are connected: systemd's and
/// Docker's default stop timeouts (90 s, 10 s) are both above it, so a stop
/// never ends in SIGKILL.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// Threads for the runtime's blocking work: live-view and snapshot JPEGs,
/// the outbox's file I/O, model loads. Tokio's default allows 512, and a
/// pool that keeps getting work never shrinks: its idle threads take turns,
/// so none stays idle for the 10 s that retires it, and the pool keeps as
/// many threads as its busiest moment ever needed. In a 32-minute soak with
/// three web clients it climbed from 9 to 12 threads (RSS with it), and
/// every extra live view could add one more; bounded, it stayed at 8.
/// A burst now waits its turn: a live view gets fewer frames.
fn blocking_threads(cores: usize) -> usize {
    (cores + 4).clamp(4, 16)
}

/// Hands the free pages inside glibc's heaps back to the system once a
/// minute. Frames, tensors and JPEGs come and go at different sizes; the
/// heap in use stays flat (heaptrack: 107 MB from the eleventh to the
/// twentieth minute of a soak), but freed pages between live blocks stay
/// resident, and over weeks that reads as a leak (32-minute soaks, RSS
/// slope after warm-up: 2.5 MiB/h without this, 1.7 with it).
async fn trim_heap_periodically() {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = tokio::task::spawn_blocking(vigil_inference::runtime::release_free_memory).await;
    }
}

/// Of the deadline, what the tokio runtime gets at the very end to let its
/// last blocking tasks go; the appliance and the HTTP drain get the rest.
const RUNTIME_GRACE: Duration = Duration::from_millis(500);

async fn serve(loaded: LoadedConfig) -> anyhow::Result<()> {
    vigil_camera::init()?;
    // Bind first: a port clash is reported before cameras and models start.
    let listener = tokio::net::TcpListener::bind(loaded.listen).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {} (http.listen): {e}; pick another port", loaded.listen)
    })?;
    let addr = listener.local_addr()?;
    let token = vigil_pipeline::config::api_token(&loaded).map_err(anyhow::Error::msg)?;
    if token.is_none() {
        tracing::warn!(
            "http.auth = \"none\": the API and model uploads are open to anyone who can reach {addr}"
        );
    }
    let signing_key = match &loaded.config.http.model_signing_key {
        Some(k) => Some(
            vigil_pipeline::models::read_verifying_key(&loaded.base_dir.join(k))
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let app = Appliance::start(&loaded)?;
    tokio::spawn(trim_heap_periodically());

    let shown: SocketAddr =
        if addr.ip().is_unspecified() { ([127, 0, 0, 1], addr.port()).into() } else { addr };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "vigil {} running as device {:?}", env!("CARGO_PKG_VERSION"), app.device());
    let _ = writeln!(out, "  web page: http://{shown}/");
    match &loaded.config.http.auth {
        vigil_pipeline::config::AuthMode::Token => {
            let file = match (&loaded.config.http.token_env, &loaded.config.http.token_file) {
                (Some(var), _) => format!("${var}"),
                (None, Some(f)) => loaded.base_dir.join(f).display().to_string(),
                (None, None) => loaded.data_dir.join("api-token").display().to_string(),
            };
            let _ = writeln!(out, "  api token: {file}");
        }
        vigil_pipeline::config::AuthMode::None => {
            let _ = writeln!(out, "  api token: none (http.auth = \"none\")");
        }
    }
    let _ = writeln!(
        out,
        "  events:   mosquitto_sub -h {} -p {} -t '{}' -v",
        loaded.mqtt.host,
        loaded.mqtt.port,
        app.topics().events.trim_end_matches("/events").to_owned() + "/#"
    );
    let _ = out.flush();
    drop(out);

    let h = &loaded.config.http;
    let settings = vigil_pipeline::settings::RunSettings::new(&loaded, 1);
    let router = vigil_api::router(
        app.clone(),
        vigil_api::ApiSettings {
            token: token.map(Arc::from),
            max_upload_bytes: settings.max_upload_bytes,
            request_timeout: settings.request_timeout,
            signing_key,
            mjpeg_fps: h.mjpeg_fps,
        },
    );
    // Shutdown: the signal cancels the appliance's `stopping` token, which
    // ends every live stream and starts axum's drain; the appliance stops
    // (cameras, workers, open tracks' ends, the outbox flush, `offline`) at
    // the same time. Both are bounded: a client that holds a request open
    // does not hold the process.
    // Under systemd (Type=notify): ready now, pings while making progress.
    let notifier = systemd::Notifier::from_env().map(Arc::new);
    let watchdog = notifier.as_ref().map(|n| {
        n.send(&format!("READY=1\nSTATUS=running as device {}", app.device()));
        tokio::spawn(watchdog(n.clone(), app.clone()))
    });
    let stopping = app.stopping();
    let server = axum::serve(listener, router).with_graceful_shutdown(stopping.clone().cancelled_owned());
    let mut server = tokio::spawn(server.into_future());
    tokio::select! {
        r = &mut server => {
            // The server failed on its own: stop the rest cleanly anyway.
            app.shutdown(SHUTDOWN_DEADLINE - RUNTIME_GRACE).await;
            r??;
            return Ok(());
        }
        () = shutdown_signal() => app.begin_shutdown(),
    }
    if let Some(n) = &notifier {
        n.send("STOPPING=1");
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    let t0 = std::time::Instant::now();
    tracing::info!(deadline_s = SHUTDOWN_DEADLINE.as_secs_f64(), "shutting down");
    let budget = SHUTDOWN_DEADLINE - RUNTIME_GRACE;
    let http = async {
        if tokio::time::timeout(budget, &mut server).await.is_err() {
            tracing::warn!("HTTP clients still connected at the shutdown deadline; closing them");
            server.abort();
        }
    };
    tokio::join!(http, app.shutdown(budget));
    tracing::info!(took_ms = t0.elapsed().as_millis() as u64, "stopped");
    Ok(())
}

/// Pings systemd's watchdog every half `WatchdogSec=` while the appliance
/// makes progress; stops (so systemd restarts Vigil) once it is wedged.
async fn watchdog(notifier: Arc<systemd::Notifier>, app: Arc<Appliance>) {
    let Some(every) = systemd::watchdog_interval() else { return };
    let mut progress = systemd::Progress::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wedged = false;
    loop {
        tick.tick().await;
        match progress.check(&app.health()) {
            Ok(()) => {
                if wedged {
                    tracing::info!("making progress again: watchdog pings resume");
                    wedged = false;
                }
                notifier.send("WATCHDOG=1");
            }
            Err(reason) => {
                if !wedged {
                    tracing::error!(%reason, "no progress: watchdog pings stop, systemd will restart Vigil");
                    notifier.send(&format!("STATUS=wedged: {reason}"));
                    wedged = true;
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
