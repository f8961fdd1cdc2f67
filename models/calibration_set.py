#!/usr/bin/env python3
"""Vigil's calibration sets: frames from one camera, for quantizing a model
(models/quantize.py) on the pictures it will actually see.

A calibration set is a folder:

    yard-east-calib/
      manifest.json
      000000.jpg  000001.jpg  ...        (JPEG or PNG, the camera's own size)

manifest.json (docs/models.md, "Calibration sets", is the reference):

    {
      "format": "vigil-calibration-set",
      "version": 1,
      "camera": "yard-east",
      "created": "2025-12-04T19:10:00Z",
      "source": "free text: where the frames came from",
      "frames": [
        {"file": "000000.jpg", "captured": "2025-12-04T18:00:00.000Z",
         "width": 1280, "height": 720, "reason": "interval"},
        ...
      ]
    }

Frames are listed in capture order. `reason` says why a frame was chosen:
`interval` (evenly spaced over the collection window), `motion` (the motion
gate saw change), `detections` (the active model found objects), `uncertain`
(the active model's best score sat near its threshold), `manual` (picked by
a person). Other reasons are accepted and reported.

Usage:
    calibration_set.py check DIR
        Validates a set (every frame readable, sizes as stated) and summarises it.
    calibration_set.py synth OUT_DIR --camera NAME [--frames N] [--seed S] IMAGE...
        Makes a set from still photos standing in for a camera: each frame is a
        window on one photo (a slow pan and zoom, as a PTZ camera's patrol),
        with a gain change (time of day), sensor noise and JPEG at quality 92.
        Deterministic for the same inputs and seed. The test suite and the
        measurements in docs/models.md use it on tests/data/photos.

Needs numpy and opencv (the project's light venv, .deps/venv).
"""
import argparse
import json
import os
import sys
from datetime import datetime, timedelta, timezone

import cv2
import numpy as np

FORMAT = "vigil-calibration-set"
VERSION = 1
REASONS = ("interval", "motion", "detections", "uncertain", "manual")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class BadSet(Exception):
    """A calibration set that cannot be used; the message names the field and the fix."""


def read_set(folder):
    """Reads and checks `folder/manifest.json`. Returns the manifest with each
    frame's absolute `path` added, frames in the listed (capture) order."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        raise BadSet(f"{folder}: no manifest.json; a calibration set is a folder of frames "
                     f"with a manifest.json (see docs/models.md, \"Calibration sets\")")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise BadSet(f"{path}: not readable JSON ({e})") from None
    if not isinstance(m, dict):
        raise BadSet(f"{path}: expected a JSON object at the top")
    if m.get("format") != FORMAT:
        raise BadSet(f"{path}: `format` is {m.get('format')!r}, expected {FORMAT!r}")
    if m.get("version") != VERSION:
        raise BadSet(f"{path}: `version` is {m.get('version')!r}; this tool reads version {VERSION}")
    if not isinstance(m.get("camera"), str) or not m["camera"]:
        raise BadSet(f"{path}: `camera` must name the camera the frames came from")
    frames = m.get("frames")
    if not isinstance(frames, list) or not frames:
        raise BadSet(f"{path}: `frames` must be a non-empty list of "
                     f"{{\"file\", \"width\", \"height\", \"captured\", \"reason\"}}")
    seen = set()
    for i, fr in enumerate(frames):
        where = f"{path}: frames[{i}]"
        if not isinstance(fr, dict):
            raise BadSet(f"{where}: expected an object")
        name = fr.get("file")
        if not isinstance(name, str) or not name or os.path.basename(name) != name:
            raise BadSet(f"{where}.file must be a file name inside the set's folder, got {name!r}")
        if not name.lower().endswith(IMAGE_EXTS):
            raise BadSet(f"{where}.file {name!r}: frames are JPEG or PNG ({', '.join(IMAGE_EXTS)})")
        if name in seen:
            raise BadSet(f"{where}.file {name!r} is listed twice")
        seen.add(name)
        for key in ("width", "height"):
            v = fr.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise BadSet(f"{where}.{key} must be a positive whole number of pixels, got {v!r}")
        captured = fr.get("captured")
        if captured is not None:
            try:
                datetime.fromisoformat(str(captured).replace("Z", "+00:00"))
            except ValueError:
                raise BadSet(f"{where}.captured {captured!r} is not an RFC 3339 time") from None
        reason = fr.get("reason")
        if not isinstance(reason, str) or not reason:
            raise BadSet(f"{where}.reason must say why the frame was chosen (one of {', '.join(REASONS)})")
        fr["path"] = os.path.join(os.path.abspath(folder), name)
        if not os.path.isfile(fr["path"]):
            raise BadSet(f"{where}: {fr['path']} is missing")
    return m


def load_rgb(frame):
    """A frame of a set as an RGB uint8 array, read the way Vigil reads stills
    (cv2.imread, as the reference does), checked against the manifest's size."""
    bgr = cv2.imread(frame["path"], cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadSet(f"{frame['path']}: not a readable JPEG or PNG")
    h, w = bgr.shape[:2]
    if (w, h) != (frame["width"], frame["height"]):
        raise BadSet(f"{frame['path']}: is {w}x{h} but manifest.json says "
                     f"{frame['width']}x{frame['height']}; fix the manifest or the file")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_manifest(folder, camera, frames, source, created):
    m = {"format": FORMAT, "version": VERSION, "camera": camera, "created": created,
         "source": source, "frames": frames}
    with open(os.path.join(folder, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(m, f, indent=1)
        f.write("\n")


def synth(out_dir, camera, images, n_frames, seed):
    """Frames of a pretend camera patrolling `images` (see the module doc)."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = []
    for p in images:
        bgr = cv2.imread(p, cv2.IMREAD_COLOR)
        if bgr is None:
            raise BadSet(f"{p}: not a readable image")
        photos.append((os.path.basename(p), bgr))
    # A fixed clock, so that the same inputs give the same manifest.
    t0 = datetime(2025, 1, 6, 6, 0, 0, tzinfo=timezone.utc)
    frames = []
    for i in range(n_frames):
        name, src = photos[i % len(photos)]
        h, w = src.shape[:2]
        # Pan and zoom: a window of 70-100 % of the photo, anywhere inside it.
        zoom = rng.uniform(0.7, 1.0)
        cw, ch = max(int(w * zoom), 32), max(int(h * zoom), 32)
        x0 = int(rng.integers(0, w - cw + 1))
        y0 = int(rng.integers(0, h - ch + 1))
        crop = src[y0:y0 + ch, x0:x0 + cw].astype(np.float32)
        # Gain (light through the day) and sensor noise.
        gain = rng.uniform(0.75, 1.2)
        noise = rng.normal(0.0, 2.0, crop.shape).astype(np.float32)
        img = np.clip(crop * gain + noise, 0, 255).astype(np.uint8)
        file = f"{i:06d}.jpg"
        ok = cv2.imwrite(os.path.join(out_dir, file), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise BadSet(f"cannot write {os.path.join(out_dir, file)}")
        captured = (t0 + timedelta(minutes=30 * i)).isoformat().replace("+00:00", "Z")
        frames.append({"file": file, "captured": captured, "width": cw, "height": ch,
                       "reason": "interval", "note": f"{name} window {x0},{y0} {cw}x{ch} gain {gain:.2f}"})
    source = ("synthetic: models/calibration_set.py synth from " + ", ".join(n for n, _ in photos)
              + f" (seed {seed})")
    write_manifest(out_dir, camera, frames, source, t0.isoformat().replace("+00:00", "Z"))
    return frames


def summary(m):
    frames = m["frames"]
    reasons = {}
    for fr in frames:
        reasons[fr["reason"]] = reasons.get(fr["reason"], 0) + 1
    sizes = sorted({(fr["width"], fr["height"]) for fr in frames})
    times = [fr["captured"] for fr in frames if fr.get("captured")]
    span = f", {times[0]} .. {times[-1]}" if times else ""
    unknown = [r for r in reasons if r not in REASONS]
    return (f"camera {m['camera']}: {len(frames)} frames{span}; sizes "
            + ", ".join(f"{w}x{h}" for w, h in sizes[:4]) + (" ..." if len(sizes) > 4 else "")
            + "; reasons " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
            + (f" (not in the documented list: {', '.join(unknown)})" if unknown else ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="validate a calibration set")
    c.add_argument("dir")
    s = sub.add_parser("synth", help="make a set from still photos standing in for a camera")
    s.add_argument("out_dir")
    s.add_argument("--camera", required=True)
    s.add_argument("--frames", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("images", nargs="+")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "check":
            m = read_set(args.dir)
            for fr in m["frames"]:
                load_rgb(fr)
            print(summary(m))
        else:
            if args.frames < 1:
                raise BadSet("--frames must be at least 1")
            synth(args.out_dir, args.camera, args.images, args.frames, args.seed)
            print(summary(read_set(args.out_dir)))
    except BadSet as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
