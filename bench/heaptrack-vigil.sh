#!/usr/bin/env bash
# Runs Vigil under heaptrack with Vigil keeping its own pid, so the soak's
# samples and signals still reach it:
#
#   .deps/venv/bin/python bench/soak.py --vigil bench/heaptrack-vigil.sh \
#       --rtsp-server target/release/vigil-rtsp-test-server --model models/ball/ball.onnx
#
# The profile goes to $HEAPTRACK_OUT (default /tmp/vigil-heaptrack.zst); read it
# with `heaptrack_print -f FILE -M massif.out` (heap in use over time) or
# heaptrack_gui. Needs Debian's heaptrack package.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x /usr/lib/heaptrack/libexec/heaptrack_interpret ] || { echo "heaptrack-vigil: apt-get install heaptrack zstd" >&2; exit 1; }
OUT="${HEAPTRACK_OUT:-/tmp/vigil-heaptrack.zst}"
pipe="$(mktemp -u /tmp/vigil-heaptrack.XXXXXX)"
mkfifo "$pipe"
/usr/lib/heaptrack/libexec/heaptrack_interpret < "$pipe" | zstd -q > "$OUT" &
exec env LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so DUMP_HEAPTRACK_OUTPUT="$pipe" \
    "${VIGIL_BIN:-$ROOT/target/release/vigil}" "$@"
