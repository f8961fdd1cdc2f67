#!/usr/bin/env python3
"""Builds two candidate versions of the ball model for shadow evaluation:
a good one and a deliberately bad one, both loadable and valid in every
way Vigil checks on upload (same input, YOLOv8 layout, label `ball`, no
NaN), differing from the active model only in where they put the ball.

Run:  .deps/venv/bin/python models/ball/make_candidates.py

    candidate_good.onnx  every box's centre moved right by 5 % of its width:
                         a retrained model that agrees (IoU with the active
                         model's box ~0.90, same scores), F1 1.0 at IoU 0.5.
    candidate_bad.onnx   moved right by 75 % of its width: the model still
                         fires on every ball, with the same scores, but puts
                         the box beside it (IoU ~0.14), so no detection
                         matches at IoU 0.5: F1 0. It is what a broken box
                         decoder (for one, a head quantized naively to INT8)
                         does to a model that otherwise looks healthy.

Both are ball.onnx with three nodes added after its output, so they are
as small (about 17 KB) and run as fast; the committed files are exactly what
this script writes (checked by the tests), and the script checks on
synthetic ball frames that the two disagree with ball.onnx as described.
"""
import os
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
CANDIDATES = {"candidate_good.onnx": 0.05, "candidate_bad.onnx": 0.75}


def build(shift):
    """ball.onnx with cx += shift * w on every anchor."""
    m = onnx.load(os.path.join(HERE, "ball.onnx"))
    g = m.graph
    for n in g.node:
        n.output[:] = ["ball_output0" if o == "output0" else o for o in n.output]
    g.initializer.extend([
        numpy_helper.from_array(np.array([1, 1, 1, 2], dtype=np.int64), "cand_split"),
        numpy_helper.from_array(np.array(shift, dtype=np.float32), "cand_shift"),
    ])
    # Rows cx, cy, w, then h and the score: cx gets shift * w added.
    g.node.extend([
        helper.make_node("Split", ["ball_output0", "cand_split"], ["cand_cx", "cand_cy", "cand_w", "cand_rest"], axis=1),
        helper.make_node("Mul", ["cand_w", "cand_shift"], ["cand_dx"]),
        helper.make_node("Add", ["cand_cx", "cand_dx"], ["cand_cx2"]),
        helper.make_node("Concat", ["cand_cx2", "cand_cy", "cand_w", "cand_rest"], ["output0"], axis=1),
    ])
    for p in m.metadata_props:
        if p.key == "description":
            p.value = f"Vigil ball detector, shadow-evaluation candidate: box centres moved by {shift:g} x width"
    onnx.checker.check_model(m, full_check=True)
    return m


def detections(sess, img):
    """Boxes (x1, y1, x2, y2) of anchors scoring > 0.25, after a plain NMS."""
    out = sess.run(None, {"images": img})[0][0]
    keep = np.nonzero(out[4] > 0.25)[0]
    keep = keep[np.argsort(-out[4, keep], kind="stable")]
    boxes = []
    for k in keep:
        cx, cy, w, h = out[:4, k]
        b = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if all(iou(b, o) <= 0.7 for o in boxes):
            boxes.append(b)
    return boxes


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def f1_against_ball(path):
    import onnxruntime as ort
    active = ort.InferenceSession(os.path.join(HERE, "ball.onnx"), providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    yy, xx = np.mgrid[0:640, 0:640] + 0.5
    n_a = n_c = matched = 0
    for bx, by, r in [(100, 100, 20), (320, 240, 20), (500, 400, 30), (200, 500, 15)]:
        img = np.zeros((1, 3, 640, 640), dtype=np.float32)
        img[:, :, (xx - bx) ** 2 + (yy - by) ** 2 <= r * r] = 1.0
        a, c = detections(active, img), detections(cand, img)
        n_a, n_c = n_a + len(a), n_c + len(c)
        used = set()
        for box in a:
            j = next((j for j, o in enumerate(c) if j not in used and iou(box, o) >= 0.5), None)
            if j is not None:
                used.add(j)
                matched += 1
    p, r = matched / max(n_c, 1), matched / max(n_a, 1)
    return 2 * p * r / (p + r) if p + r else 0.0, n_a, n_c


if __name__ == "__main__":
    out_dir = sys.argv[1] if len(sys.argv) > 1 else HERE
    for name, shift in CANDIDATES.items():
        path = os.path.join(out_dir, name)
        onnx.save(build(shift), path)
        f1, n_a, n_c = f1_against_ball(path)
        print(f"wrote {path} ({os.path.getsize(path)} bytes): F1 {f1:.2f} against ball.onnx "
              f"({n_a} active / {n_c} candidate detections)")
        assert (f1 >= 0.95) if shift < 0.5 else (f1 <= 0.05), (name, f1)
