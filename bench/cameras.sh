#!/usr/bin/env bash
# Camera benchmark, one command:
#
#   bench/cameras.sh [seconds-per-camera]
#
# Builds Vigil in release, makes a 1080p H.264 clip, serves a live H.264 RTSP
# stream on loopback (vigil-rtsp-test-server), and runs `vigil bench-cameras`
# over a file, an RTSP camera and a test pattern: fps, decode+convert CPU per
# frame, capture-to-inference latency, then resident memory over 200 pipeline
# rebuilds. Prints a table; nothing is left running afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_CAMERA="${1:-10}"
"$ROOT/deploy/bootstrap.sh" >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cd "$ROOT"
cargo build --release --locked -p vigil --bins 2>&1 | tail -1

WORK="$ROOT/.vigil/bench"
mkdir -p "$WORK"
CLIP="$WORK/ball-1080p.mp4"
if [ ! -f "$CLIP" ]; then
    gst-launch-1.0 -q videotestsrc pattern=ball num-buffers=300 \
        ! video/x-raw,width=1920,height=1080,framerate=30/1 ! videoconvert \
        ! x264enc speed-preset=ultrafast key-int-max=30 ! mp4mux ! filesink location="$CLIP"
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
coproc RTSP { exec "$ROOT/target/release/vigil-rtsp-test-server" --port "$PORT" --fps 25 --width 1280 --height 720; }
trap 'kill $RTSP_PID 2>/dev/null || true' EXIT
read -r ready <&"${RTSP[0]}"
echo "# $ready"

cat > "$WORK/cameras.toml" <<TOML
[[cameras]]
name = "file-1080p"
source = "file://$CLIP"
[[cameras]]
name = "rtsp-720p"
source = "rtsp://127.0.0.1:$PORT/cam"
rtsp_transport = "tcp"
latency_ms = 0
[[cameras]]
name = "pattern-480p"
source = "test://ball?width=640&height=480&fps=30"
TOML

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# The soak rebuilds a whole demux + H.264 decoder pipeline each time.
"$ROOT/target/release/vigil" bench-cameras --config "$WORK/cameras.toml" --seconds "$SECONDS_PER_CAMERA" \
    --soak-source "launch:filesrc location=$CLIP ! qtdemux ! h264parse ! avdec_h264 ! identity eos-after=5"
