#!/usr/bin/env python3
"""The plain Python pipeline Vigil is measured against: one camera, one process.

OpenCV capture -> letterbox (cv2.resize, as Ultralytics does) -> onnxruntime
-> YOLOv8 decode + NMS (cv2.dnn.NMSBoxes) -> JSON over MQTT (paho, QoS 0),
every frame in turn, as fast as it goes. It is what a competent engineer writes
in an afternoon, and what bench/pipeline.py compares Vigil with.

    reference_pipeline.py --video clip.avi --model yolov8n.onnx --threads 2 \
        --broker 127.0.0.1:1883 --topic bench/ref/0 [--frames 300]

Prints one JSON line: frames, wall time, CPU time and peak RSS of this process.
Each message carries `captured_ns` (time.monotonic_ns right after the frame
was read) and `published_ns`, for capture-to-publish latency.
"""

import argparse
import json
import resource
import time

import cv2
import numpy as np
import onnxruntime as ort
import paho.mqtt.client as mqtt


def letterbox(img, size):
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (size - nw) / 2, (size - nh) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return img, r, left, top


def decode(out, r, left, top, conf, iou):
    p = out[0].T  # [N, 4 + C]
    scores = p[:, 4:]
    cls = scores.argmax(1)
    best = scores[np.arange(len(p)), cls]
    keep = best > conf
    p, cls, best = p[keep], cls[keep], best[keep]
    xywh = p[:, :4].copy()
    xywh[:, 0] -= xywh[:, 2] / 2
    xywh[:, 1] -= xywh[:, 3] / 2
    idx = cv2.dnn.NMSBoxes(xywh.tolist(), best.tolist(), conf, iou) if len(p) else []
    dets = []
    for i in np.array(idx).reshape(-1):
        x, y, w, h = xywh[i]
        dets.append({
            "label": str(int(cls[i])),
            "score": round(float(best[i]), 4),
            "box": [round(float((x - left) / r), 1), round(float((y - top) / r), 1),
                    round(float((x + w - left) / r), 1), round(float((y + h - top) / r), 1)],
        })
    return dets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--broker", default="127.0.0.1:1883")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--frames", type=int, default=0, help="stop after this many (0: the whole video)")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.7)
    ap.add_argument("--realtime", action="store_true",
                    help="read frames at the video's own rate, as from a live camera")
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    size = inp.shape[2]

    host, port = a.broker.split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(host, int(port))
    client.loop_start()

    cap = cv2.VideoCapture(a.video)
    period = 1.0 / (cap.get(cv2.CAP_PROP_FPS) or 30.0)
    n = 0
    t0 = time.monotonic()
    t10 = None
    while a.frames == 0 or n < a.frames:
        if a.realtime:
            # A live camera hands out frame n at t0 + n * period; one that
            # is late (inference slower than the camera) is read at once.
            due = t0 + n * period
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
        read_at = time.monotonic_ns()
        ok, frame = cap.read()
        if not ok:
            break
        if n == 10:
            t10 = time.monotonic()
        captured = time.monotonic_ns()
        if a.realtime:
            # Captured when the camera would have handed the frame out
            # decoded (its due time plus the decoding), as Vigil stamps a
            # frame when it leaves the decoder. A late loop reads frame n
            # long after that: stamping the read would hide the wait, and
            # the loop falling further behind, from its latency.
            captured = int(due * 1e9) + (captured - read_at)
        img, r, left, top = letterbox(frame, size)
        x = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)[None] / 255.0
        out = sess.run(None, {inp.name: x})[0]
        dets = decode(out, r, left, top, a.conf, a.iou)
        msg = {"frame": n, "detections": dets, "captured_ns": captured, "published_ns": time.monotonic_ns()}
        client.publish(a.topic, json.dumps(msg), qos=0)
        n += 1
    end = time.monotonic()
    wall = end - t0
    client.loop_stop()
    client.disconnect()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "frames": n,
        "wall_s": wall,
        # from the 10th frame on, as Vigil's throughput is taken (no model warm-up)
        "steady_fps": (n - 10) / (end - t10) if t10 and n > 10 else n / wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "peak_rss_mib": ru.ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
