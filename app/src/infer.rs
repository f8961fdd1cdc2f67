//! `vigil infer`: run a model over images, a directory, a video or a camera,
//! printing JSON and/or writing annotated pictures. The same decoding as the
//! appliance, so it is also how parity with reference implementations is tested.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use vigil_camera::{FrameReader, Source};
use vigil_inference::{Detector, ImageView, ModelOptions, Prediction, Provider, Scratch};
use vigil_pipeline::annotate;
use vigil_pipeline::event::Class;

#[derive(Debug, clap::Args)]
pub(crate) struct InferArgs {
    /// The ONNX model.
    #[arg(long, short)]
    pub model: PathBuf,
    /// An image, a directory of images, a video file, or a camera source
    /// (rtsp://..., v4l2:///dev/video0, test://ball, launch:...).
    pub input: String,
    /// Write annotated JPEGs here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object per image (or video frame) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Confidence threshold (overrides manifest and family default).
    #[arg(long)]
    pub conf: Option<f32>,
    /// NMS IoU threshold (overrides manifest and family default).
    #[arg(long)]
    pub iou: Option<f32>,
    /// Force a decoder (yolov8, yolov5, end2end, ssd, classify, anomalib, customvision, customvision-s1).
    #[arg(long)]
    pub decoder: Option<String>,
    /// Stop after this many frames of a video or camera.
    #[arg(long)]
    pub frames: Option<u64>,
    /// ONNX Runtime threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Execution provider: cpu, cuda, tensorrt, openvino.
    #[arg(long, default_value = "cpu")]
    pub provider: String,
}

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp"];

#[derive(Serialize)]
struct DetJson<'a> {
    label: &'a str,
    class_id: u32,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

#[derive(Serialize)]
struct ImageJson<'a> {
    image: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    frame: Option<u64>,
    width: u32,
    height: u32,
    decoder: &'static str,
    detections: Vec<DetJson<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    classes: Vec<Class<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anomaly_score: Option<f32>,
}

pub(crate) fn provider(name: &str) -> anyhow::Result<Provider> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .with_context(|| format!("unknown provider {name:?}; use cpu, cuda, tensorrt or openvino"))
}

pub(crate) fn run(args: &InferArgs) -> anyhow::Result<()> {
    let mut options = ModelOptions {
        intra_threads: args.threads,
        // One frame per run, as the appliance runs on the CPU.
        max_batch: 1,
        provider: provider(&args.provider)?,
        ..ModelOptions::default()
    };
    options.overrides.confidence = args.conf;
    options.overrides.iou = args.iou;
    if let Some(d) = &args.decoder {
        options.overrides.decoder =
            Some(vigil_inference::DecoderKind::parse(d).with_context(|| format!("unknown decoder {d:?}"))?);
    }
    let name = args.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let detector = Detector::load(&name, &args.model, options)?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    }
    let mut scratch = Scratch::default();
    let stdout = std::io::stdout();
    let mut emit =
        |label: &str, frame: Option<u64>, view: &ImageView<'_>, pred: &Prediction| -> anyhow::Result<()> {
            if args.json {
                let line = to_json(label, frame, view, pred, detector.info().decoder().as_str());
                let mut out = stdout.lock();
                writeln!(out, "{line}")?;
            }
            if let Some(dir) = &args.out {
                let rgb = annotate::draw(view.data, view.width, view.height, view.stride, pred);
                let jpeg =
                    annotate::encode_jpeg(&rgb, view.width, view.height, 90).map_err(anyhow::Error::msg)?;
                let stem = Path::new(label)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let file = match frame {
                    Some(n) => dir.join(format!("{stem}_{n:06}.jpg")),
                    None => dir.join(format!("{stem}.jpg")),
                };
                std::fs::write(&file, jpeg).with_context(|| format!("cannot write {}", file.display()))?;
            }
            if !args.json && args.out.is_none() {
                eprintln!(
                    "{label}{}: {}",
                    frame.map(|f| format!(" frame {f}")).unwrap_or_default(),
                    summary(pred)
                );
            }
            Ok(())
        };

    let input = args.input.as_str();
    let path = Path::new(input);
    let is_uri = input.contains("://") || input.starts_with("launch:") || input.starts_with("file:");
    if !is_uri && path.is_dir() {
        let mut images: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {input}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        images.sort();
        if images.is_empty() {
            bail!("{input} holds no images ({})", IMAGE_EXTENSIONS.join(", "));
        }
        let bar = progress(images.len() as u64);
        for p in &images {
            infer_image(&detector, p, &mut scratch, &mut emit)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        return Ok(());
    }
    if !is_uri && is_image(path) {
        return infer_image(&detector, path, &mut scratch, &mut emit);
    }
    if !is_uri && !path.exists() {
        bail!("{input}: no such file or directory");
    }
    let source = if is_uri {
        Source::parse(input, &std::env::current_dir()?)?
    } else {
        Source::File { path: std::fs::canonicalize(path)? }
    };
    let mut reader = FrameReader::open("infer", &source)?;
    let bar = progress(args.frames.or(reader.estimated_frames()).unwrap_or(0));
    let mut n = 0u64;
    while args.frames.is_none_or(|max| n < max) {
        let Some(frame) = reader.next_frame(Duration::from_secs(20))? else {
            break;
        };
        let view = ImageView::new(frame.data(), frame.width(), frame.height(), frame.stride())
            .context("frame buffer smaller than its size")?;
        let (pred, _) = detector.detect(&view, &mut scratch)?;
        emit(input, Some(frame.seq()), &view, &pred)?;
        bar.inc(1);
        n += 1;
    }
    bar.finish_and_clear();
    Ok(())
}

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn progress(len: u64) -> indicatif::ProgressBar {
    // Drawn on stderr only when it is a terminal: JSON on stdout stays clean.
    let bar = if len > 0 { indicatif::ProgressBar::new(len) } else { indicatif::ProgressBar::new_spinner() };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} [{elapsed_precise} < {eta}] {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn infer_image(
    detector: &Detector,
    path: &Path,
    scratch: &mut Scratch,
    emit: &mut impl FnMut(&str, Option<u64>, &ImageView<'_>, &Prediction) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let img = image::open(path).with_context(|| format!("cannot read image {}", path.display()))?.into_rgb8();
    let (w, h) = img.dimensions();
    let view = ImageView::new(img.as_raw(), w, h, w as usize * 3).context("empty image")?;
    let (pred, _) = detector.detect(&view, scratch)?;
    emit(&path.display().to_string(), None, &view, &pred)
}

fn to_json(
    image: &str,
    frame: Option<u64>,
    view: &ImageView<'_>,
    pred: &Prediction,
    decoder: &'static str,
) -> String {
    let j = ImageJson {
        image,
        frame,
        width: view.width,
        height: view.height,
        decoder,
        detections: pred
            .detections
            .iter()
            .map(|d| DetJson {
                label: &d.label,
                class_id: d.class_id,
                score: d.score,
                bbox: [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2],
            })
            .collect(),
        classes: pred
            .classes
            .iter()
            .map(|c| Class { label: &c.label, class_id: c.class_id, score: c.score })
            .collect(),
        verdict: pred.anomaly.map(|a| if a.is_anomalous { "NG" } else { "OK" }),
        anomaly_score: pred.anomaly.map(|a| a.score),
    };
    serde_json::to_string(&j).unwrap_or_default()
}

fn summary(pred: &Prediction) -> String {
    let mut parts: Vec<String> =
        pred.detections.iter().take(8).map(|d| format!("{} {:.2}", d.label, d.score)).collect();
    if pred.detections.len() > 8 {
        parts.push(format!("… {} in all", pred.detections.len()));
    }
    if let Some(c) = pred.classes.first() {
        parts.insert(0, format!("class {} {:.3}", c.label, c.score));
    }
    if let Some(a) = pred.anomaly {
        parts.insert(0, format!("{} (score {:.3})", if a.is_anomalous { "NG" } else { "OK" }, a.score));
    }
    if parts.is_empty() { "nothing found".into() } else { parts.join(", ") }
}
