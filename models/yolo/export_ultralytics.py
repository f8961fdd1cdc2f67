#!/usr/bin/env python3
"""Exports Ultralytics' real architectures (random init, no trained weights) to
ONNX and strips their trainable weights into small "skeleton" files.

Run with the heavy fixture venv (see README.md), from anywhere:

    /work/ultra-venv/bin/python models/yolo/export_ultralytics.py [NAME...]

For each architecture it:
1. builds `YOLO('<arch>.yaml')` (random init; nothing is downloaded),
2. exports it with Ultralytics' own exporter: ONNX, CPU, batch 1, static
   shapes, fp32, default opset (18 here) and onnxslim simplification; for
   YOLOv10 / YOLO26 with nms=False, which selects the end-to-end one-to-one
   head ([1, 300, 6], no NMS in the graph). The export keeps Ultralytics'
   metadata_props (names, imgsz, stride, task, end2end, ...),
3. writes `models/yolo/<name>.skeleton.onnx`: the exported graph where every
   Conv/Gemm weight or bias initializer (input 1 or 2 of a Conv/Gemm node) has
   its data removed, name, dtype and dims kept, and doc_string set to
   `vigil:stripped`. Everything else is kept verbatim because it is
   structural: DFL conv weights (the fixed 0..15 ramp, name contains 'dfl'),
   anchors, strides, shape constants, and any initializer also used by a
   non-Conv/Gemm node.

`refill_weights.py` (onnx + numpy only) turns a skeleton back into a runnable
model with deterministic weights.

The full exports (random torch weights) are written to a scratch directory
outside the repository (default /work/ultra-work, or $VIGIL_ULTRA_WORK) and are
not needed afterwards.
"""
import os
import shutil
import sys

import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("VIGIL_ULTRA_WORK", "/work/ultra-work")

# (skeleton name, ultralytics yaml, imgsz, extra export args)
# nms=False selects the NMS-free one-to-one head ([1, 300, 6]); in this
# Ultralytics version the default (nms=None) exports the one-to-many head
# ([1, 84, 8400], needs NMS) even for YOLOv10 / YOLO26.
MODELS = [
    ("yolov8n", "yolov8n.yaml", 640, {}),
    ("yolov10n", "yolov10n.yaml", 640, {"nms": False}),
    ("yolo26n", "yolo26n.yaml", 640, {"nms": False}),
    ("yolov8n-cls", "yolov8n-cls.yaml", 224, {}),
    # Three times YOLOv8n's compute: bench/pipeline.sh --model-size s.
    ("yolov8s", "yolov8s.yaml", 640, {}),
]
STRIPPED = "vigil:stripped"


def strip(model: onnx.ModelProto) -> tuple[int, int]:
    """Removes the data of trainable Conv/Gemm initializers in place.
    Returns (stripped count, kept count)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    trainable, structural = set(), set()
    for node in g.node:
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            if node.op_type in ("Conv", "Gemm") and k in (1, 2) and "dfl" not in name.lower():
                trainable.add(name)
            else:
                structural.add(name)
    to_strip = trainable - structural
    for t in g.initializer:
        if t.name in to_strip:
            dims, dtype, name = list(t.dims), t.data_type, t.name
            t.Clear()
            t.name, t.data_type = name, dtype
            t.dims.extend(dims)
            t.doc_string = STRIPPED
    return len(to_strip), len(g.initializer) - len(to_strip)


def main() -> int:
    import ultralytics
    from ultralytics import YOLO

    os.makedirs(WORK, exist_ok=True)
    os.chdir(WORK)  # Ultralytics writes next to the cwd / model; keep it out of the repo
    cfg_dir = os.path.join(os.path.dirname(ultralytics.__file__), "cfg", "models")
    available = {f for _, _, fs in os.walk(cfg_dir) for f in fs}
    only = set(sys.argv[1:])  # names to export; none: all
    for name, yaml, imgsz, extra in MODELS:
        if only and name not in only:
            continue
        # Ultralytics resolves 'yolov8n.yaml' to yolov8.yaml with scale 'n' (yolov10n.yaml exists as such)
        base = yaml.replace("n.yaml", ".yaml").replace("n-cls.yaml", "-cls.yaml").replace("s.yaml", ".yaml")
        if yaml not in available and base not in available:
            print(f"{name}: {yaml} not in ultralytics {ultralytics.__version__}, skipped")
            continue
        model = YOLO(yaml)
        out = model.export(format="onnx", imgsz=imgsz, batch=1, dynamic=False, device="cpu", **extra)
        dst_full = os.path.join(WORK, f"{name}.export.onnx")
        shutil.move(out, dst_full)
        m = onnx.load(dst_full)
        n_strip, n_keep = strip(m)
        dst = os.path.join(HERE, f"{name}.skeleton.onnx")
        onnx.save(m, dst)
        print(
            f"{name}: opset {m.opset_import[0].version}, stripped {n_strip} initializers, kept {n_keep}, "
            f"skeleton {os.path.getsize(dst)} bytes (full export {os.path.getsize(dst_full)} bytes)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
