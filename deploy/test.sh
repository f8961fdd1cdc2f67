#!/usr/bin/env bash
# The whole test suite, one command on a fresh Debian 12 machine (as root, or
# with sudo):
#
#   deploy/test.sh
#
# Installs what is missing (deploy/bootstrap.sh), then runs every test in the
# workspace: unit tests, parity tests against Python references (cv2 from
# .deps/venv), and the end-to-end tests, which start their own Mosquitto
# brokers on free loopback ports and the real `vigil` binary. Extra arguments
# go to `cargo test` (e.g. `deploy/test.sh -p vigil-inference`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/deploy/bootstrap.sh"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cd "$ROOT"
if [ $# -eq 0 ]; then
    set -- --workspace
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked "$@" 2>&1 | tee "$log" || status=$?
# cargo prints one "test result:" line per test binary (the last is usually
# the doc tests, with 0); close with the totals across all of them.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
