#!/usr/bin/env bash
# Builds Vigil's container image (deploy/docker/Dockerfile) and the Mosquitto
# image deploy/compose.yaml runs, after making the local base images where
# no registry can be reached (deploy/docker/base-images.sh).
#
#   deploy/docker/build.sh [TAG]      (default vigil:local)
#
# A rebuild with no source change takes seconds (Docker's layer cache).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TAG="${1:-vigil:local}"
cd "$ROOT"
deploy/docker/base-images.sh
log() { printf '\033[1;34m[docker]\033[0m %s\n' "$*"; }
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
build() {
    # Quiet when it works; the last of Docker's output when it does not.
    docker build "$@" >"$out" 2>&1 || { tail -n 40 "$out" >&2; exit 1; }
}
log "building $TAG"
build -f deploy/docker/Dockerfile -t "$TAG" .
log "building vigil-mosquitto:local"
build -f deploy/docker/mosquitto.Dockerfile -t vigil-mosquitto:local deploy/docker
log "$TAG: $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
