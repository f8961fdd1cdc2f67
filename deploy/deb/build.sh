#!/usr/bin/env bash
# The Debian package: vigil_<version>_amd64.deb, from the files of Vigil's
# container image (the same binary and ONNX Runtime library, built in a
# clean Debian), so build that first (deploy/docker/build.sh).
#
#   deploy/deb/build.sh [IMAGE] [OUT_DIR]     (defaults: vigil:local, target/deb)
#
# Layout: /usr/lib/vigil/{vigil,libonnxruntime.so*} (Vigil finds the library
# beside itself), /usr/bin/vigil, /etc/vigil/vigil.toml (a conffile),
# /usr/share/vigil/models/ball.onnx, the systemd unit, data in /var/lib/vigil
# (the unit's StateDirectory) for the `vigil` system user.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE="${1:-vigil:local}"
OUT="${2:-$ROOT/target/deb}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)"
ARCH="$(dpkg --print-architecture)"

stage="$(mktemp -d)"
container=""
cleanup() {
    rm -rf "$stage"
    if [ -n "$container" ]; then docker rm -f "$container" >/dev/null; fi
}
trap cleanup EXIT

pkg="$stage/vigil"
mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/etc/vigil" "$pkg/lib/systemd/system" \
    "$pkg/usr/share/vigil/models" "$pkg/usr/share/doc/vigil"
container="$(docker create "$IMAGE")"
docker cp "$container:/usr/lib/vigil" "$pkg/usr/lib/vigil" 2>/dev/null \
    || { mkdir -p "$pkg/usr/lib" && docker cp "$container:/usr/lib/vigil" "$pkg/usr/lib/"; }
ln -s ../lib/vigil/vigil "$pkg/usr/bin/vigil"
install -m 0644 "$ROOT/deploy/deb/vigil.toml" "$pkg/etc/vigil/vigil.toml"
install -m 0644 "$ROOT/deploy/deb/vigil.service" "$pkg/lib/systemd/system/vigil.service"
install -m 0644 "$ROOT/models/ball/ball.onnx" "$pkg/usr/share/vigil/models/ball.onnx"
install -m 0644 "$ROOT/vigil.example.toml" "$pkg/usr/share/doc/vigil/vigil.example.toml"
printf 'Vigil is licensed under the Apache License 2.0; ONNX Runtime under the MIT License.\n' \
    > "$pkg/usr/share/doc/vigil/copyright"

size_kb="$(du -sk "$pkg" | cut -f1)"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: vigil
Version: $VERSION
Architecture: $ARCH
Maintainer: Vigil maintainers <maintainers@vigil.invalid>
Installed-Size: $size_kb
Section: video
Priority: optional
Depends: libc6 (>= 2.36), libgcc-s1, libstdc++6, libgstreamer1.0-0 (>= 1.22), libgstreamer-plugins-base1.0-0 (>= 1.22),
 gstreamer1.0-plugins-base, gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad, gstreamer1.0-libav,
 ca-certificates, adduser
Homepage: https://github.com/vigil-edge/vigil
Description: edge computer-vision appliance
 Reads cameras through GStreamer, runs ONNX models with ONNX Runtime, turns
 detections into events (tracks, zones, lines, inspection verdicts, safety
 alerts) published over MQTT with a durable outbox, and serves a local HTTP
 API and web page.
CONTROL
echo /etc/vigil/vigil.toml > "$pkg/DEBIAN/conffiles"
cat > "$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd vigil >/dev/null; then
        adduser --system --group --home /var/lib/vigil --no-create-home --quiet vigil
    fi
    adduser --quiet vigil video || true
    # systemd makes it too (StateDirectory=); containers and other inits need it here.
    install -d -o vigil -g vigil -m 0750 /var/lib/vigil
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable vigil.service >/dev/null
        systemctl restart vigil.service || true
    fi
fi
POSTINST
cat > "$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl disable --now vigil.service >/dev/null || true
fi
PRERM
cat > "$pkg/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
# The data (outbox, snapshots, model versions) stays unless purged.
if [ "$1" = purge ]; then
    rm -rf /var/lib/vigil /etc/vigil
fi
POSTRM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

mkdir -p "$OUT"
deb="$OUT/vigil_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
