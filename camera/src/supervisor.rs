use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use parking_lot::{Condvar, Mutex};

use crate::codecs::{self, MissingPlugin};
use crate::launch::{launch_string, prepare, unbuildable};
use crate::{Frame, FrameSlot, Progress, Source};

/// How a camera is run and watched.
#[derive(Debug, Clone)]
pub struct CameraOptions {
    /// Upper bound on frames per second handed to inference; extra frames are
    /// dropped right after decode, before rotation, scaling and colour
    /// conversion cost anything (compressed frames still have to be decoded).
    pub fps: Option<u32>,
    /// Frame size for inference, scaled by GStreamer; one of the two keeps
    /// the aspect ratio.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Region of interest `[x, y, w, h]`, fractions of the (rotated, scaled)
    /// frame. Applied as a view: no pixel is copied.
    pub crop: Option<[f32; 4]>,
    /// Clockwise rotation in degrees: 0, 90, 180 or 270.
    pub rotate: u16,
    pub flip: Flip,
    pub rtsp_transport: RtspTransport,
    /// RTSP jitter buffer in milliseconds: lower is fresher, higher rides out
    /// network hiccups.
    pub latency_ms: u32,
    /// Files start over at the end instead of ending the camera.
    pub loop_file: bool,
    /// Files play at their own frame rate, like a camera; off: as fast as
    /// they decode (frames the model cannot keep up with are dropped).
    pub realtime: bool,
    /// Threads each software video decoder may use (libav's `max-threads`);
    /// `None` leaves the decoder's default of one per core. Several cameras
    /// on a small box decode in parallel already: one thread each keeps them
    /// from oversubscribing the cores inference needs.
    pub decode_threads: Option<u32>,
    /// No frame for this long while streaming: the camera counts as stalled
    /// and its pipeline is rebuilt.
    pub stall_timeout: Duration,
    /// The first frame must arrive within this long of starting.
    pub start_timeout: Duration,
    /// First wait before a reconnect; doubles on each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest wait between attempts: how soon after a camera comes back it
    /// streams again, at worst.
    pub backoff_max: Duration,
}

/// Mirroring, applied after rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flip {
    #[default]
    None,
    Horizontal,
    Vertical,
}

/// How RTSP media reaches Vigil.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    /// TCP first (works through NAT and firewalls), then UDP.
    #[default]
    Auto,
    Tcp,
    Udp,
}

impl Default for CameraOptions {
    fn default() -> Self {
        CameraOptions {
            fps: None,
            width: None,
            height: None,
            crop: None,
            rotate: 0,
            flip: Flip::None,
            rtsp_transport: RtspTransport::Auto,
            latency_ms: 200,
            loop_file: true,
            realtime: true,
            decode_threads: None,
            stall_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(20),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(3),
        }
    }
}

/// Where a camera is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraState {
    /// Pipeline built, waiting for the first frame.
    Starting,
    /// Frames are flowing.
    Streaming,
    /// No frame within the stall timeout; about to reconnect.
    Stalled,
    /// Waiting out the back-off before the next attempt.
    Reconnecting,
    /// A problem that retrying cannot fix: a launch string that does not
    /// parse, or video that needs a GStreamer plug-in that is not installed
    /// (`last_error` names it and the package). Reported, never retried.
    Failed,
    /// A file that reached its end with looping off.
    Ended,
    /// Shut down on request.
    Stopped,
}

impl CameraState {
    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Starting => "starting",
            CameraState::Streaming => "streaming",
            CameraState::Stalled => "stalled",
            CameraState::Reconnecting => "reconnecting",
            CameraState::Failed => "failed",
            CameraState::Ended => "ended",
            CameraState::Stopped => "stopped",
        }
    }
}

/// Counters and state shared between the camera's threads and readers
/// (health, metrics).
#[derive(Debug)]
pub struct CameraStats {
    /// Frames received, and when the newest came.
    frames: Progress,
    /// Frames `videorate` dropped to honour the camera's fps limit.
    frames_dropped_rate: AtomicU64,
    reconnects: AtomicU64,
    status: Mutex<(CameraState, Option<String>)>,
    frame_size: Mutex<Option<(u32, u32)>>,
}

/// A snapshot of a camera's health.
#[derive(Debug, Clone)]
pub struct CameraStatus {
    pub state: CameraState,
    pub last_error: Option<String>,
    pub last_frame_age: Option<Duration>,
    pub frames_received: u64,
    /// Frames the consumer never took because a newer one replaced them
    /// (inference busy).
    pub frames_dropped: u64,
    /// Frames dropped on purpose to keep to the camera's fps limit.
    pub frames_dropped_rate: u64,
    pub reconnects: u64,
    pub frame_size: Option<(u32, u32)>,
}

impl CameraStats {
    fn new() -> CameraStats {
        CameraStats {
            frames: Progress::default(),
            frames_dropped_rate: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            status: Mutex::new((CameraState::Starting, None)),
            frame_size: Mutex::new(None),
        }
    }

    fn set_state(&self, state: CameraState) {
        self.status.lock().0 = state;
    }

    fn set_error(&self, state: CameraState, error: String) {
        *self.status.lock() = (state, Some(error));
    }

    fn state(&self) -> CameraState {
        self.status.lock().0
    }
}

/// A running camera: a supervisor thread that keeps its pipeline alive.
#[derive(Debug)]
pub struct Camera {
    name: Arc<str>,
    source: Source,
    stats: Arc<CameraStats>,
    slot: Arc<FrameSlot>,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct StopSignal {
    stopped: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl StopSignal {
    fn is_set(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
    fn set(&self) {
        self.stopped.store(true, Ordering::Release);
        let _g = self.lock.lock();
        self.cv.notify_all();
    }
    /// Sleeps for `d` unless stopped first. Returns true when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = self.lock.lock();
        while !self.is_set() {
            if self.cv.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
        self.is_set()
    }
}

impl Camera {
    /// Starts the camera in the background and returns at once: a slow or
    /// dead camera never delays startup of anything else.
    pub fn start(name: &str, source: Source, options: CameraOptions, slot: Arc<FrameSlot>) -> Camera {
        let name: Arc<str> = name.into();
        let stats = Arc::new(CameraStats::new());
        let stop = Arc::new(StopSignal::default());
        let thread = {
            let (name, source, stats, slot, stop) =
                (name.clone(), source.clone(), stats.clone(), slot.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("cam-{name}"))
                .spawn(move || {
                    let span = tracing::info_span!("camera", camera = %name);
                    let _e = span.enter();
                    supervise(&name, &source, &options, &stats, &slot, &stop);
                })
                .expect("spawning a camera thread")
        };
        Camera { name, source, stats, slot, stop, thread: Some(thread) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn slot(&self) -> &Arc<FrameSlot> {
        &self.slot
    }

    pub fn status(&self) -> CameraStatus {
        let (state, last_error) = self.stats.status.lock().clone();
        CameraStatus {
            state,
            last_error,
            last_frame_age: self.stats.frames.age(),
            frames_received: self.stats.frames.count(),
            frames_dropped: self.slot.dropped(),
            frames_dropped_rate: self.stats.frames_dropped_rate.load(Ordering::Relaxed),
            reconnects: self.stats.reconnects.load(Ordering::Relaxed),
            frame_size: *self.stats.frame_size.lock(),
        }
    }

    /// Stops the pipeline and closes the frame slot, so the consumer sees the
    /// end of the stream. Waits for the supervisor thread.
    pub fn stop(&mut self) {
        self.stop.set();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.slot.close();
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why one run of a pipeline ended.
enum RunEnd {
    Stopped,
    /// Worth retrying: network errors, EOS of a live stream, stalls.
    Retry(String),
    /// Retrying cannot help.
    Fatal(String),
    /// A file ended and is not to be looped.
    Ended,
}

fn supervise(
    name: &Arc<str>,
    source: &Source,
    options: &CameraOptions,
    stats: &Arc<CameraStats>,
    slot: &Arc<FrameSlot>,
    stop: &Arc<StopSignal>,
) {
    let mut backoff = options.backoff_initial;
    let mut seq = 0u64;
    while !stop.is_set() {
        stats.set_state(CameraState::Starting);
        let started = Instant::now();
        // Every error is scrubbed here, once, before it reaches a log line
        // or health: GStreamer's messages can quote the URI or a property.
        let end = match run_pipeline(name, source, options, stats, slot, stop, &mut seq) {
            RunEnd::Fatal(e) => RunEnd::Fatal(source.scrub(&e)),
            RunEnd::Retry(e) => RunEnd::Retry(source.scrub(&e)),
            other => other,
        };
        match end {
            RunEnd::Stopped => break,
            RunEnd::Ended => {
                tracing::info!("file ended (loop = false)");
                stats.set_state(CameraState::Ended);
                // No frame will come: the consumer drains the slot and sees
                // the end (its open tracks end, every start gets its end).
                slot.close();
                while !stop.sleep(Duration::from_secs(3600)) {}
                break;
            }
            RunEnd::Fatal(error) => {
                tracing::error!(%error, "camera failed; fix its configuration");
                stats.set_error(CameraState::Failed, error);
                // Park until shutdown: a bad pipeline description will not fix itself.
                while !stop.sleep(Duration::from_secs(3600)) {}
                break;
            }
            RunEnd::Retry(error) => {
                // A run that streamed for a while was a success: start the
                // back-off over, so a camera that blips once a day reconnects fast.
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = options.backoff_initial;
                }
                let wait = jitter(backoff);
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "camera lost; reconnecting");
                if stats.state() != CameraState::Stalled {
                    stats.set_error(CameraState::Reconnecting, error);
                } else {
                    stats.status.lock().1 = Some(error);
                }
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                if stop.sleep(wait) {
                    break;
                }
                stats.set_state(CameraState::Reconnecting);
                backoff = (backoff * 2).min(options.backoff_max);
            }
        }
    }
    stats.set_state(CameraState::Stopped);
}

/// "Equal jitter": a wait between half and all of the back-off, so that many
/// cameras behind one failed switch do not reconnect in lockstep, while the
/// longest wait stays the configured maximum (which bounds how soon a camera
/// that comes back is streaming again).
fn jitter(d: Duration) -> Duration {
    let nanos =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    // Scramble the clock's low bits (xorshift) so close calls differ.
    let mut x = nanos ^ 0x9e37_79b9;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    let factor = 0.5 + 0.5 * f64::from(x % 1000) / 1000.0;
    d.mul_f64(factor)
}

fn run_pipeline(
    name: &Arc<str>,
    source: &Source,
    options: &CameraOptions,
    stats: &Arc<CameraStats>,
    slot: &Arc<FrameSlot>,
    stop: &Arc<StopSignal>,
    seq: &mut u64,
) -> RunEnd {
    if let Err(e) = source.check_exists() {
        return RunEnd::Retry(e.to_string());
    }
    let launch = launch_string(source, options);
    let pipeline = match gst::parse::launch(&launch) {
        Ok(p) => p,
        Err(e) => {
            let why = format!("the pipeline could not be built: {}", unbuildable(&e));
            return RunEnd::Fatal(source.scrub(&why));
        }
    };
    let Some(pipeline) = pipeline.downcast_ref::<gst::Pipeline>().cloned() else {
        return RunEnd::Fatal("the launch string did not produce a pipeline".into());
    };
    let Some(sink) = pipeline.by_name("vigil_sink").and_then(|e| e.downcast::<gst_app::AppSink>().ok())
    else {
        return RunEnd::Fatal("internal: appsink missing from the pipeline".into());
    };
    prepare(&pipeline, source, options);

    let next_seq = Arc::new(AtomicU64::new(*seq));
    {
        let (name, stats, slot, next_seq) = (name.clone(), stats.clone(), slot.clone(), next_seq.clone());
        let crop = options.crop;
        // A recording played as fast as it decodes: every frame is analysed.
        let lossless = source.is_file() && !options.realtime;
        let sink_stop = stop.clone();
        let media_clock: Mutex<Option<(SystemTime, Duration)>> = Mutex::new(None);
        // Caps rarely change; remember the parsed video info for the last caps seen.
        let info_cache: Mutex<Option<(gst::Caps, gst_video::VideoInfo)>> = Mutex::new(None);
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let caps = sample.caps().ok_or(gst::FlowError::NotNegotiated)?;
                    let info = {
                        let mut cache = info_cache.lock();
                        match cache.as_ref() {
                            Some((c, info)) if c.as_ref() == caps => info.clone(),
                            _ => {
                                let info = gst_video::VideoInfo::from_caps(caps)
                                    .map_err(|_| gst::FlowError::NotNegotiated)?;
                                *cache = Some((caps.to_owned(), info.clone()));
                                info
                            }
                        }
                    };
                    let buffer = sample.buffer_owned().ok_or(gst::FlowError::Error)?;
                    let pts = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
                    // Live sources stamp buffers in running time: now minus the
                    // stamp is how long decoding and conversion took.
                    let source_latency = match (buffer.pts(), sink.current_running_time()) {
                        (Some(pts), Some(now)) if now >= pts => {
                            Some(Duration::from_nanos((now - pts).nseconds()))
                        }
                        _ => None,
                    };
                    let mapped = buffer.into_mapped_buffer_readable().map_err(|_| gst::FlowError::Error)?;
                    let now = Instant::now();
                    // A recording analysed faster than real time keeps its own
                    // clock: the wall time of its first frame plus the media
                    // time since. Tracks, dwell times, motion-gating intervals
                    // and event times then mean what they would have meant
                    // live, however fast the frames come.
                    let captured_at = match (lossless, pts) {
                        (true, Some(pts)) => {
                            let (wall0, pts0) = *media_clock.lock().get_or_insert((SystemTime::now(), pts));
                            wall0 + pts.saturating_sub(pts0)
                        }
                        _ => SystemTime::now(),
                    };
                    let Some(frame) = Frame::from_gst(
                        name.clone(),
                        next_seq.fetch_add(1, Ordering::Relaxed),
                        captured_at,
                        now,
                        pts,
                        source_latency,
                        &info,
                        mapped,
                    ) else {
                        // The caps ask for I420 or RGB; anything else is a bug.
                        return Err(gst::FlowError::NotNegotiated);
                    };
                    // The region of interest is a view into the same buffer.
                    let frame = match crop {
                        Some([x, y, w, h]) => {
                            let (fw, fh) = (info.width() as f32, info.height() as f32);
                            let px = |v: f32, size: f32| (v * size).round().max(0.0) as u32;
                            frame.crop(px(x, fw), px(y, fh), px(w, fw), px(h, fh))
                        }
                        None => frame,
                    };
                    stats.frames.record_at(now);
                    *stats.frame_size.lock() = Some((frame.width(), frame.height()));
                    if lossless {
                        // Backpressure: the decoder waits for the model.
                        slot.put_wait(frame, || sink_stop.is_set());
                    } else {
                        slot.put(frame);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }

    let end = watch(&pipeline, source, options, stats, stop, &next_seq);
    let _ = pipeline.set_state(gst::State::Null);
    *seq = next_seq.load(Ordering::Relaxed);
    end
}

fn watch(
    pipeline: &gst::Pipeline,
    source: &Source,
    options: &CameraOptions,
    stats: &CameraStats,
    stop: &StopSignal,
    next_seq: &AtomicU64,
) -> RunEnd {
    let Some(bus) = pipeline.bus() else {
        return RunEnd::Fatal("internal: pipeline without a bus".into());
    };
    // Plug-ins GStreamer looked for and did not find, as it said so: kept
    // for the error that follows when the video itself needed one.
    let mut missing: Vec<MissingPlugin> = Vec::new();
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        // The details are on the bus; pick them up below.
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Element]) {
            note_missing(&mut missing, &msg);
            if let gst::MessageView::Error(err) = msg.view() {
                return ended_by(err, &missing, source);
            }
        }
        return RunEnd::Retry(format!("the pipeline would not start: {e}"));
    }
    let started = Instant::now();
    let first_seq = next_seq.load(Ordering::Relaxed);
    // Frames videorate drops for the fps limit: buffers into it minus buffers
    // out of it, counted by pad probes (its own `drop` property does not count
    // drops made for `max-rate`). A running total across rebuilds.
    let rate_counts = pipeline.by_name("vigil_rate").map(|rate| {
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        for (i, pad) in ["sink", "src"].iter().enumerate() {
            if let Some(pad) = rate.static_pad(pad) {
                let counts = counts.clone();
                pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    gst::PadProbeReturn::Ok
                });
            }
        }
        counts
    });
    let dropped_before = stats.frames_dropped_rate.load(Ordering::Relaxed);
    loop {
        if stop.is_set() {
            return RunEnd::Stopped;
        }
        if let Some(c) = &rate_counts {
            let (inn, out) = (c[0].load(Ordering::Relaxed), c[1].load(Ordering::Relaxed));
            stats.frames_dropped_rate.store(dropped_before + inn.saturating_sub(out), Ordering::Relaxed);
        }
        if let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Error, gst::MessageType::Eos, gst::MessageType::Element],
        ) {
            note_missing(&mut missing, &msg);
            match msg.view() {
                gst::MessageView::Error(err) => return ended_by(err, &missing, source),
                gst::MessageView::Eos(_) if source.is_file() && options.loop_file => {
                    // Start over in place: no teardown, no reconnect counted.
                    if pipeline
                        .seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT, gst::ClockTime::ZERO)
                        .is_err()
                    {
                        return RunEnd::Retry("end of file, and seeking back to the start failed".into());
                    }
                    tracing::debug!("end of file; playing it again");
                }
                gst::MessageView::Eos(_) if source.is_file() => return RunEnd::Ended,
                gst::MessageView::Eos(_) => return RunEnd::Retry("the stream ended".into()),
                _ => {}
            }
        }
        let got_frame = next_seq.load(Ordering::Relaxed) > first_seq;
        if !got_frame {
            if started.elapsed() > options.start_timeout {
                return RunEnd::Retry(format!(
                    "no frame within {:.0} s of starting",
                    options.start_timeout.as_secs_f64()
                ));
            }
            continue;
        }
        if stats.state() == CameraState::Starting {
            stats.set_state(CameraState::Streaming);
            tracing::info!("camera streaming");
        }
        let age = stats.frames.age().unwrap_or_default();
        if age > options.stall_timeout {
            let error = format!("no frame for {:.1} s (stall timeout)", age.as_secs_f64());
            stats.set_error(CameraState::Stalled, error.clone());
            return RunEnd::Retry(error);
        }
    }
}

/// Keeps a `missing-plugin` message's content; a handful is all a message
/// can use, and a stream that plays on beside one (an audio track nothing
/// decodes) must not grow the list for as long as it runs.
fn note_missing(missing: &mut Vec<MissingPlugin>, msg: &gst::Message) {
    if missing.len() < 8
        && let Some(m) = MissingPlugin::from_message(msg)
    {
        missing.push(m);
    }
}

/// What an error on the bus means for the camera. One that says a plug-in is
/// missing is final: GStreamer reads its plug-in registry once, when the
/// process starts, so a decoder installed later is only seen after a
/// restart, and until then every reconnect fails the same way (the endless
/// loop this replaced). A camera switched to another codec by its owner is
/// picked up by restarting or reloading Vigil, which the message asks for.
fn ended_by(err: &gst::message::Error, missing: &[MissingPlugin], source: &Source) -> RunEnd {
    let error = err.error();
    if error.matches(gst::CoreError::MissingPlugin) || error.matches(gst::StreamError::CodecNotFound) {
        let debug = err.debug();
        return RunEnd::Fatal(source.scrub(&codecs::explain_missing(missing, debug.as_deref())));
    }
    RunEnd::Retry(describe_error(err, source))
}

fn describe_error(err: &gst::message::Error, source: &Source) -> String {
    let mut text = err.error().to_string();
    if let Some(debug) = err.debug() {
        // The first line of the debug string names the failing element and the cause.
        if let Some(first) = debug.lines().next() {
            text = format!("{text} ({})", first.trim());
        }
    }
    source.scrub(&text)
}

#[cfg(test)]
mod tests;
