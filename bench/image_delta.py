"""Compares two `docker save` archives layer by layer: which layers of the
second image the first does not have, and their size as stored and gzipped
(what a registry sends). Used by bench/image_delta.sh."""
import argparse
import gzip
import hashlib
import json
import os
import platform
import tarfile
import time


def layers(path):
    """[(diff id, size, gzip size)] of an image archive, bottom layer first."""
    out = []
    with tarfile.open(path) as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
        for name in manifest["Layers"]:
            member = t.getmember(name)
            digest, size = hashlib.sha256(), 0
            sink = _Counter()
            with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) as gz:
                f = t.extractfile(member)
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    gz.write(chunk)
            out.append(("sha256:" + digest.hexdigest(), size, sink.n))
    return out


class _Counter:
    n = 0

    def write(self, b):
        self.n += len(b)
        return len(b)

    def flush(self):
        pass


def mb(n):
    return f"{n / 1e6:.1f} MB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--build-seconds", nargs=2, type=int, default=[0, 0])
    ap.add_argument("--out")
    args = ap.parse_args()
    a, b = layers(args.a), layers(args.b)
    known = {d for d, _, _ in a}
    new = [(d, s, g) for d, s, g in b if d not in known]
    whole, whole_gz = sum(s for _, s, _ in b), sum(g for _, _, g in b)
    delta, delta_gz = sum(s for _, s, _ in new), sum(g for _, _, g in new)
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Container image: what a one-line code change re-ships",
        "",
        f"`bench/image_delta.sh` on {time.strftime('%Y-%m-%d')} at {args.commit} ({os.cpu_count()} cores, {cpu}):"
        " the image built from HEAD and from HEAD with one line of Rust changed"
        f" (builds took {args.build_seconds[0]} s and {args.build_seconds[1]} s).",
        "",
        "| | layers | as stored | gzipped (as a registry sends it) |",
        "|---|---|---|---|",
        f"| whole image | {len(b)} | {mb(whole)} | {mb(whole_gz)} |",
        f"| re-shipped for the change | {len(new)} | {mb(delta)} | {mb(delta_gz)} |",
        "",
        "Layers of the changed image, bottom first (`new`: not in the first image):",
        "",
        "| layer | as stored | gzipped | |",
        "|---|---|---|---|",
    ]
    for d, s, g in b:
        lines.append(f"| `{d[7:19]}` | {mb(s)} | {mb(g)} | {'new' if d not in known else ''} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
