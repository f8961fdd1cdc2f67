//! `vigil models inspect`: what a model file says about itself and how Vigil
//! would run it, or why it cannot decide.

use std::path::PathBuf;

use anyhow::Context;
use sha2::{Digest, Sha256};
use vigil_inference::{DecoderKind, Overrides, manifest_path, plan, quantization, read_facts};

#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Print the facts and the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Exit code 0 when a decoder fits, 2 when none does.
pub(crate) fn run(args: &InspectArgs) -> anyhow::Result<bool> {
    let (bytes, _session, facts) = read_facts(&args.model)?;
    let sha = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let plan = plan(&facts, &Overrides::default());
    // ONNX Runtime has loaded the file, so its graph reads; if the walker
    // still fails, say so on that line rather than refusing the model.
    let quant = quantization(&bytes).map_err(|e| e.to_string());
    if args.json {
        let j = serde_json::json!({
            "model": args.model,
            "sha256": sha,
            "size_bytes": bytes.len(),
            "inputs": facts.inputs,
            "outputs": facts.outputs,
            "metadata": facts.metadata,
            "quantization": quant.as_ref().ok(),
            "manifest": facts.manifest.as_ref().map(|(p, _)| p),
            "plan": plan.as_ref().ok(),
            "error": plan.as_ref().err(),
        });
        println!("{}", serde_json::to_string_pretty(&j).context("JSON")?);
        return Ok(plan.is_ok());
    }
    let row = |k: &str, v: &str| println!("{k:<11}{v}");
    row("model", &format!("{} ({:.1} KB, sha256 {sha})", args.model.display(), bytes.len() as f64 / 1024.0));
    for i in &facts.inputs {
        row("input", &i.to_string());
    }
    for o in &facts.outputs {
        row("output", &o.to_string());
    }
    match &quant {
        Ok(q) => row("quantized", &q.describe()),
        Err(e) => row("quantized", &format!("unknown: {e}")),
    }
    if facts.metadata.is_empty() {
        row("metadata", "none");
    }
    for (k, v) in &facts.metadata {
        let v = if v.chars().count() > 100 {
            format!("{}…", v.chars().take(100).collect::<String>())
        } else {
            v.clone()
        };
        row("metadata", &format!("{k} = {v}"));
    }
    match &facts.manifest {
        Some((p, _)) => row("manifest", &p.display().to_string()),
        None => row("manifest", &format!("none (would be {})", manifest_path(&args.model).display())),
    }
    match plan {
        Ok(p) => {
            row("decoder", &format!("{} ({})", p.decoder, p.decoder_reason));
            for (role, out) in &p.outputs {
                row("  reads", &format!("{role} <- {}", out.as_deref().unwrap_or("(absent, optional)")));
            }
            let i = &p.input;
            let size =
                i.size.map(|(w, h)| format!("{w}x{h}")).unwrap_or_else(|| "frame size (dynamic)".into());
            row(
                "preprocess",
                &format!(
                    "{:?} {:?} {size}, resize {:?} (pad {}), colour {:?}, scale {:?}, mean {:?}, std {:?}",
                    i.layout, i.dtype, i.resize, i.pad_value, i.color, i.scale, i.mean, i.std
                )
                .to_lowercase(),
            );
            let shown: Vec<&str> = p.labels.iter().take(12).map(String::as_str).collect();
            let more = if p.labels.len() > 12 {
                format!(", … ({} in all)", p.labels.len())
            } else {
                String::new()
            };
            row(
                "labels",
                &format!("{} from {}: {}{more}", p.labels.len(), p.labels_source, shown.join(", ")),
            );
            let t = &p.thresholds;
            row(
                "thresholds",
                &format!(
                    "confidence {}, iou {}, max {} detections{}{}",
                    t.confidence,
                    t.iou,
                    t.max_detections,
                    if t.class_agnostic { ", class-agnostic NMS" } else { "" },
                    if p.decoder == DecoderKind::Anomalib {
                        format!(", anomaly threshold {}", t.anomaly_threshold)
                    } else {
                        String::new()
                    }
                ),
            );
            Ok(true)
        }
        Err(reason) => {
            row("decoder", &format!("cannot decide: {reason}"));
            let all: Vec<&str> = DecoderKind::ALL.iter().map(|d| d.as_str()).collect();
            row(
                "fix",
                &format!(
                    "if the model is one of the supported families, say which in {} with decoder = \"...\" (one of {})",
                    manifest_path(&args.model).display(),
                    all.join(", ")
                ),
            );
            Ok(false)
        }
    }
}
