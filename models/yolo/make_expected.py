#!/usr/bin/env python3
"""Writes tests/data/expected/<model>__<photo>.json from Ultralytics' own
`predict` on the refilled models, and checks them independently.

Run (after refill_weights.py, see README.md), from the repository root:

    /work/ultra-venv/bin/python models/yolo/make_expected.py          # predict + check
    .deps/venv/bin/python models/yolo/make_expected.py --check-only   # check only (no ultralytics)

Detection models (yolov8n, yolov10n, yolo26n): Ultralytics reads the PNG path
itself (cv2.imread) and runs
`YOLO(onnx, task='detect').predict(imgsz=640, conf=0.25, iou=0.7, max_det=300)`.
Each JSON holds the boxes exactly as r.boxes.xyxy / conf / cls give them
(float32 values written at full precision), in Ultralytics' order.

Classifier (yolov8n-cls): Ultralytics' top-5 (r.probs.top5, top5conf) are
saved but are informative only: Ultralytics' classify preprocessing
(torchvision-style resize of the short side + center crop, with antialias)
differs from Vigil's `stretch` resize (cv2 INTER_LINEAR to 224x224), so Vigil
is not expected to reproduce them. The same file also holds
`reference_stretch_top5`, computed here with onnxruntime and the
docs/model-families.md `classify` contract, which Vigil should reproduce.

Independent check (no Ultralytics code): onnxruntime on the same ONNX file,
the letterbox of docs/model-families.md (cv2.resize INTER_LINEAR, pad 114,
/255, NCHW), the `yolov8` decoder (best class, score > conf, torchvision-style
greedy NMS, class-aware, IoU > iou drops) or the `end2end` decoder (rows with
score > conf, in order), and the box mapping of the contract. Each photo must
give the same count and, pairwise in order, the same class, IoU >= 0.99 and
score within 1e-3. This is done twice: with the box mapping of
docs/model-families.md (gain = min ratio, pad = round((in - frame * gain) / 2
- 0.1)) and with Ultralytics 8.4's `ops.scale_boxes` (per-axis gains
new_w / frame_w, new_h / frame_h and pad = round((in - new) / 2 - 0.1), both
from the rounded letterbox size). The exit status follows the contract's.
"""
import glob
import hashlib
import json
import os
import sys

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PHOTOS = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "photos", "*.png")))
EXPECTED = os.path.join(ROOT, "tests", "data", "expected")
DETECT = ["yolov8n", "yolov10n", "yolo26n"]
CLASSIFY = ["yolov8n-cls"]
CONF, IOU, MAX_DET = 0.25, 0.7, 300


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT).replace(os.sep, "/")


def out_path(model: str, photo: str) -> str:
    return os.path.join(EXPECTED, f"{model}__{os.path.splitext(os.path.basename(photo))[0]}.json")


def write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


# ---------------------------------------------------------------- Ultralytics

def predict_all() -> None:
    from ultralytics import YOLO

    os.makedirs(EXPECTED, exist_ok=True)
    for model in DETECT:
        onnx_path = os.path.join(HERE, f"{model}.onnx")
        if not os.path.exists(onnx_path):
            print(f"{model}: {rel(onnx_path)} missing (run refill_weights.py), skipped")
            continue
        yolo = YOLO(onnx_path, task="detect")
        for photo in PHOTOS:
            r = yolo.predict(source=photo, imgsz=640, conf=CONF, iou=IOU, max_det=MAX_DET, verbose=False)[0]
            h, w = r.orig_shape
            dets = [
                {"label": r.names[int(c)], "class_id": int(c), "score": float(s), "box": [float(v) for v in b]}
                for b, s, c in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist())
            ]
            write_json(out_path(model, photo), {
                "model": f"models/yolo/{model}.onnx",
                "model_sha256": sha256(onnx_path),
                "image": rel(photo),
                "width": w,
                "height": h,
                "conf": CONF,
                "iou": IOU,
                "detections": dets,
            })
            print(f"{model} {os.path.basename(photo)}: {len(dets)} detections")
    for model in CLASSIFY:
        onnx_path = os.path.join(HERE, f"{model}.onnx")
        if not os.path.exists(onnx_path):
            print(f"{model}: {rel(onnx_path)} missing (run refill_weights.py), skipped")
            continue
        yolo = YOLO(onnx_path, task="classify")
        for photo in PHOTOS:
            r = yolo.predict(source=photo, imgsz=224, verbose=False)[0]
            h, w = r.orig_shape
            ultra = [{"class_id": int(c), "label": r.names[int(c)], "score": float(s)}
                     for c, s in zip(r.probs.top5, r.probs.top5conf.tolist())]
            write_json(out_path(model, photo), {
                "model": f"models/yolo/{model}.onnx",
                "model_sha256": sha256(onnx_path),
                "image": rel(photo),
                "width": w,
                "height": h,
                # Informative only: Ultralytics' classify preprocessing (torchvision resize of
                # the short side + center crop, antialias) is not Vigil's stretch resize.
                "ultralytics_top5": ultra,
                "ultralytics_note": "Ultralytics classify preprocessing (resize short side + center crop, "
                                    "antialias) differs from Vigil's stretch; informative only",
                # What the docs/model-families.md classify contract gives (stretch, cv2 INTER_LINEAR).
                "reference_stretch_top5": stretch_top5(onnx_path, photo, r.names),
            })
            print(f"{model} {os.path.basename(photo)}: top5 {[d['class_id'] for d in ultra]}")


# ---------------------------------------------------------- independent check

def session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def read_rgb(photo: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(photo, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def letterbox(rgb: np.ndarray, in_w: int = 640, in_h: int = 640, pad: int = 114) -> np.ndarray:
    fh, fw = rgb.shape[:2]
    r = min(in_h / fh, in_w / fw)
    nw, nh = round(fw * r), round(fh * r)
    dw, dh = (in_w - nw) / 2, (in_h - nh) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    img = rgb if (nw, nh) == (fw, fh) else cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((in_h, in_w, 3), pad, np.uint8)
    canvas[top:top + nh, left:left + nw] = img
    return (canvas.astype(np.float32) / 255).transpose(2, 0, 1)[None]


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    for i in order:
        for k in keep:
            if classes[k] != classes[i]:
                continue
            iw = min(boxes[i, 2], boxes[k, 2]) - max(boxes[i, 0], boxes[k, 0])
            ih = min(boxes[i, 3], boxes[k, 3]) - max(boxes[i, 1], boxes[k, 1])
            inter = max(iw, 0.0) * max(ih, 0.0)
            if inter / (area[i] + area[k] - inter) > iou:
                break
        else:
            keep.append(int(i))
    return keep


def decode_yolov8(out: np.ndarray):
    p = out[0]
    cls = p[4:]
    j = cls.argmax(0)  # first on a tie
    s = cls[j, np.arange(cls.shape[1])]
    m = s > CONF
    cx, cy, w, h = p[0, m], p[1, m], p[2, m], p[3, m]
    b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    keep = nms(b, s[m], j[m], IOU)[:MAX_DET]
    return b[keep], s[m][keep], j[m][keep]


def decode_end2end(out: np.ndarray):
    o = out[0]
    m = o[:, 4] > CONF
    o = o[m][:MAX_DET]
    return o[:, :4], o[:, 4], o[:, 5].astype(np.int64)


def to_frame_contract(b: np.ndarray, fw: int, fh: int, in_w: int = 640, in_h: int = 640) -> np.ndarray:
    gain = min(in_h / fh, in_w / fw)
    px, py = round((in_w - fw * gain) / 2 - 0.1), round((in_h - fh * gain) / 2 - 0.1)
    b = b.astype(np.float64).copy()
    b[:, [0, 2]] = ((b[:, [0, 2]] - px) / gain).clip(0, fw)
    b[:, [1, 3]] = ((b[:, [1, 3]] - py) / gain).clip(0, fh)
    return b


def to_frame_ultra84(b: np.ndarray, fw: int, fh: int, in_w: int = 640, in_h: int = 640) -> np.ndarray:
    """Ultralytics 8.4 ops.scale_boxes (ratio_pad None, padding True)."""
    gain = min(in_h / fh, in_w / fw)
    nh, nw = max(round(fh * gain), 1), max(round(fw * gain), 1)
    gy, gx = nh / fh, nw / fw
    px, py = round((in_w - nw) / 2 - 0.1), round((in_h - nh) / 2 - 0.1)
    b = b.astype(np.float64).copy()
    b[:, [0, 2]] = ((b[:, [0, 2]] - px) / gx).clip(0, fw)
    b[:, [1, 3]] = ((b[:, [1, 3]] - py) / gy).clip(0, fh)
    return b


def iou1(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return 1.0 if union <= 0 and np.allclose(a, b, atol=1e-3) else (inter / union if union > 0 else 0.0)


def check_all() -> bool:
    ok = True
    for model in DETECT:
        onnx_path = os.path.join(HERE, f"{model}.onnx")
        if not os.path.exists(onnx_path):
            continue
        sess = session(onnx_path)
        for photo in PHOTOS:
            path = out_path(model, photo)
            if not os.path.exists(path):
                continue
            exp = json.load(open(path))
            if exp["model_sha256"] != sha256(onnx_path):
                print(f"FAIL {model} {os.path.basename(photo)}: model sha256 differs from the one predicted")
                ok = False
                continue
            rgb = read_rgb(photo)
            fh, fw = rgb.shape[:2]
            out = sess.run(None, {"images": letterbox(rgb)})[0]
            b, s, c = decode_end2end(out) if out.shape[-1] == 6 else decode_yolov8(out)
            ours_c, ours_u = to_frame_contract(b, fw, fh), to_frame_ultra84(b, fw, fh)
            dets = exp["detections"]
            msgs = []
            if len(dets) != len(s):
                msgs.append(f"count {len(s)} != {len(dets)}")
            worst_score, zero_area = 0.0, 0
            worst_iou = {"contract": 1.0, "ultralytics-8.4": 1.0}
            diff = {"contract": 0.0, "ultralytics-8.4": 0.0}
            for k, d in enumerate(dets[:len(s)]):
                e = np.array(d["box"])
                if int(c[k]) != d["class_id"]:
                    msgs.append(f"#{k} class {int(c[k])} != {d['class_id']}")
                if e[2] - e[0] <= 0 or e[3] - e[1] <= 0:
                    zero_area += 1
                worst_score = max(worst_score, abs(float(s[k]) - d["score"]))
                for name, ours in (("contract", ours_c), ("ultralytics-8.4", ours_u)):
                    worst_iou[name] = min(worst_iou[name], iou1(ours[k], e))
                    diff[name] = max(diff[name], float(np.abs(ours[k] - e).max()))
            if worst_score > 1e-3:
                msgs.append(f"score diff {worst_score:.2e} > 1e-3")
            for name in ("contract", "ultralytics-8.4"):
                bad = msgs + ([f"IoU {worst_iou[name]:.4f} < 0.99"] if worst_iou[name] < 0.99 else [])
                if name == "contract":
                    ok &= not bad
                print(f"{'ok  ' if not bad else 'FAIL'} {model:8s} {os.path.basename(photo):14s} mapping {name:15s} "
                      f"n={len(dets):3d} (zero-area {zero_area:2d}) min IoU {worst_iou[name]:.6f} "
                      f"max |coord diff| {diff[name]:.2e} px, max |score diff| {worst_score:.1e} {'; '.join(bad)}")
    for model in CLASSIFY:
        onnx_path = os.path.join(HERE, f"{model}.onnx")
        for photo in PHOTOS:
            path = out_path(model, photo)
            if not os.path.exists(path) or not os.path.exists(onnx_path):
                continue
            exp = json.load(open(path))
            names = {d["class_id"]: d["label"] for d in exp["reference_stretch_top5"]}
            got = stretch_top5(onnx_path, photo, names)
            same = [d["class_id"] for d in got] == [d["class_id"] for d in exp["reference_stretch_top5"]] and all(
                abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(got, exp["reference_stretch_top5"]))
            ok &= same
            print(f"{'ok  ' if same else 'FAIL'} {model} {os.path.basename(photo)} stretch top5 "
                  f"{[d['class_id'] for d in got]} (ultralytics crop top5 {[d['class_id'] for d in exp['ultralytics_top5']]})")
    return ok


def stretch_top5(onnx_path: str, photo: str, names) -> list[dict]:
    rgb = read_rgb(photo)
    x = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_LINEAR)
    x = (x.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    p = session(onnx_path).run(None, {"images": x})[0][0].astype(np.float64)
    if not (np.all((p >= 0) & (p <= 1)) and abs(p.sum() - 1) <= 1e-3):
        p = np.exp(p - p.max())
        p /= p.sum()
    top = np.lexsort((np.arange(len(p)), -p))[:5]  # by probability, lower id first on ties
    return [{"class_id": int(i), "label": names.get(int(i), str(int(i))) if isinstance(names, dict) else names[int(i)], "score": float(p[i])} for i in top]


def main(argv: list[str]) -> int:
    if "--check-only" not in argv:
        predict_all()
    print(f"check with cv2 {cv2.__version__}, numpy {np.__version__}")
    return 0 if check_all() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
