#!/usr/bin/env bash
# Fuzzes every target (the decoders, the config check, the MQTT command
# parser) for a while each; exits non-zero at the first finding.
#   fuzz/run.sh [SECONDS_PER_TARGET]   (default 20)
# A finding is kept under fuzz/artifacts/<target>/ and can be replayed with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -O <target> fuzz/artifacts/<target>/<file>
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Stable Rust runs it with
# RUSTC_BOOTSTRAP=1, which lets it use the sanitizer flags libFuzzer needs.
set -euo pipefail
secs="${1:-20}"
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 2; }
cargo fuzz build -O
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    echo "== $target: ${secs}s"
    # Per input: at most 2 s and 1 GiB (a decoder that loops or allocates
    # by a bogus dimension is a finding, not a slow run).
    if ! cargo fuzz run -O "$target" -- -max_total_time="$secs" -timeout=2 -rss_limit_mb=1024 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz/$target found a failure: see fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" || true
done
