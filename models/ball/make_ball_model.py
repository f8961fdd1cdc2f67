#!/usr/bin/env python3
"""Builds models/ball/ball.onnx: a real, if simple, object detector in the
YOLOv8 output layout, made only of ONNX operators (no training, no torch).

Run:  .deps/venv/bin/python models/ball/make_ball_model.py

What it detects: bright blobs (the moving ball of GStreamer's
`videotestsrc pattern=ball`, a white disk of radius 20 px on black). It is a
genuine detector, not a lookup: every box comes from the pixels.

How: like a YOLO head it scores a grid of anchors at two strides (8 and 16 px).
For each anchor it looks at a window centred on the anchor's cell and computes
the image moments of a brightness mask inside it: mass M0, centroid (cx, cy)
and variances. A uniform disk of radius r has variance r^2/4 along each axis,
so the box is cx, cy, 4*sigma_x, 4*sigma_y. The anchor's score is high only
when the centroid sits on the anchor's cell, the blob fits inside the window
and looks like one solid blob; neighbouring anchors see the same blob with
lower scores, which is exactly what NMS is for downstream.

Output: `output0` [1, 4 + C, N] with rows cx, cy, w, h (input pixels) then one
score row per class (already in 0..1, as Ultralytics' YOLOv8 exports do).
Metadata props mimic an Ultralytics export (Python-literal values) so model
inspection sees what it would see on a real one.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
IMGSZ = 640
# (stride, window) per head, in model pixels: a blob is measured best by the
# smallest window that holds it whole (up to ~24, ~56 and ~112 px across).
HEADS = [(8, 32), (8, 64), (16, 128)]
# Moments are first summed over 4x4 blocks; every window is a whole number of
# blocks, so the sums are exact and the windowed pooling runs on 1/16 of the pixels.
BLOCK = 4
LABELS = ["ball"]


def build():
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    gray = node("ReduceMean", ["images", "axis1"], "gray", keepdims=1)
    # Brightness mask: 0 at or below 0.6, 1 from 0.8 up. Letterbox padding
    # (114/255 = 0.45) and the black background give exactly 0.
    shifted = node("Sub", [gray, const("thr", 0.6)], "shifted")
    scaled = node("Mul", [shifted, const("gain", 5.0)], "scaled")
    mask = node("Clip", [scaled, const("zero", 0.0), const("one", 1.0)], "mask")

    # Pixel-centre coordinates, broadcast over the mask.
    coords = np.arange(IMGSZ, dtype=np.float32) + 0.5
    xs = const("xs", coords.reshape(1, 1, 1, IMGSZ))
    ys = const("ys", coords.reshape(1, 1, IMGSZ, 1))
    xm = node("Mul", [mask, xs], "xm")
    ym = node("Mul", [mask, ys], "ym")
    xxm = node("Mul", [xm, xs], "xxm")
    yym = node("Mul", [ym, ys], "yym")
    moments_px = node("Concat", [mask, xm, ym, xxm, yym], "moments_px", axis=1)
    moments = node("AveragePool", [moments_px], "moments", kernel_shape=[BLOCK, BLOCK], strides=[BLOCK, BLOCK])

    eps = const("eps", 1e-6)
    heads_boxes, heads_scores = [], []
    for stride, window in HEADS:
        p = f"s{stride}w{window}_"
        pad = (window - stride) // 2
        grid = IMGSZ // stride
        assert window % BLOCK == 0 and stride % BLOCK == 0 and pad % BLOCK == 0
        # Window centre == cell centre because pad = (window - stride) / 2.
        k, st, pd = window // BLOCK, stride // BLOCK, pad // BLOCK
        avg = node("AveragePool", [moments], p + "avg", kernel_shape=[k, k],
                   strides=[st, st], pads=[pd, pd, pd, pd], count_include_pad=1)
        chans = [p + n for n in ("m0", "sx", "sy", "sxx", "syy")]
        nodes.append(helper.make_node("Split", [avg], chans, axis=1, num_outputs=5))
        m0, sx, sy, sxx, syy = chans
        denom = node("Add", [m0, eps], p + "den")
        cx = node("Div", [sx, denom], p + "cx")
        cy = node("Div", [sy, denom], p + "cy")
        vx = node("Sub", [node("Div", [sxx, denom], p + "exx"), node("Mul", [cx, cx], p + "cx2")], p + "vx_raw")
        vy = node("Sub", [node("Div", [syy, denom], p + "eyy"), node("Mul", [cy, cy], p + "cy2")], p + "vy_raw")
        sdx = node("Sqrt", [node("Clip", [vx, const(p + "vmin", 0.0)], p + "vx")], p + "sdx")
        sdy = node("Sqrt", [node("Clip", [vy, const(p + "vmin2", 0.0)], p + "vy")], p + "sdy")
        w = node("Mul", [sdx, const(p + "four", 4.0)], p + "w")
        h = node("Mul", [sdy, const(p + "four2", 4.0)], p + "h")

        centres = (np.arange(grid, dtype=np.float32) + 0.5) * stride
        dx = node("Sub", [cx, const(p + "ccx", centres.reshape(1, 1, 1, grid))], p + "dx")
        dy = node("Sub", [cy, const(p + "ccy", centres.reshape(1, 1, grid, 1))], p + "dy")
        # Centred: Gaussian in the centroid's distance from the cell centre.
        d2 = node("Add", [node("Mul", [dx, dx], p + "dx2"), node("Mul", [dy, dy], p + "dy2")], p + "d2")
        # Wide enough that a blob on a cell border still scores well on both
        # neighbours; NMS keeps the better one.
        sigma2 = float(stride) ** 2
        centred = node("Exp", [node("Mul", [d2, const(p + "nk", -1.0 / (2 * sigma2))], p + "ce_arg")], p + "centred")
        # Fits: the blob's half extent plus its offset stays inside the window.
        adx = node("Abs", [dx], p + "adx")
        ady = node("Abs", [dy], p + "ady")
        ext_x = node("Add", [adx, node("Mul", [sdx, const(p + "two", 2.0)], p + "hx")], p + "ext_x")
        ext_y = node("Add", [ady, node("Mul", [sdy, const(p + "two2", 2.0)], p + "hy")], p + "ext_y")
        ext = node("Max", [ext_x, ext_y], p + "ext")
        margin = node("Sub", [const(p + "half", window / 2.0), ext], p + "margin")
        fits = node("Clip", [node("Add", [node("Mul", [margin, const(p + "q", 0.25)], p + "mq"), const(p + "h5", 0.5)], p + "fa"),
                             const(p + "z", 0.0), const(p + "o", 1.0)], p + "fits")
        # Mass: at least ~20 bright pixels (suppresses specks and noise).
        mass_px = node("Mul", [m0, const(p + "area", float(window * window))], p + "mass_px")
        massy = node("Clip", [node("Mul", [mass_px, const(p + "inv20", 1.0 / 20.0)], p + "mr"), const(p + "z2", 0.0), const(p + "o2", 1.0)], p + "massy")
        # Solid: mass matches the area of a disk with the measured spread
        # (4*pi*sx*sy); two separate blobs in one window spread wide and fail.
        disk = node("Mul", [node("Mul", [sdx, sdy], p + "sxy"), const(p + "fourpi", 4.0 * np.pi)], p + "disk_raw")
        fill = node("Div", [mass_px, node("Add", [disk, const(p + "one_px", 1.0)], p + "disk")], p + "fill")
        solid = node("Clip", [node("Sub", [node("Mul", [fill, const(p + "g125", 1.25)], p + "f1"), const(p + "g025", 0.25)], p + "f2"),
                              const(p + "z3", 0.0), const(p + "o3", 1.0)], p + "solid")
        score = node("Mul", [node("Mul", [centred, fits], p + "cf"), node("Mul", [massy, solid], p + "ms")], p + "score_raw")
        score = node("Mul", [score, const(p + "top", 0.95)], p + "score")

        n = grid * grid
        shape = p + "shape"
        inits.append(numpy_helper.from_array(np.array([1, 1, n], dtype=np.int64), shape))
        box = node("Concat", [node("Reshape", [t, shape], p + t.split("_")[-1] + "_flat") for t in (cx, cy, w, h)],
                   p + "box", axis=1)
        heads_boxes.append(box)
        heads_scores.append(node("Reshape", [score, shape], p + "score_flat"))

    boxes = node("Concat", heads_boxes, "boxes", axis=2)
    scores = node("Concat", heads_scores, "scores", axis=2)
    node("Concat", [boxes, scores], "output0", axis=1)

    n_total = sum((IMGSZ // s) ** 2 for s, _ in HEADS)
    graph = helper.make_graph(
        nodes, "vigil_ball_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + len(LABELS), n_total])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="vigil-fixtures", producer_version="1")
    model.ir_version = 8
    names = "{" + ", ".join(f"{i}: '{n}'" for i, n in enumerate(LABELS)) + "}"
    for k, v in {
        "description": "Vigil bright-blob detector (fixture, built from ONNX operators)",
        "author": "Vigil",
        "task": "detect",
        "stride": "32",
        "batch": "1",
        "imgsz": f"[{IMGSZ}, {IMGSZ}]",
        "names": names,
    }.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model, full_check=True)
    return model


def self_test(path):
    """Runs the model on a synthetic frame and checks the best box."""
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    img = np.zeros((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    yy, xx = np.mgrid[0:IMGSZ, 0:IMGSZ] + 0.5
    balls = [(200.0, 300.0, 20.0), (500.0, 120.0, 35.0), (320.0, 520.0, 10.0), (104.0, 104.0, 50.0)]
    for (bx, by, r) in balls:
        img[:, :, (xx - bx) ** 2 + (yy - by) ** 2 <= r * r] = 1.0
    out = sess.run(None, {"images": img})[0][0]
    for (bx, by, r) in balls:
        near = (np.abs(out[0] - bx) < 4) & (np.abs(out[1] - by) < 4)
        best = np.argmax(np.where(near, out[4], -1))
        cx, cy, w, h, s = out[:, best]
        assert s > 0.6, (bx, by, s)
        assert abs(cx - bx) < 1 and abs(cy - by) < 1, (cx, cy, bx, by)
        assert abs(w - 2 * r) < 3 and abs(h - 2 * r) < 3, (w, h, r)
        print(f"ball at ({bx},{by}) r={r}: box cx={cx:.1f} cy={cy:.1f} w={w:.1f} h={h:.1f} score={s:.3f}")
    assert out[4].max() <= 0.95 + 1e-6
    import time
    t = time.perf_counter()
    for _ in range(20):
        sess.run(None, {"images": img})
    print(f"session.run: {(time.perf_counter() - t) / 20 * 1000:.1f} ms")
    empty = sess.run(None, {"images": np.full((1, 3, IMGSZ, IMGSZ), 114 / 255, dtype=np.float32)})[0]
    assert empty[0, 4].max() < 1e-3, empty[0, 4].max()


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "ball.onnx")
    onnx.save(build(), out)
    self_test(out)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
