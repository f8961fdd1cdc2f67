#!/usr/bin/env python3
"""Independent Python reference for docs/model-families.md.

Usage:
    reference.py --model M.onnx [--decoder D] [--conf C] [--iou I] [--max-det N] IMAGE...

Prints one JSON object per image and line:
    {"image", "width", "height", "decoder", "detections": [{"label", "class_id",
     "score", "box": [x1, y1, x2, y2]}], "classes": [...] (classify only),
     "verdict" and "anomaly_score" (anomalib only)}

It follows the document literally and is written separately from the Rust
decoders, so that the parity tests compare two readings of the same text.
Numerical conventions (the document leaves precision open):
  * model outputs are float32; everything this script computes from them
    (box corners, products, softmax, IoU, mapping back to the frame) is done in
    float64, and scores that are plain model outputs are reported as the exact
    value of the float32;
  * NMS / Custom Vision selection run on the boxes as the decoder computes
    them (input pixels or normalised), before mapping and clipping, as
    Ultralytics and the Custom Vision sample do.
A model that the rules do not fit is refused: message on stderr, exit code 2.
"""
import argparse
import ast
import json
import os
import sys
import tomllib

import cv2
import numpy as np
import onnxruntime as ort

DECODERS = ("yolov8", "yolov5", "end2end", "ssd", "classify", "anomalib",
            "customvision", "customvision-s1")
YOLO_FAMILIES = ("yolov8", "yolov5", "end2end")
# Anchors of Custom Vision's compact YOLOv2 head, in grid cells.
CV_ANCHORS = np.array([(0.573, 0.677), (1.87, 2.06), (3.34, 5.47), (7.88, 3.53), (9.77, 9.17)],
                      dtype=np.float64)
# The element types the document knows for the image input.
DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}


class Refused(Exception):
    """The model does not fit the document's rules."""


# --------------------------------------------------------------------------
# Loading a model and choosing its decoder

def read_manifest(model_path):
    """`parts.onnx` -> `parts.manifest.toml` next to it, or {}."""
    stem, _ = os.path.splitext(model_path)
    path = stem + ".manifest.toml"
    if not os.path.isfile(path):
        return {}
    with open(path, "rb") as f:
        return tomllib.load(f)


def read_labels_txt(model_path):
    """Custom Vision ships `labels.txt` next to the model: one label per line."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "labels.txt")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    # A final newline leaves no empty label behind.
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def parse_names(text):
    """Ultralytics writes names as a Python dict literal: "{0: 'person', ...}"."""
    value = ast.literal_eval(text)
    if isinstance(value, dict):
        keys = sorted(value)
        if keys != list(range(len(keys))):
            raise Refused(f"names metadata keys are not 0..{len(keys) - 1}: {keys}")
        return [str(value[k]) for k in keys]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise Refused(f"names metadata is neither a dict nor a list: {text!r}")


def is_true(text):
    return str(text).strip().lower() == "true"


def fixed(shape):
    """Shape with dynamic dimensions as None."""
    return [d if isinstance(d, int) else None for d in shape]


def choose_decoder(outputs, meta):
    """Rules 2 and 3 of "Choosing a decoder" (rule 1, the manifest, is the caller's).

    outputs: list of (name, shape) with dynamic dims as None. Returns a name or raises.
    """
    names = {n for n, _ in outputs}
    # Rule 2: the outputs' names.
    if {"pred_score", "anomaly_map"} <= names:
        return "anomalib"
    if {"detected_boxes", "detected_scores", "detected_classes"} <= names:
        return "customvision-s1"
    if "model_outputs0" in names:
        return "customvision"
    if {"detection_boxes", "detection_scores"} <= names:
        return "ssd"
    # Rule 3: Ultralytics metadata and the single output's shape.
    if len(outputs) != 1:
        raise Refused(f"{len(outputs)} outputs {outputs} and no known output names")
    shape = outputs[0][1]
    end2end = is_true(meta.get("end2end", "False"))
    task = meta.get("task")
    if len(shape) == 3 and shape[0] == 1 and shape[2] == 6 and end2end:
        return "end2end"
    if task == "classify" and len(shape) == 2 and shape[0] == 1 and shape[1] is not None:
        return "classify"
    if len(shape) == 3 and shape[0] == 1 and None not in shape:
        _, a, b = shape
        if a >= 5 and b > a:          # [1, 4 + C, N], C >= 1, N > 4 + C
            return "yolov8"
        if b > 6 and a > b:           # [1, N, 5 + C], C >= 2, N > 5 + C
            return "yolov5"
        if b == 6 and a <= 1000:      # [1, K, 6], K <= 1000: end-to-end rows (a
            return "end2end"          # one-class YOLOv5 head needs a manifest)
    if len(shape) == 2 and shape[0] == 1 and shape[1] is not None:
        return "classify"
    raise Refused(f"no decoder fits the output {outputs[0][0]} {shape} (metadata task={task!r}, end2end={end2end})")


class Model:
    def __init__(self, path, decoder=None):
        self.path = path
        self.manifest = read_manifest(path)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.outputs = [(o.name, fixed(o.shape)) for o in self.session.get_outputs()]
        self.output_names = [n for n, _ in self.outputs]

        if decoder is None:
            decoder = self.manifest.get("decoder")   # rule 1
        if decoder is None:
            decoder = choose_decoder(self.outputs, self.meta)
        if decoder not in DECODERS:
            raise Refused(f"unknown decoder {decoder!r}")
        self.decoder = decoder

        self._check_outputs()
        self._input_settings()
        self.num_classes = self._num_classes()
        self.labels = self._labels()
        if self.num_classes is not None and len(self.labels) != self.num_classes:
            raise Refused(f"{len(self.labels)} labels but the model has {self.num_classes} classes")

    def _check_outputs(self):
        """The chosen (or forced) decoder's outputs exist with the right rank."""
        shapes = dict(self.outputs)
        first = self.outputs[0][1]
        need = {
            "yolov8": len(first) == 3 and first[1] is not None and first[1] >= 5,
            "yolov5": len(first) == 3 and first[2] is not None and first[2] >= 6,
            "end2end": len(first) == 3 and first[2] == 6,
            "classify": len(first) == 2 and first[1] is not None,
            "customvision": "model_outputs0" in shapes and len(shapes["model_outputs0"]) == 4,
            "customvision-s1": {"detected_boxes", "detected_scores", "detected_classes"} <= set(shapes),
            "anomalib": {"pred_score", "anomaly_map"} <= set(shapes),
            "ssd": len(self.outputs) >= 4,
        }
        if not need[self.decoder]:
            raise Refused(f"outputs {self.outputs} do not fit decoder {self.decoder}")

    # -- input and preprocessing settings
    def _input_settings(self):
        m = self.manifest
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise Refused(f"{len(inputs)} inputs; one image input expected")
        inp = inputs[0]
        self.input_name = inp.name
        shape = fixed(inp.shape)
        if len(shape) != 4:
            raise Refused(f"input {inp.name} has rank {len(shape)} {inp.shape}; an image input has rank 4")
        layout = m.get("layout")
        if layout is None:
            # A dimension of 3 in position 1 means NCHW, in position 3 NHWC.
            if shape[1] == 3:
                layout = "nchw"
            elif shape[3] == 3:
                layout = "nhwc"
            else:
                raise Refused(f"input {inp.name} {inp.shape}: no channel dimension of 3 in position 1 or 3")
        self.layout = layout
        h, w = (shape[2], shape[3]) if layout == "nchw" else (shape[1], shape[2])
        if inp.type not in DTYPES:
            raise Refused(f"input {inp.name} element type {inp.type} is not float32, float16 or uint8")
        self.dtype = DTYPES[inp.type]
        dynamic = h is None or w is None
        self.in_h, self.in_w = h, w

        yolo = self.decoder in YOLO_FAMILIES
        resize = m.get("resize")
        if resize is None:
            # `none` exists only for dynamic height and width, and a fixed size
            # is needed for the others, so dynamic inputs default to it.
            resize = "none" if dynamic else ("letterbox" if yolo else "stretch")
        if resize == "none" and not dynamic:
            raise Refused("resize = none needs an input with dynamic height and width")
        if resize != "none" and dynamic:
            raise Refused(f"resize = {resize} needs a fixed input size, the input is {inp.shape}")
        self.resize = resize
        # Colour and value range: the document ties them to the decoder for the
        # Custom Vision families (BGR raw 0..255, and RGB raw 0..255 for S1).
        default_color = "bgr" if self.decoder == "customvision" else "rgb"
        default_scale = "raw" if self.decoder in ("customvision", "customvision-s1") else "unit"
        self.color = m.get("color", default_color)
        self.scale = m.get("scale", default_scale)
        self.mean = [float(v) for v in m.get("mean", [0.0, 0.0, 0.0])]
        self.std = [float(v) for v in m.get("std", [1.0, 1.0, 1.0])]
        self.pad_value = int(m.get("pad_value", 114))
        for key in ("input_size", "class_confidence"):
            if key in m:
                raise Refused(f"manifest key {key!r} is not part of docs/model-families.md")

    # -- classes and labels
    def _num_classes(self):
        """Classes the output layout implies, where it implies any."""
        shapes = dict(self.outputs)
        if self.decoder == "yolov8":
            return self.outputs[0][1][1] - 4
        if self.decoder == "yolov5":
            return self.outputs[0][1][2] - 5
        if self.decoder == "classify":
            return self.outputs[0][1][1]
        if self.decoder == "customvision":
            channels = shapes["model_outputs0"][1]
            if channels % 5 or channels // 5 <= 5:
                raise Refused(f"model_outputs0 has {channels} channels, not 5 * (5 + C)")
            return channels // 5 - 5
        return None   # end2end, ssd, S1, anomalib: the layout does not say

    def _labels(self):
        if "labels" in self.manifest:
            return [str(v) for v in self.manifest["labels"]]
        if "names" in self.meta:
            return parse_names(self.meta["names"])
        txt = read_labels_txt(self.path)
        if txt is not None:
            return txt
        if self.num_classes is not None:
            return [f"class{i}" for i in range(self.num_classes)]
        return []   # unknown count: labels made on demand, see label()

    def label(self, class_id):
        if 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        if not self.labels:
            return f"class{class_id}"
        raise Refused(f"class id {class_id} has no label ({len(self.labels)} labels)")

    # ----------------------------------------------------------------------
    # Preprocessing ("Preprocessing" section, steps 1-4)

    def preprocess(self, rgb):
        """rgb: uint8 HxWx3 frame. Returns the input tensor and the box mapper."""
        fh, fw = rgb.shape[:2]
        if self.resize == "letterbox":
            img = letterbox(rgb, self.in_w, self.in_h, self.pad_value)
        elif self.resize == "stretch":
            img = rgb if (fw, fh) == (self.in_w, self.in_h) else \
                cv2.resize(rgb, (self.in_w, self.in_h), interpolation=cv2.INTER_LINEAR)
        else:
            img = rgb
        if self.color == "bgr":
            img = img[:, :, ::-1]
        if self.dtype == "uint8":
            x = np.ascontiguousarray(img)
        else:
            x = img.astype(np.float32)
            if self.scale == "unit":
                x = x / np.float32(255)
            if self.mean != [0.0, 0.0, 0.0] or self.std != [1.0, 1.0, 1.0]:
                x = (x - np.array(self.mean, dtype=np.float32)) / np.array(self.std, dtype=np.float32)
            if self.dtype == "float16":
                x = x.astype(np.float16)
        x = x.transpose(2, 0, 1)[None] if self.layout == "nchw" else x[None]
        return np.ascontiguousarray(x)

    def to_frame(self, boxes, fw, fh, normalised=False):
        """Boxes [n, 4] (x1, y1, x2, y2) from the decoder's space to frame pixels, clipped."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        if normalised:
            b[:, [0, 2]] *= fw
            b[:, [1, 3]] *= fh
        elif self.resize == "letterbox":
            # Ultralytics (8.4) scale_boxes: per-axis gains from the rounded
            # letterbox size, pads where the letterbox put the image.
            gain = min(self.in_h / fh, self.in_w / fw)
            new_w, new_h = max(round(fw * gain), 1), max(round(fh * gain), 1)
            pad_x = round((self.in_w - new_w) / 2 - 0.1)
            pad_y = round((self.in_h - new_h) / 2 - 0.1)
            b[:, [0, 2]] = (b[:, [0, 2]] - pad_x) / (new_w / fw)
            b[:, [1, 3]] = (b[:, [1, 3]] - pad_y) / (new_h / fh)
        elif self.resize == "stretch":
            b[:, [0, 2]] = b[:, [0, 2]] * fw / self.in_w
            b[:, [1, 3]] = b[:, [1, 3]] * fh / self.in_h
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, fw)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, fh)
        return b

    # ----------------------------------------------------------------------
    # Running one image

    def run(self, image_path, conf=None, iou=None, max_det=None):
        bgr = cv2.imread(image_path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read image {image_path}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)   # the frame is RGB
        fh, fw = rgb.shape[:2]
        x = self.preprocess(rgb)
        raw = self.session.run(None, {self.input_name: x})
        out = dict(zip(self.output_names, raw))

        m = self.manifest
        cv = self.decoder == "customvision"
        conf = conf if conf is not None else m.get("confidence", 0.1 if cv else 0.25)
        iou = iou if iou is not None else m.get("iou", 0.45 if cv else 0.7)
        max_det = max_det if max_det is not None else m.get("max_detections", 20 if cv else 300)
        agnostic = bool(m.get("class_agnostic", False))

        result = {"image": image_path, "width": fw, "height": fh, "decoder": self.decoder,
                  "detections": []}
        dec = self.decoder
        if dec in ("yolov8", "yolov5"):
            dets = self.decode_yolo(raw[0][0], dec, conf, iou, max_det, agnostic, fw, fh)
        elif dec == "end2end":
            dets = self.decode_end2end(raw[0][0], conf, max_det, fw, fh)
        elif dec == "ssd":
            dets = self.decode_ssd(out, conf, fw, fh)
        elif dec == "customvision":
            dets = self.decode_customvision(out["model_outputs0"][0], conf, iou, max_det, fw, fh)
        elif dec == "customvision-s1":
            dets = self.decode_s1(out, conf, fw, fh)
        elif dec == "classify":
            dets = []
            result["classes"] = self.decode_classify(raw[0][0])
        elif dec == "anomalib":
            dets, score = self.decode_anomalib(out, fw, fh)
            threshold = float(m.get("threshold", 0.5))
            result["verdict"] = "NG" if score > threshold else "OK"
            result["anomaly_score"] = score
        result["detections"] = dets
        return result

    def det(self, class_id, score, box):
        return {"label": self.label(class_id), "class_id": int(class_id), "score": float(score),
                "box": [float(v) for v in box]}

    # ----------------------------------------------------------------------
    # Decoders

    def decode_yolo(self, o, kind, conf, iou, max_det, agnostic, fw, fh):
        if kind == "yolov8":
            o = o.T                              # [4 + C, N] -> [N, 4 + C]
            scores_all = o[:, 4:].astype(np.float64)
            keep = np.ones(len(o), dtype=bool)
        else:
            obj = o[:, 4].astype(np.float64)
            keep = obj > conf                     # considered only when obj > conf
            scores_all = o[:, 5:].astype(np.float64) * obj[:, None]
        cls = np.argmax(scores_all, axis=1)       # the first on a tie
        score = scores_all[np.arange(len(o)), cls]
        cand = np.nonzero(keep & (score > conf))[0]   # in anchor order
        xywh = o[cand, :4].astype(np.float64)
        boxes = np.stack([xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 1] - xywh[:, 3] / 2,
                          xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2], axis=1)
        kept = nms(boxes, score[cand], cls[cand], iou, max_det, agnostic)
        frame_boxes = self.to_frame(boxes[kept], fw, fh)
        return [self.det(cls[cand][k], score[cand][k], b) for k, b in zip(kept, frame_boxes)]

    def decode_end2end(self, o, conf, max_det, fw, fh):
        # Rows x1, y1, x2, y2, score, class in input pixels, kept in model order.
        rows = [r for r in o if float(r[4]) > conf][:max_det]
        if not rows:
            return []
        boxes = self.to_frame(np.array([r[:4] for r in rows]), fw, fh)
        return [self.det(int(r[5]), r[4], b) for r, b in zip(rows, boxes)]

    def ssd_outputs(self, out):
        names = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
        if all(n in out for n in names):
            return [out[n] for n in names]
        # By shape: [1, K, 4], two [1, K], [1]. The document does not say which
        # [1, K] is which; the classes are the one holding whole numbers only.
        boxes = [v for v in out.values() if v.ndim == 3 and v.shape[0] == 1 and v.shape[2] == 4]
        pairs = [v for v in out.values() if v.ndim == 2 and v.shape[0] == 1]
        nums = [v for v in out.values() if v.shape == (1,)]
        if len(boxes) != 1 or len(pairs) != 2 or len(nums) != 1:
            raise Refused("ssd outputs are neither named nor shaped [1,K,4], [1,K] x2, [1]")
        whole = [bool(np.all(v == np.round(v))) for v in pairs]
        if whole.count(True) != 1:
            raise Refused("ssd: cannot tell detection_scores from detection_classes by shape")
        classes = pairs[whole.index(True)]
        scores = pairs[whole.index(False)]
        return boxes[0], scores, classes, nums[0]

    def decode_ssd(self, out, conf, fw, fh):
        boxes, scores, classes, num = self.ssd_outputs(out)
        n = int(num.reshape(-1)[0])
        offset = int(self.manifest.get("class_offset", 0))
        rows = [k for k in range(min(n, scores.shape[1])) if float(scores[0, k]) > conf]
        if not rows:
            return []
        yxyx = boxes[0, rows].astype(np.float64)
        xyxy = yxyx[:, [1, 0, 3, 2]]              # ymin, xmin, ymax, xmax -> x1, y1, x2, y2
        frame_boxes = self.to_frame(xyxy, fw, fh, normalised=True)
        return [self.det(int(classes[0, k]) - offset, scores[0, k], b) for k, b in zip(rows, frame_boxes)]

    def decode_s1(self, out, conf, fw, fh):
        boxes, scores, classes = out["detected_boxes"][0], out["detected_scores"][0], out["detected_classes"][0]
        rows = [k for k in range(len(scores)) if float(scores[k]) > conf]
        if not rows:
            return []
        frame_boxes = self.to_frame(boxes[rows], fw, fh, normalised=True)
        return [self.det(int(classes[k]), scores[k], b) for k, b in zip(rows, frame_boxes)]

    def decode_classify(self, v):
        v = v.astype(np.float64)
        probs_already = bool(np.all((v >= 0) & (v <= 1)) and abs(v.sum() - 1) <= 1e-3)
        if probs_already:
            p = v
        else:
            e = np.exp(v - v.max())
            p = e / e.sum()
        # Top 5 by probability; ties: lower class id first.
        order = sorted(range(len(p)), key=lambda k: (-p[k], k))[:5]
        return [{"label": self.label(k), "class_id": k, "score": float(p[k])} for k in order]

    def decode_anomalib(self, out, fw, fh):
        score = float(np.asarray(out["pred_score"]).reshape(-1)[0])
        amap = np.asarray(out["anomaly_map"])
        if amap.ndim == 4:
            amap = amap[0, 0]
        elif amap.ndim == 3:
            amap = amap[0]
        else:
            raise Refused(f"anomaly_map has shape {amap.shape}, not [1,1,h,w] or [1,h,w]")
        if "pred_mask" in out:
            pm = np.asarray(out["pred_mask"]).reshape(amap.shape)
            mask = pm > 0.5           # bool masks compare as 0/1
        else:
            mask = amap > float(self.manifest.get("threshold", 0.5))
        h, w = amap.shape
        regions = []
        for comp in components8(mask):   # raster order of each component's first pixel
            ys, xs = comp
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            regions.append((float(amap[ys, xs].max()), box))
        # Score descending; equal scores keep the raster order (stable sort).
        regions.sort(key=lambda r: -r[0])
        dets = []
        for s, (x1, y1, x2, y2) in regions:
            b = np.array([[x1 * fw / w, y1 * fh / h, x2 * fw / w, y2 * fh / h]])
            b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, fw)
            b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, fh)
            dets.append({"label": "anomaly", "class_id": 0, "score": s, "box": [float(v) for v in b[0]]})
        return dets, score

    def decode_customvision(self, o, conf, iou, max_det, fw, fh):
        ch, gh, gw = o.shape
        c = ch // 5 - 5
        # [5 * (5 + C), gh, gw] -> [gh, gw, 5, 5 + C]: enumerated row, column, anchor.
        t = o.transpose(1, 2, 0).reshape(gh, gw, 5, 5 + c).astype(np.float64)
        jj = np.arange(gw, dtype=np.float64)[None, :, None]
        ii = np.arange(gh, dtype=np.float64)[:, None, None]
        x = (sigmoid(t[..., 0]) + jj) / gw
        y = (sigmoid(t[..., 1]) + ii) / gh
        w = np.exp(t[..., 2]) * CV_ANCHORS[:, 0] / gw
        h = np.exp(t[..., 3]) * CV_ANCHORS[:, 1] / gh
        boxes = np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], axis=-1).reshape(-1, 4)
        logits = t[..., 5:]
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = (e / e.sum(axis=-1, keepdims=True)) * sigmoid(t[..., 4])[..., None]
        probs = probs.reshape(-1, c).copy()

        # Custom Vision's own sample: take the best remaining (box, class) until
        # it falls below conf; zero that class on it and on every box overlapping it.
        kept = []
        max_probs = probs.max(axis=1)
        while len(kept) < max_det:
            i = int(np.argmax(max_probs))          # lowest index on a tie
            if max_probs[i] < conf:
                break
            k = int(np.argmax(probs[i]))
            kept.append((i, k, float(max_probs[i])))
            overlapping = iou_one_to_many(boxes[i], boxes) > iou
            overlapping[i] = True
            probs[overlapping, k] = 0
            max_probs[overlapping] = probs[overlapping].max(axis=1)
        if not kept:
            return []
        frame_boxes = self.to_frame(boxes[[i for i, _, _ in kept]], fw, fh, normalised=True)
        return [self.det(k, s, b) for (_, k, s), b in zip(kept, frame_boxes)]


# --------------------------------------------------------------------------
# Helpers

def letterbox(rgb, in_w, in_h, pad_value):
    """Ultralytics LetterBox(auto=False, scaleup=True, center=True)."""
    fh, fw = rgb.shape[:2]
    r = min(in_h / fh, in_w / fw)
    new_w, new_h = round(fw * r), round(fh * r)   # Python round: halves to even
    resized = rgb if (new_w, new_h) == (fw, fh) else \
        cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (in_w - new_w) / 2, (in_h - new_h) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    canvas = np.full((in_h, in_w, 3), pad_value, dtype=np.uint8)
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def iou_one_to_many(box, boxes):
    """IoU without +1: inter / (area_a + area_b - inter)."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (box[2] - box[0]) * (box[3] - box[1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area_a + area_b - inter)   # 0/0 is NaN: never "> iou", so kept


def nms(boxes, scores, classes, iou, max_det, agnostic=False):
    """Greedy NMS as torchvision: indices into boxes, best first.

    Stable sort by score descending (equal scores keep anchor order); a box is
    dropped when its IoU with a kept box of the same class (any class when
    agnostic) is greater than iou; at most max_det kept.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    kept = []
    for i in order:
        if len(kept) >= max_det:
            break
        rivals = [k for k in kept if agnostic or classes[k] == classes[i]]
        if rivals and np.any(iou_one_to_many(boxes[i], boxes[rivals]) > iou):
            continue
        kept.append(int(i))
    return kept


def components8(mask):
    """8-connected components of a bool mask, each as (ys, xs) arrays, in the
    raster order of each component's first pixel (top row first, then left)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):      # np.nonzero is raster order
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, ys, xs = [(y0, x0)], [], []
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        comps.append((np.array(ys), np.array(xs)))
    return comps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--decoder", choices=DECODERS)
    ap.add_argument("--conf", type=float)
    ap.add_argument("--iou", type=float)
    ap.add_argument("--max-det", type=int)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args(argv)
    try:
        model = Model(args.model, args.decoder)
        for path in args.images:
            res = model.run(path, args.conf, args.iou, args.max_det)
            # json writes floats with repr: the shortest text that reads back exactly.
            print(json.dumps(res), flush=True)
    except Refused as e:
        print(f"refused: {args.model}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
