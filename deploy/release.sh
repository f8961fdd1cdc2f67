#!/usr/bin/env bash
# A release: the container image (also saved as a tarball for boxes that
# load images offline), the Debian package, and their SHA-256 checksums.
#
#   deploy/release.sh [OUT_DIR]        (default target/release-artifacts)
#
# Out: vigil-<version>-image.tar.gz (`docker load -i` it), vigil_<version>_<arch>.deb,
# SHA256SUMS. The image is also tagged vigil:<version> and vigil:local.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/target/release-artifacts}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)"
log() { printf '\033[1;34m[release]\033[0m %s\n' "$*"; }

cd "$ROOT"
mkdir -p "$OUT"
deploy/docker/build.sh vigil:local
docker tag vigil:local "vigil:$VERSION"
log "saving vigil:$VERSION"
docker save "vigil:$VERSION" | gzip -1 > "$OUT/vigil-$VERSION-image.tar.gz"
log "building the Debian package"
deb="$(deploy/deb/build.sh vigil:local "$OUT")"
(cd "$OUT" && sha256sum "vigil-$VERSION-image.tar.gz" "$(basename "$deb")" > SHA256SUMS)
log "done: $OUT"
ls -l "$OUT" | tail -n +2
