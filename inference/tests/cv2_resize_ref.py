"""Reference for inference/tests/parity.rs: resizes noise images with
cv2.resize(INTER_LINEAR), the call Ultralytics' letterbox makes.
Writes case_N.src (raw RGB), case_N.dst and cases.txt (sw sh dw dh per line)."""
import os
import sys

import cv2
import numpy as np

CASES = [
    (640, 480, 427, 320), (1920, 1080, 640, 360), (1280, 720, 640, 360),
    (320, 240, 640, 480), (1000, 750, 640, 480), (641, 479, 213, 160),
    (37, 23, 81, 50), (800, 600, 333, 250), (1280, 960, 640, 480), (99, 101, 100, 100),
    (9, 7, 4, 3), (5, 5, 2, 9),
]
out = sys.argv[1]
rng = np.random.default_rng(7)
with open(os.path.join(out, "cases.txt"), "w") as f:
    for i, (sw, sh, dw, dh) in enumerate(CASES):
        src = rng.integers(0, 256, size=(sh, sw, 3), dtype=np.uint8)
        dst = cv2.resize(src, (dw, dh), interpolation=cv2.INTER_LINEAR)
        src.tofile(os.path.join(out, f"case_{i}.src"))
        dst.tofile(os.path.join(out, f"case_{i}.dst"))
        f.write(f"{sw} {sh} {dw} {dh}\n")
