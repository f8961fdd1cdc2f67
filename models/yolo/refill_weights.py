#!/usr/bin/env python3
"""Refills a weight-stripped Ultralytics ONNX skeleton with deterministic
weights, giving a runnable model whose outputs are not degenerate on real
photos.

Usage:  refill_weights.py SKELETON.onnx OUT.onnx
Needs only onnx and numpy (the project's light venv is enough):

    .deps/venv/bin/python models/yolo/refill_weights.py \
        models/yolo/yolov8n.skeleton.onnx models/yolo/yolov8n.onnx

Which tensors: every initializer whose doc_string is `vigil:stripped` (written
by export_ultralytics.py: the Conv/Gemm weights and biases, with name, dtype
and dims but no data). Every other initializer, node and metadata_prop is
copied verbatim. The family is told from the metadata (`task`, `end2end`,
`head`): yolov8 (one-to-many head), yolov10 (v10Detect end2end), end2end
(YOLO26), classify.

Step 1, random fill. Each tensor has its own generator,
`numpy.random.default_rng(zlib.crc32(name))`, float32 normal draws:
- weight [out, in/groups, kh, kw] or [out, in]: He-normal,
  std = sqrt(2 / fan_in), fan_in = prod(dims[1:]).
- bias: normal, std BIAS_STD = 0.02 (the exported convs are BatchNorm-fused,
  so every conv has one).
- the first conv (reading `images`) is scaled by IN_SCALE = 10, and its bias
  gets -sum(w) * 114/255 per output channel. The scale puts every SiLU in its
  large-signal, ReLU-like range, where a He-initialised network keeps its
  activation scale through depth (with IN_SCALE = 1 a random SiLU network
  without BatchNorm fades out or blows up depending on the photo). The bias
  centres the input on the letterbox grey, so a pad pixel gives exactly what
  the conv's zero padding gives: without it the canvas border inside the grey
  pad is the strongest "object" in every letterboxed photo.

Step 2, head calibration, a data-dependent init standing in for the BatchNorm
statistics a trained model has. The graph up to the head convs is run with
onnx.reference (numpy) on fixed synthetic images made here from seeded
generators (`calibration_image`: colour gradient, 60 flat rectangles and
ellipses of all sizes, colours N(114, 60), noise std 2), used full-frame,
letterboxed 3:2 and 2:3 in grey 114, and a flat grey image. No photo is used.
Per output channel of each head conv (statistics over anchors; "content" =
anchors whose centre is on the synthetic content, "pad" = on the grey):
- class-score convs (`cv3.<i>.2`, or `one2one_cv3.<i>.2`; their outputs go
  through the Sigmoid): scaled to unit std over content anchors; bias set so
  that logit = min(CLS_BIAS + z - q99, CLS_PAD_LOGIT + z - max_pad) +
  CLS_LEVEL_OFFSET[i], i.e. the 99th-percentile content response maps to
  CLS_BIAS and the strongest pad response to CLS_PAD_LOGIT (both below the
  0.25 threshold, logit -1.10), with strides 8 and 16 made 4 and 2 logits less
  likely (they have 16x and 4x more anchors and NMS at IoU 0.7 merges little).
  Without this, one class wins at every anchor, or every anchor scores ~0.5.
  CLS_BIAS plays the part of Ultralytics' own `Detect.bias_init` prior.
- box convs (`cv2.<i>.2`): standardised per channel to std BOX_STD with, for
  DFL (reg_max 16; v8, v10), a bin offset -BOX_DECAY * j (j = 0..15) so that
  side distances are a few cells and vary; for reg_max 1 (YOLO26, raw
  distances in cells) mean BOX_MEAN_R1, std BOX_STD_R1 (no inverted boxes).
- classifier (`linear` Gemm before the Softmax): the per-class mean logit over
  4 synthetic 224x224 images is removed and logits are scaled to std CLS_TEMP
  over classes and images: a clearly non-uniform but not one-hot softmax.
Scales are rounded to 1/64 octave and offsets to 1/256 before use, so that
last-bit numpy/BLAS differences between machines do not change the bytes.

Tuning (CLS_BIAS, CLS_PAD_LOGIT, CLS_LEVEL_OFFSET, CLS_TEMP) was done on
tests/data/photos at conf 0.25. A random network without normalisation
answers in proportion to image contrast, so counts differ a lot between
photos (astronaut.png, saturated and textured, gets the most; rocket.png,
dark, the fewest); see README.md for the resulting counts.

Output is byte-identical across runs and x86-64 machines (sha256 in
README.md; see pin_blas_kernels).
"""
import os
import platform
import re
import sys
import warnings
import zlib


def pin_blas_kernels() -> None:
    """The calibration's convolutions end in OpenBLAS, which picks its
    kernels for the CPU it finds: on an AVX-512 Xeon they sum in another
    order than on an AVX2 machine, and a few scales of YOLOv10n and YOLO26n
    then round to the next 1/64 octave, so the bytes (and the sha256 the
    expected outputs were recorded with) change. Every x86-64 machine with
    AVX2 runs the same (Haswell) kernels here. Must run before numpy loads
    OpenBLAS; an OPENBLAS_CORETYPE already set is kept."""
    if platform.machine() != "x86_64" or "OPENBLAS_CORETYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo") as f:
            avx2 = any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return
    if avx2:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


pin_blas_kernels()

import numpy as np  # noqa: E402 (OpenBLAS reads its kernel choice when it loads)
import onnx  # noqa: E402
import onnx.utils  # noqa: E402
from onnx import numpy_helper  # noqa: E402

STRIPPED = "vigil:stripped"
GAIN = float(np.sqrt(2.0))
IN_SCALE = 10.0
PAD_GREY = 114
CAL_MEAN, CAL_SD, CAL_NOISE = 114.0, 60.0, 2.0
BIAS_STD = 0.02
# Head calibration, tuned on tests/data/photos (see the docstring).
CLS_QUANTILE = 0.99
CLS_BIAS = {"yolov8": -1.5, "yolov10": -4.0, "end2end": -2.25}
CLS_PAD_LOGIT = {"yolov8": -1.0, "yolov10": -3.5, "end2end": -1.75}
CLS_LEVEL_OFFSET = (-4.0, -2.0, 0.0)  # strides 8, 16, 32
BOX_STD = 1.5
BOX_DECAY = 0.4
BOX_MEAN_R1 = 3.0
BOX_STD_R1 = 0.75
CLS_TEMP = 0.3

RE_CLS = re.compile(r"(^|\.)(one2one_)?cv3\.\d+\.2\.weight$")
RE_BOX = re.compile(r"(^|\.)(one2one_)?cv2\.\d+\.2\.weight$")
RE_LINEAR = re.compile(r"(^|\.)linear\.weight$")


def family(model: onnx.ModelProto) -> str:
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("task") == "classify":
        return "classify"
    if meta.get("end2end") != "True":
        return "yolov8"
    return "yolov10" if meta.get("head") == "v10Detect" else "end2end"


def rng_for(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode("utf-8")))


def random_fill(name: str, dims: list[int], first: bool) -> np.ndarray:
    rng = rng_for(name)
    shape = tuple(dims)
    if len(dims) >= 2:  # weight
        std = GAIN / np.sqrt(int(np.prod(dims[1:])))
        if first:
            std *= IN_SCALE
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(BIAS_STD)


def calibration_image(h: int, w: int, seed: int) -> np.ndarray:
    """A fixed synthetic RGB uint8 image: gradient, 60 random flat rectangles
    and ellipses at all scales, Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.normal(CAL_MEAN, CAL_SD, 3), rng.normal(CAL_MEAN, CAL_SD, 3)
    t = (yy / h)[..., None]
    img = (c0 * (1 - t) + c1 * t).astype(np.float32)
    for _ in range(60):
        col = rng.normal(CAL_MEAN, CAL_SD, 3)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = np.exp(rng.uniform(np.log(4), np.log(w / 3), 2))
        if rng.random() < 0.5:
            m = (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
        else:
            m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        img[m] = col
    img += rng.normal(0, CAL_NOISE, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def letterboxed_calibration(h: int, w: int, seed: int, landscape: bool) -> tuple[np.ndarray, np.ndarray]:
    """calibration_image content letterboxed 3:2 (or 2:3) in pad grey 114,
    and the mask of its content pixels."""
    img = np.full((h, w, 3), 114, np.uint8)
    mask = np.zeros((h, w), bool)
    if landscape:
        ch = round(h * 2 / 3)
        top = (h - ch) // 2
        img[top:top + ch] = calibration_image(ch, w, seed)
        mask[top:top + ch] = True
    else:
        cw = round(w * 2 / 3)
        left = (w - cw) // 2
        img[:, left:left + cw] = calibration_image(h, cw, seed)
        mask[:, left:left + cw] = True
    return img, mask


def to_input(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) / 255).transpose(2, 0, 1)[None]


def q_scale(s: np.ndarray) -> np.ndarray:
    return np.exp2(np.round(np.log2(s) * 64) / 64)


def q_off(x: np.ndarray) -> np.ndarray:
    return np.round(x * 256) / 256


def run_to(model: onnx.ModelProto, outputs: list[str], feeds: list[np.ndarray]) -> list[dict]:
    """Runs the part of the graph that computes `outputs` with onnx.reference."""
    from onnx.reference import ReferenceEvaluator

    sub = onnx.utils.Extractor(model).extract_model([model.graph.input[0].name], outputs)
    ev = ReferenceEvaluator(sub)
    res = []
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in feeds:
            res.append(dict(zip(outputs, ev.run(outputs, {model.graph.input[0].name: x}))))
    return res


def calibrate_detect(model: onnx.ModelProto, fam: str, inits: dict) -> None:
    cls_nodes, box_nodes = [], []
    for n in model.graph.node:
        if n.op_type == "Conv" and len(n.input) == 3:
            if RE_CLS.search(n.input[1]):
                cls_nodes.append(n)
            elif RE_BOX.search(n.input[1]):
                box_nodes.append(n)
    if not cls_nodes or len(cls_nodes) != len(box_nodes):
        raise SystemExit(f"head convs not found (class {len(cls_nodes)}, box {len(box_nodes)})")
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    h, w = shape[2], shape[3]
    # (image, content mask): full synthetic, letterboxed 3:2 and 2:3, flat pad grey
    calib = [(calibration_image(h, w, 0), np.ones((h, w), bool)),
             letterboxed_calibration(h, w, 1, True), letterboxed_calibration(h, w, 2, False),
             (np.full((h, w, 3), 114, np.uint8), np.zeros((h, w), bool))]
    outs = [n.output[0] for n in cls_nodes + box_nodes]
    res = run_to(model, outs, [to_input(img) for img, _ in calib])

    def stats(name):
        """(content anchors, pad anchors): [C, n] each, over all calibration images."""
        content, pad = [], []
        for r, (_, mask) in zip(res, calib):
            y = r[name][0].astype(np.float64)
            c, hs, ws = y.shape
            sy, sx = h // hs, w // ws
            m = mask[sy // 2::sy, sx // 2::sx][:hs, :ws].reshape(-1)
            y = y.reshape(c, -1)
            content.append(y[:, m])
            pad.append(y[:, ~m])
        return np.concatenate(content, 1), np.concatenate(pad, 1)

    def update(node, scale, offset):
        wt, bt = inits[node.input[1]], inits[node.input[2]]
        wa, ba = numpy_helper.to_array(wt), numpy_helper.to_array(bt)
        wa = (wa * scale.reshape(-1, *[1] * (wa.ndim - 1))).astype(np.float32)
        ba = (ba * scale + offset).astype(np.float32)
        wt.CopyFrom(numpy_helper.from_array(wa, wt.name))
        bt.CopyFrom(numpy_helper.from_array(ba, bt.name))

    for n in cls_nodes:
        y, pad = stats(n.output[0])
        level = int(RE_CLS.search(n.input[1]).group(0).split("cv3.")[1].split(".")[0])
        scale = q_scale(1 / y.std(1))
        offset = np.minimum(CLS_BIAS[fam] - np.quantile(y, CLS_QUANTILE, axis=1) * scale,
                            CLS_PAD_LOGIT[fam] - pad.max(1) * scale) + CLS_LEVEL_OFFSET[level]
        update(n, scale, q_off(offset))
    for n in box_nodes:
        y = np.concatenate(stats(n.output[0]), 1)
        c = y.shape[0]
        reg_max = c // 4
        scale = q_scale((BOX_STD if reg_max > 1 else BOX_STD_R1) / y.std(1))
        if reg_max > 1:
            target = -BOX_DECAY * (np.arange(c) % reg_max)
        else:
            target = np.full(c, BOX_MEAN_R1)
        offset = q_off(-y.mean(1) * scale + target)
        update(n, scale, offset)


def calibrate_classify(model: onnx.ModelProto, inits: dict) -> None:
    gemm = [n for n in model.graph.node if n.op_type == "Gemm" and RE_LINEAR.search(n.input[1])]
    if len(gemm) != 1:
        raise SystemExit(f"classifier Gemm not found ({len(gemm)})")
    n = gemm[0]
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feeds = [to_input(calibration_image(shape[2], shape[3], s)) for s in range(4)]
    logits = np.stack([r[n.output[0]][0] for r in run_to(model, [n.output[0]], feeds)]).astype(np.float64)
    mu = logits.mean(0)
    scale = float(q_scale(np.array(CLS_TEMP / (logits - mu).std())))
    wt, bt = inits[n.input[1]], inits[n.input[2]]
    wa, ba = numpy_helper.to_array(wt), numpy_helper.to_array(bt)
    wt.CopyFrom(numpy_helper.from_array((wa * np.float32(scale)).astype(np.float32), wt.name))
    bt.CopyFrom(numpy_helper.from_array(((ba - q_off(mu)) * scale).astype(np.float32), bt.name))


def refill(model: onnx.ModelProto) -> int:
    fam = family(model)
    inputs = {i.name for i in model.graph.input}
    first = {n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs}
    inits = {t.name: t for t in model.graph.initializer}
    n = 0
    for t in model.graph.initializer:
        if t.doc_string != STRIPPED:
            continue
        if t.data_type != onnx.TensorProto.FLOAT:
            raise SystemExit(f"{t.name}: stripped tensor of type {t.data_type}, only float32 is supported")
        t.CopyFrom(numpy_helper.from_array(random_fill(t.name, list(t.dims), t.name in first), t.name))
        n += 1
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in first and len(node.input) == 3:
            # centre the input on the letterbox grey: a grey pixel then gives exactly what the
            # conv's zero padding gives, so the pad does not show the canvas border
            wa = numpy_helper.to_array(inits[node.input[1]])
            ba = numpy_helper.to_array(inits[node.input[2]])
            ba = (ba - wa.reshape(wa.shape[0], -1).sum(1) * np.float32(PAD_GREY / 255)).astype(np.float32)
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(ba, node.input[2]))
    if fam == "classify":
        calibrate_classify(model, inits)
    else:
        calibrate_detect(model, fam, inits)
    return n


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    model = onnx.load(argv[1])
    n = refill(model)
    onnx.save(model, argv[2])
    print(f"{argv[2]}: {n} tensors refilled, head calibrated ({family(model)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
