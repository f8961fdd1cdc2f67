#!/usr/bin/env bash
# Vigil against bare session.run and a plain Python pipeline, one command:
#
#   bench/pipeline.sh [--model-size n|s] [--repeats N] [--frames N] [--cases one,latency,four,still,four-fps,live30]
#
# --model-size s runs YOLOv8s (three times YOLOv8n's compute) instead of
# YOLOv8n: the same pipeline around a heavier model.
#
# Builds Vigil in release, rebuilds the YOLOv8n test model from its committed
# skeleton (models/yolo) and a batch-taking copy (models/make_batched.py),
# makes the clips, then runs bench/pipeline.py: one camera, live latency, four
# cameras with a model swap mid-run, a still scene with motion gating on and
# off. Prints a table; the JSON goes to
# .vigil/bench/pipeline-yolov8<size>.json, and both, with the host's facts,
# to a dated pair of files in bench/results/ (commit them: they are the
# benchmark's history, see docs/performance.md). Takes
# about thirteen minutes on two cores. Nothing is left running afterwards.
set -euo pipefail
SIZE=n
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --model-size) SIZE="${2:?--model-size needs n or s}"; shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
case "$SIZE" in n|s) ;; *) echo "--model-size: n or s, not $SIZE" >&2; exit 2 ;; esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/deploy/bootstrap.sh" >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cd "$ROOT"
cargo build --release --locked -p vigil --bins 2>&1 | tail -1

PY="$ROOT/.deps/venv/bin/python"
WORK="$ROOT/.vigil/bench"
mkdir -p "$WORK"
MODEL="$WORK/yolov8$SIZE.onnx"
BATCHED="$WORK/yolov8$SIZE-batch.onnx"
SKELETON="$ROOT/models/yolo/yolov8$SIZE.skeleton.onnx"
if [ ! -f "$MODEL" ] || [ "$SKELETON" -nt "$MODEL" ] || [ models/yolo/refill_weights.py -nt "$MODEL" ]; then
    "$PY" models/yolo/refill_weights.py "$SKELETON" "$MODEL"
fi
if [ ! -f "$BATCHED" ] || [ "$MODEL" -nt "$BATCHED" ]; then
    "$PY" models/make_batched.py "$MODEL" "$BATCHED"
fi
exec "$PY" bench/pipeline.py --vigil "$ROOT/target/release/vigil" --model "$MODEL" \
    --batched-model "$BATCHED" --ball-model "$ROOT/models/ball/ball.onnx" \
    --work "$WORK" --out "$WORK/pipeline-yolov8$SIZE.json" "${ARGS[@]}"
