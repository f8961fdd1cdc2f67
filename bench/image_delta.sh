#!/usr/bin/env bash
# What an update of Vigil's code costs to ship as a container image: builds
# the image from HEAD and from a copy of HEAD with one line of Rust changed
# (the text of `vigil --help`), and reports the layers that differ, in bytes
# as stored and as a registry sends them (gzip), against the whole image.
#
#   bench/image_delta.sh [--out bench/results/<date>-<cpu>-image-delta.md]
#
# Two image builds: about 25 minutes on a 2-core machine. Leaves the images
# vigil:delta-a and vigil:delta-b behind (docker rmi them when done).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=""
[ "${1:-}" = "--out" ] && OUT="$2"
deploy/docker/base-images.sh
work="$(mktemp -d)"
trap 'git worktree remove --force "$work/b" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

git worktree add --detach "$work/b" HEAD >/dev/null
line='about = "Edge computer vision: cameras in, ONNX models, events out over MQTT"'
grep -qF "$line" "$work/b/app/src/main.rs" || { echo "image_delta: the line to change is gone from app/src/main.rs; pick another" >&2; exit 1; }
sed -i "s|$line|about = \"Edge computer vision: cameras in, ONNX models, events out over MQTT.\"|" "$work/b/app/src/main.rs"
[ "$(git -C "$work/b" diff --numstat | awk '{print $1+$2}')" = 2 ] || { echo "image_delta: expected a one-line change" >&2; exit 1; }

build() {
    local tag="$1" dir="$2" start
    start=$(date +%s)
    docker build -q -f "$dir/deploy/docker/Dockerfile" -t "$tag" "$dir" >/dev/null
    echo "$(( $(date +%s) - start ))"
}
echo "[image_delta] building vigil:delta-a from HEAD"
secs_a=$(build vigil:delta-a "$ROOT")
echo "[image_delta] building vigil:delta-b: HEAD with one line of Rust changed"
secs_b=$(build vigil:delta-b "$work/b")

docker save vigil:delta-a > "$work/a.tar"
docker save vigil:delta-b > "$work/b.tar"
"$ROOT/.deps/venv/bin/python" "$ROOT/bench/image_delta.py" "$work/a.tar" "$work/b.tar" \
    --commit "$(git rev-parse --short HEAD)" --build-seconds "$secs_a" "$secs_b" ${OUT:+--out "$OUT"}
