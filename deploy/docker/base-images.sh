#!/usr/bin/env bash
# The two images deploy/docker/Dockerfile starts from, made locally when the
# Docker Engine does not have them (this project's machines reach no
# registry). Where `docker pull` works, the official images of the same
# names do the same job and this script is not needed.
#
#   deploy/docker/base-images.sh
#
#   debian:bookworm-slim  debootstrap --variant=minbase bookworm, from the
#                         machine's own apt mirror, imported with
#                         `docker import`;
#   rust:1.95-slim-bookworm  that base plus gcc, pip and the Rust toolchain
#                         this machine builds Vigil with (rustup's, copied
#                         in: Debian's rustc is too old for Vigil's crates).
#
# Idempotent: an image that is present is left alone.
set -euo pipefail

BASE=debian:bookworm-slim
RUST_VERSION=1.95.0
BUILDER="rust:${RUST_VERSION%.*}-slim-bookworm"

log() { printf '\033[1;34m[base-images]\033[0m %s\n' "$*"; }
have() { docker image inspect "$1" >/dev/null 2>&1; }

mirror() {
    # The machine's configured Debian mirror (deb822 or one-line sources).
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

work=""
cleanup() { if [ -n "$work" ]; then rm -rf "$work"; fi; }
trap cleanup EXIT

if have "$BASE"; then
    log "$BASE present"
else
    command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
    work=$(mktemp -d)
    m=$(mirror)
    log "debootstrap bookworm from $m"
    debootstrap --variant=minbase bookworm "$work/root" "$m" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log"; exit 1; }
    # What the official slim image also leaves out: apt's caches and lists,
    # man pages and docs (the copyright files stay).
    rm -rf "$work/root/var/cache/apt/"*.bin "$work/root/var/cache/apt/archives/"*.deb \
        "$work/root/var/lib/apt/lists/"* "$work/root/usr/share/man/"* \
        "$work/root/var/log/"*.log
    find "$work/root/usr/share/doc" -type f ! -name copyright -delete
    cat >"$work/root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
APT
    printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
        >"$work/root/etc/dpkg/dpkg.cfg.d/docker-slim"
    # A deb822 source for the same mirror as the host, like the official image.
    rm -f "$work/root/etc/apt/sources.list"
    cat >"$work/root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $m
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${m%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    tar -C "$work/root" -c . | docker import \
        -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - "$BASE" >/dev/null
    rm -rf "$work"; work=""
    log "$BASE imported ($(docker image inspect -f '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1/1e6}'))"
fi

if have "$BUILDER"; then
    log "$BUILDER present"
else
    toolchain="${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$RUST_VERSION-x86_64-unknown-linux-gnu"
    [ -d "$toolchain/bin" ] || toolchain="$(rustc +"$RUST_VERSION" --print sysroot 2>/dev/null || rustc --print sysroot)"
    [ -x "$toolchain/bin/cargo" ] || { echo "no Rust $RUST_VERSION toolchain found (run deploy/bootstrap.sh)" >&2; exit 1; }
    work=$(mktemp -d)
    log "$BUILDER from $BASE and $toolchain"
    mkdir -p "$work/ctx/rust"
    # Only what compiles: the binaries and the libraries (no docs, no sources).
    cp -a "$toolchain/bin" "$toolchain/lib" "$work/ctx/rust/"
    # Certificate authorities this machine trusts beyond Debian's (a site's
    # TLS-inspecting proxy, say): the build stage fetches crates and the
    # ONNX Runtime wheel through the same network. Only this builder image
    # gets them, never the runtime image.
    mkdir -p "$work/ctx/ca"
    cp /usr/local/share/ca-certificates/*.crt "$work/ctx/ca/" 2>/dev/null || true
    cat >"$work/ctx/Dockerfile" <<'DF'
FROM debian:bookworm-slim
RUN apt-get update -q && apt-get install -y -q --no-install-recommends \
        gcc libc6-dev pkg-config ca-certificates python3-pip unzip \
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:$PATH CARGO_HOME=/usr/local/cargo
DF
    docker build -q -t "$BUILDER" "$work/ctx" >/dev/null
    rm -rf "$work"; work=""
    log "$BUILDER built"
fi
