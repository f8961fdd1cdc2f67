#!/usr/bin/env bash
# Event-side benchmark, one command:
#
#   bench/events.sh
#
# Builds Vigil in release, starts a Mosquitto on a free loopback port, and
# runs `vigil bench-events`: tracker + zones + lines + rules per frame with 50
# objects, outbox writes per second, delivery to the broker (burst
# throughput) and capture-to-publish latency at a steady 500 events/s.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/deploy/bootstrap.sh" >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cd "$ROOT"
cargo build --release --locked -p vigil 2>&1 | tail -1

WORK="$(mktemp -d)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" > "$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$ROOT/target/release/vigil" bench-events --mqtt "mqtt://127.0.0.1:$PORT" "$@"
