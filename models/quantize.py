#!/usr/bin/env python3
"""Quantizes a float ONNX model to INT8 (QDQ) on frames from the camera it
will serve, and says how much faster it runs and how far it agrees.

Usage:
    .deps/venv/bin/python models/quantize.py MODEL.onnx CALIB_DIR OUT.onnx \
        [--method auto|minmax|entropy|percentile] [--keep-float final|head|none] \
        [--holdout 0.25] [--reduce-range auto|yes|no] [--threads 1] [--speed-rounds 20] \
        [--report REPORT.json]

CALIB_DIR is a calibration set (models/calibration_set.py, docs/models.md):
frames from the camera plus manifest.json. Every 1/holdout-th frame in
capture order is held out; the rest calibrate. Frames are preprocessed
exactly as Vigil does, by the parity tests' reference implementation
(tests/reference/reference.py: letterbox, pad 114, RGB, /255, NCHW), so the
ranges are those of the tensors the model is fed in service.

The recipe (ONNX Runtime's quantization tools, `onnxruntime.quantization`):
  1. `quant_pre_process` (shape inference and ORT's basic graph optimisation;
     `skip_symbolic_shape=True`, the models Vigil runs have static shapes and
     this avoids a dependency on sympy);
  2. the nodes that hurt accuracy kept in float (`--keep-float`):
       final  (default) every node from the model's outputs back to, and
              including, its last learned layers: for YOLOv8/v11/v12 heads the
              final box and class convs of each level, the DFL (its fixed conv
              over a softmax is walked through), the anchor and stride
              arithmetic and the class-score sigmoid; for end-to-end heads
              (YOLOv10, YOLO26) also the top-k selection; for classifiers the
              last Gemm and its softmax. Found from the graph's structure, so
              it needs no names.
       head   every node of the last module (`/model.N/` in Ultralytics'
              node names) on top of `final`; falls back to `final` without
              such names.
       none   everything quantized (the naive recipe).
  3. `quantize_static`: QDQ, activations uint8, weights int8 per channel;
     `reduce_range` (7-bit weights) on CPUs without VNNI, where ONNX
     Runtime's AVX2 u8s8 kernels can saturate (`--reduce-range auto`);
  4. the calibration method chosen by measurement (`--method auto`): MinMax,
     Entropy and Percentile each make a candidate, each candidate is run
     against the float model on the held-out frames, and the best agreement
     wins (detections: F1, then the smaller score drift; classifiers: top-1
     agreement, then drift);
  5. speed: the float and the chosen INT8 model run interleaved in this one
     process (float, int8, int8, float, ...), so that whatever else loads
     the machine weighs on both alike; frames/s are 1 / median run time.

Agreement on the held-out frames: detections matched by class at IoU >= 0.5
(each float detection, best score first, takes the unmatched INT8 detection
of its class it overlaps most); precision = matched / INT8 detections,
recall = matched / float detections, F1, and the mean and max |score change|
of matched pairs. For YOLOv8-layout outputs also the largest change of any
raw class score, and for end-to-end heads of the k-th best score against
the k-th best. Classifiers: top-1 agreement and its score drift. `--conf`
lowers the threshold the agreement is counted at, to compare more
detections where the held-out frames hold few.

The written model keeps the float model's metadata (so Vigil recognises it
the same way) and adds `vigil_quantization`, a JSON summary of the above.
Exit codes: 0 written, 2 bad input (the message names it).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
import calibration_set  # noqa: E402
import reference  # noqa: E402

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
# Layers with learned weights: where the backward walk from the outputs stops.
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MATCH_IOU = 0.5


class Bad(Exception):
    """Input the tool cannot use; the message names it and the fix."""


# --------------------------------------------------------------------------
# Which nodes stay in float

def keep_float_nodes(model, scope):
    """Names of the nodes to leave unquantized, and a short description."""
    if scope == "none":
        return [], "nothing (everything quantized)"
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    kept, seen, stack = [], set(), [o.name for o in g.output]
    while stack:
        n = producer.get(stack.pop())
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        kept.append(n)
        learned = n.op_type in WEIGHTED and any(i in constants for i in n.input[1:2])
        dfl = learned and n.input[0] in producer and producer[n.input[0]].op_type == "Softmax"
        if learned and not dfl:
            continue   # a last learned layer: keep it, not what feeds it
        stack.extend(i for i in n.input if i and i not in constants)
    last_layers = sum(1 for n in kept if n.op_type in WEIGHTED)
    names = {n.name for n in kept}
    what = f"the outputs back to the last learned layers ({last_layers} {'/'.join(sorted({n.op_type for n in kept if n.op_type in WEIGHTED}))})"
    if scope == "head":
        modules = {n.name.split("/")[1] for n in kept if n.name.startswith("/model.") and n.name.count("/") >= 2}
        if len(modules) == 1:
            prefix = "/" + modules.pop() + "/"
            names |= {n.name for n in g.node if n.name.startswith(prefix)}
            what = f"the whole last module ({prefix}, {len(names)} nodes)"
        else:
            what += " (no single `/model.N/` module on them: kept `final`)"
    return sorted(names), what


def name_nodes(model):
    """quantize_static excludes nodes by name: give every node one."""
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"vigil_node_{i}_{n.op_type}"


# --------------------------------------------------------------------------
# Calibration data

class Frames(CalibrationDataReader):
    """Preprocessed frames for the calibrator, in ranges (`set_range`) so that
    histogram calibrators hold a few frames' activations at a time."""

    def __init__(self, input_name, tensors):
        self.input_name, self.tensors = input_name, tensors
        self.set_range(0, len(tensors))

    def __len__(self):
        return len(self.tensors)

    def set_range(self, start_index, end_index):
        self.it = iter(self.tensors[start_index:end_index])

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {self.input_name: x}


def chunk(n, most=4):
    """The largest divisor of n up to `most` (ORT wants the stride to divide n)."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def cpu_has_vnni():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


# --------------------------------------------------------------------------
# Agreement

def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(ref_dets, cand_dets):
    """Pairs (ref, cand) of the same class at IoU >= MATCH_IOU, greedily."""
    used, pairs = set(), []
    for r in sorted(ref_dets, key=lambda d: -d["score"]):
        best = None
        for j, c in enumerate(cand_dets):
            if j in used or c["class_id"] != r["class_id"]:
                continue
            o = iou(r["box"], c["box"])
            if o >= MATCH_IOU and (best is None or o > best[1]):
                best = (j, o)
        if best is not None:
            used.add(best[0])
            pairs.append((r, cand_dets[best[0]]))
    return pairs


def raw_score_drift(fm, q, x):
    """The largest change of a raw score: every class score of every anchor
    for YOLOv8 layouts; for end-to-end heads, whose rows are sorted by score,
    the k-th best score against the k-th best."""
    ra = fm.session.run(None, {fm.input_name: x})[0][0]
    rb = q.session.run(None, {q.input_name: x})[0][0]
    if fm.decoder == "yolov8":
        return float(np.max(np.abs(ra[4:] - rb[4:])))
    if fm.decoder == "end2end":
        return float(np.max(np.abs(np.sort(ra[:, 4]) - np.sort(rb[:, 4]))))
    return None


def agreement(float_model, int8_path, frames, conf=None):
    """Float vs INT8 on `frames` (see the module doc)."""
    q = reference.Model(int8_path, float_model.decoder)
    n_ref = n_cand = matched = 0
    drifts, top1_same, raw = [], 0, []
    for fr in frames:
        a = float_model.run(fr["path"], conf)
        b = q.run(fr["path"], conf)
        if float_model.decoder == "classify":
            fa, fb = a["classes"][0], b["classes"][0]
            if fa["class_id"] == fb["class_id"]:
                top1_same += 1
                drifts.append(abs(fa["score"] - fb["score"]))
            continue
        pairs = match(a["detections"], b["detections"])
        n_ref += len(a["detections"])
        n_cand += len(b["detections"])
        matched += len(pairs)
        drifts += [abs(r["score"] - c["score"]) for r, c in pairs]
        d = raw_score_drift(float_model, q, float_model.preprocess(calibration_set.load_rgb(fr)))
        if d is not None:
            raw.append(d)
    out = {"frames": len(frames), "score_drift_mean": statistics.fmean(drifts) if drifts else 0.0,
           "score_drift_max": max(drifts, default=0.0)}
    if float_model.decoder == "classify":
        out["top1_agreement"] = top1_same / len(frames)
        out["key"] = (out["top1_agreement"], -out["score_drift_mean"])
        return out
    out.update(float_detections=n_ref, int8_detections=n_cand, matched=matched)
    if n_ref + n_cand:
        precision = matched / n_cand if n_cand else 1.0
        recall = matched / n_ref if n_ref else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.update(precision=precision, recall=recall, f1=f1)
    if raw:
        out["raw_score_drift_max"] = max(raw)
    # Without detections F1 says nothing; the raw scores still do.
    out["key"] = (out.get("f1", 0.0), -out["score_drift_mean"], -out.get("raw_score_drift_max", 0.0))
    return out


def describe(a):
    if "top1_agreement" in a:
        return (f"top-1 agreement {a['top1_agreement']:.3f} on {a['frames']} frames, "
                f"score drift mean {a['score_drift_mean']:.4f} max {a['score_drift_max']:.4f}")
    if "f1" in a:
        s = (f"F1 {a['f1']:.3f} (precision {a['precision']:.3f}, recall {a['recall']:.3f}; "
             f"{a['matched']} of {a['float_detections']} float / {a['int8_detections']} int8 detections), "
             f"score drift mean {a['score_drift_mean']:.4f} max {a['score_drift_max']:.4f}")
    else:
        s = f"no detections from either model on the {a['frames']} held-out frames: F1 undefined"
    if "raw_score_drift_max" in a:
        s += f"; raw scores moved up to {a['raw_score_drift_max']:.3f}"
    return s


# --------------------------------------------------------------------------
# Speed

def speed(float_path, int8_path, x, input_name, threads, rounds):
    """Interleaved runs of both models on the same tensor in this process."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for p in (float_path, int8_path)]
    feed = {input_name: x}
    for _ in range(3):
        for s in sessions:
            s.run(None, feed)
    times = ([], [])
    for r in range(rounds):
        # Who goes first alternates, so neither always runs on a warmer cache.
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            sessions[k].run(None, feed)
            times[k].append(time.perf_counter() - t)
    ratios = sorted(f / q for f, q in zip(*times))
    mf, mq = statistics.median(times[0]), statistics.median(times[1])
    return {"threads": threads, "rounds": rounds, "float_ms": mf * 1e3, "int8_ms": mq * 1e3,
            "float_fps": 1 / mf, "int8_fps": 1 / mq, "ratio": mf / mq,
            "pair_ratio_median": statistics.median(ratios),
            "pair_ratio_p10": ratios[len(ratios) // 10], "pair_ratio_p90": ratios[(len(ratios) * 9) // 10]}


# --------------------------------------------------------------------------

def split(frames, holdout):
    """Every k-th frame in capture order held out, so both parts span the
    whole collection window (morning and night, empty and busy)."""
    if not 0 < holdout < 1:
        raise Bad(f"--holdout {holdout}: must be between 0 and 1 (the share of frames kept for checking)")
    if len(frames) < 2:
        raise Bad(f"the calibration set has {len(frames)} frame; at least 2 are needed (one to "
                  f"calibrate, one to check), 32 or more recommended")
    k = max(2, round(1 / holdout))
    held = [f for i, f in enumerate(frames) if i % k == k - 1] or [frames[-1]]
    calib = [f for f in frames if f not in held]
    return calib, held


def quantize(pre_path, out_path, frames_reader, method, exclude, reduce_range, cache):
    frames_reader.set_range(0, len(frames_reader))
    quantize_static(
        pre_path, out_path, frames_reader, quant_format=QuantFormat.QDQ, per_channel=True,
        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=METHODS[method], nodes_to_exclude=exclude,
        extra_options={"CalibStridedMinMax": chunk(len(frames_reader))}, calibration_cache_path=cache)


def finish(src, dst, float_model_proto, summary):
    """Copies the chosen candidate to `dst` with the float model's metadata."""
    m = onnx.load(src)
    have = {p.key for p in m.metadata_props}
    for p in float_model_proto.metadata_props:
        if p.key not in have:
            m.metadata_props.append(onnx.StringStringEntryProto(key=p.key, value=p.value))
    del_keys = [i for i, p in enumerate(m.metadata_props) if p.key == "vigil_quantization"]
    for i in reversed(del_keys):
        del m.metadata_props[i]
    m.metadata_props.append(onnx.StringStringEntryProto(key="vigil_quantization",
                                                        value=json.dumps(summary, sort_keys=True)))
    tmp = dst + ".tmp"
    onnx.save(m, tmp)
    os.replace(tmp, dst)


def run(args):
    if not os.path.isfile(args.model):
        raise Bad(f"{args.model}: no such model file")
    try:
        fm = reference.Model(args.model)
    except reference.Refused as e:
        raise Bad(f"{args.model}: Vigil would refuse this model ({e}); fix that first") from None
    if fm.dtype != "float32":
        raise Bad(f"{args.model}: input is {fm.dtype}; the quantizer takes float32 models")
    cset = calibration_set.read_set(args.calib)
    calib, held = split(cset["frames"], args.holdout)
    print(f"calibration set: {calibration_set.summary(cset)}")
    print(f"model: {args.model} (decoder {fm.decoder}); {len(calib)} frames calibrate, {len(held)} held out")
    if len(calib) < 16:
        print(f"warning: only {len(calib)} calibration frames; 32 or more from the camera give steadier ranges")
    tensors = [fm.preprocess(calibration_set.load_rgb(f)) for f in calib]
    vnni = cpu_has_vnni()
    reduce_range = {"yes": True, "no": False, "auto": not vnni}[args.reduce_range]
    methods = list(METHODS) if args.method == "auto" else [args.method]
    float_proto = onnx.load(args.model)

    with tempfile.TemporaryDirectory(prefix="vigil-quantize-") as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(args.model, pre, skip_symbolic_shape=True)
        pm = onnx.load(pre)
        name_nodes(pm)
        onnx.save(pm, pre)
        exclude, what = keep_float_nodes(pm, args.keep_float)
        print(f"kept in float ({args.keep_float}): {len(exclude)} nodes, {what}")
        print(f"weights int8 per channel{' (reduce_range: 7-bit)' if reduce_range else ''}, "
              f"activations uint8; this CPU {'has' if vnni else 'lacks'} VNNI")
        reader = Frames(fm.input_name, tensors)
        results = {}
        for method in methods:
            out = os.path.join(tmp, f"int8-{method}.onnx")
            t = time.perf_counter()
            quantize(pre, out, reader, method, exclude, reduce_range, os.path.join(tmp, f"{method}.ranges.json"))
            made = time.perf_counter() - t
            a = agreement(fm, out, held, args.conf)
            results[method] = (out, a)
            print(f"  {method:<10} {describe(a)}  [{made:.0f} s]")
        best = max(methods, key=lambda m: results[m][1]["key"])
        if len(methods) > 1:
            print(f"chosen: {best} (best agreement on the held-out frames)")
        chosen_path, chosen = results[best]
        if "float_detections" in chosen and chosen["float_detections"] < 20:
            print(f"warning: the agreement rests on {chosen['float_detections']} float detections; frames "
                  f"with the objects the model looks for (reason `detections`) make it a firmer answer")
        x = fm.preprocess(calibration_set.load_rgb(held[0]))
        sp = speed(args.model, chosen_path, x, fm.input_name, args.threads, args.speed_rounds)
        print(f"speed ({sp['threads']} thread(s), {sp['rounds']} interleaved rounds): float "
              f"{sp['float_fps']:.2f} frames/s ({sp['float_ms']:.1f} ms), int8 {sp['int8_fps']:.2f} "
              f"frames/s ({sp['int8_ms']:.1f} ms): {sp['ratio']:.2f}x (per pair: median "
              f"{sp['pair_ratio_median']:.2f}x, p10 {sp['pair_ratio_p10']:.2f}x, p90 {sp['pair_ratio_p90']:.2f}x)")
        summary = {"format": "QDQ", "activations": "uint8", "weights": "int8 per-channel",
                   "reduce_range": reduce_range, "method": best, "keep_float": args.keep_float,
                   "float_nodes": len(exclude), "camera": cset["camera"], "calibration_frames": len(calib),
                   "held_out_frames": len(held), "tool": "models/quantize.py",
                   "agreement": {k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in chosen.items() if k != "key"}}
        finish(chosen_path, args.out, float_proto, summary)
    report = {"model": args.model, "out": args.out, "decoder": fm.decoder, "keep_float": args.keep_float,
              "float_nodes": exclude, "reduce_range": reduce_range, "vnni": vnni, "chosen": best,
              "candidates": {m: {k: v for k, v in a.items() if k != "key"} for m, (_, a) in results.items()},
              "speed": sp}
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="the float ONNX model")
    ap.add_argument("calib", help="a calibration set folder (manifest.json + frames)")
    ap.add_argument("out", help="where to write the INT8 model")
    ap.add_argument("--method", choices=["auto", *METHODS], default="auto")
    ap.add_argument("--keep-float", choices=["final", "head", "none"], default="final")
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--reduce-range", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--conf", type=float, help="confidence threshold for the agreement (default: the "
                    "model's, as Vigil would use it); lower it to compare more detections")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for the speed measurement")
    ap.add_argument("--speed-rounds", type=int, default=20)
    ap.add_argument("--report", help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    try:
        run(args)
    except (Bad, calibration_set.BadSet) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
