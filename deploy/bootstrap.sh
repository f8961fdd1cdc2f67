#!/usr/bin/env bash
# Installs everything Vigil needs on a Debian 12 machine, idempotently.
#
#   sudo deploy/bootstrap.sh          # or as root
#
# What it does, and why each step exists:
#   1. apt packages: GStreamer (dev headers for the `camera` crate, plugins for
#      every source Vigil supports, the RTSP server library the tests use),
#      Mosquitto (the broker the demo and the tests run), build tools.
#   2. Rust, through rustup, only when no cargo is on PATH (Debian's rustc is too old).
#   3. The ONNX Runtime shared library, taken from the PyPI `onnxruntime` wheel
#      (the only distribution channel reachable from an offline edge network
#      with a PyPI mirror), unpacked into .deps/onnxruntime/ in this checkout.
#      `.cargo/config.toml` bakes that path into every binary built here, so
#      nobody has to set ORT_DYLIB_PATH.
#   4. A Python virtualenv in .deps/venv with the light tools the fixture
#      scripts and parity tests use (onnx, numpy, onnxruntime, OpenCV),
#      schemathesis, which fuzzes the API from its OpenAPI document, and
#      Playwright for the web page test. Playwright's PyPI wheel carries its
#      own driver, so nothing comes from npm; it drives Debian's Chromium
#      (apt, step 1) and downloads no browser of its own.
#   5. cargo-fuzz, which fuzz/run.sh drives (libFuzzer on the output decoders,
#      built with its own C++ sources by build-essential's g++); stable Rust
#      runs it with RUSTC_BOOTSTRAP=1. About 2 minutes to build once.
#   6. cargo-deny, which .ci/run uses to check the licences, bans and sources
#      of every dependency (deny.toml). About 4 minutes to build once.
#
# Re-running it is fast: every step first checks whether its result is present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
ORT_VERSION="1.31.1"
ORT_DIR="$DEPS/onnxruntime"
VENV="$DEPS/venv"

log() { printf '\033[1;34m[bootstrap]\033[0m %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then SUDO="sudo"; fi
fi

APT_PACKAGES=(
    ca-certificates curl unzip build-essential pkg-config
    libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp gstreamer1.0-tools
    libgstrtspserver-1.0-dev
    mosquitto mosquitto-clients
    python3 python3-venv python3-pip
    openssl chromium fonts-dejavu-core
    # The container image and package tests (deploy/docker, deploy/deb); the
    # Docker Engine itself is the machine's own.
    debootstrap docker-compose
)

apt_install() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "apt packages present"
        return
    fi
    log "installing apt packages: ${missing[*]}"
    # Another process (unattended-upgrades, a parallel bootstrap) may hold the
    # dpkg lock for a moment: retry rather than fail the whole install.
    local try
    for try in 1 2 3 4 5; do
        if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
            return
        fi
        log "apt-get failed (try $try), retrying in 5 s"
        sleep 5
    done
    log "apt-get failed; see the messages above"
    exit 1
}

rust_install() {
    if command -v cargo >/dev/null; then
        log "rust present: $(cargo --version)"
        return
    fi
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        log "rust present in ~/.cargo/bin (add it to PATH)"
        return
    fi
    log "installing rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
}

rust_components() {
    # CI runs rustfmt and clippy; a minimal toolchain may lack them.
    command -v rustup >/dev/null || return 0
    local installed
    installed="$(rustup component list --installed 2>/dev/null || true)"
    for c in rustfmt clippy; do
        if ! grep -q "^$c" <<<"$installed"; then
            log "adding rust component $c"
            rustup component add "$c"
        fi
    done
}

python_cmd() {
    # Prefer the interpreter on PATH (pyenv on developer machines), else Debian's.
    command -v python3
}

venv_install() {
    local stamp="$VENV/.vigil-requirements"
    local req="$ROOT/deploy/requirements-fixtures.txt"
    if [ -f "$stamp" ] && cmp -s "$stamp" "$req"; then
        log "python tools present in $VENV"
        return
    fi
    log "creating python tools venv in $VENV"
    "$(python_cmd)" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
}

fuzz_install() {
    if command -v cargo-fuzz >/dev/null; then
        log "cargo-fuzz present"
        return
    fi
    log "installing cargo-fuzz (for fuzz/run.sh)"
    cargo install --locked --version 0.13.2 cargo-fuzz
}

deny_install() {
    if command -v cargo-deny >/dev/null; then
        log "cargo-deny present"
        return
    fi
    log "installing cargo-deny (licences, bans and sources of every dependency, in .ci/run)"
    cargo install --locked --version 0.20.2 cargo-deny
}

ort_install() {
    local lib="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
    if [ -f "$lib" ]; then
        log "onnxruntime $ORT_VERSION present in $ORT_DIR"
    else
        log "fetching onnxruntime $ORT_VERSION shared library from the PyPI wheel"
        local tmp
        tmp="$(mktemp -d)"
        # The wheel is the same for every CPython version as far as the C
        # library is concerned; pin the platform so any local python can fetch it.
        "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps \
            --only-binary=:all: --platform "manylinux_2_28_$(uname -m)" --python-version 3.11 \
            "onnxruntime==$ORT_VERSION" -d "$tmp"
        mkdir -p "$ORT_DIR"
        unzip -q -j -o "$tmp"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$ORT_DIR"
        rm -rf "$tmp"
    fi
    ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/libonnxruntime.so.1"
    ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/libonnxruntime.so"
}

# A full disk otherwise shows up as an obscure rustc or linker error halfway
# through a build. Measured on a clean checkout: target/ is about 3.2 GiB
# after the test suite and 1.2 GiB after the demo's release build.
disk_check() {
    local target="${CARGO_TARGET_DIR:-$ROOT/target}" free_kib
    mkdir -p "$target"
    free_kib="$(df -Pk "$target" | awk 'NR == 2 { print $4 }')"
    if [ -n "$free_kib" ] && [ "$free_kib" -lt $((5 * 1024 * 1024)) ]; then
        log "WARNING: only $((free_kib / 1024)) MiB free for $target; building and testing Vigil needs about 5 GiB." \
            "Free some space (an old target/ can go: cargo clean) if the build fails with 'No space left on device'."
    fi
}

disk_check
apt_install
rust_install
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
rust_components
fuzz_install
deny_install
venv_install
ort_install
if ! docker info >/dev/null 2>&1; then
    log "warning: no Docker Engine answers; the container image and package tests need one"
fi
log "done"
