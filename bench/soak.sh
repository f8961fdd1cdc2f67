#!/usr/bin/env bash
# A soak benchmark (not a test): does anything in Vigil grow over a long run
# while cameras drop and return, the broker flaps and web clients come and go?
#
#   bench/soak.sh [--minutes 30] [--warmup-minutes M] [--interval-s 10] [--out DIR]
#                 [--clients 3] [--seed 1]
#
# Builds Vigil and its RTSP test server in release, then runs bench/soak.py:
# two cameras (one RTSP, killed or stalled now and then; one test pattern),
# the ball model, events and snapshots, against a Mosquitto on a free
# loopback port that is killed or frozen now and then, with a few web clients
# (MJPEG, SSE, snapshots, /metrics, /healthz). Samples Vigil's RSS, open fds,
# threads and outbox depth every --interval-s and reports their slope per hour
# after the warm-up (default: the first sixth of the run). Output, default
# .vigil/soak/<date-time>/: samples.csv, disruptions.csv, summary.md,
# summary.json and the logs. Exits non-zero when a check fails. Everything it
# starts is stopped when it ends, also on Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/deploy/bootstrap.sh" >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cd "$ROOT"
cargo build --release --locked -p vigil --bins 2>&1 | tail -1
exec "$ROOT/.deps/venv/bin/python" "$ROOT/bench/soak.py" \
    --vigil "$ROOT/target/release/vigil" \
    --rtsp-server "$ROOT/target/release/vigil-rtsp-test-server" \
    --model "$ROOT/models/ball/ball.onnx" "$@"
