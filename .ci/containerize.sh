#!/usr/bin/env bash
# `bentoml containerize` with whatever engine this machine has (see container-engine.sh).
# With no registry access, BASE_IMAGE=local builds python:3.11-slim's stand-in from Debian packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/container-engine.sh
BENTO_TAG=${BENTO_TAG:-imdb-sentiment:latest}
IMAGE_TAG=${IMAGE_TAG:-imdb-sentiment:latest}
BASE=docker.io/library/python:3.11-slim

if ! $ENGINE image inspect "$BASE" >/dev/null 2>&1; then
  if [ "${BASE_IMAGE:-pull}" = local ] || ! $ENGINE pull "$BASE"; then
    .ci/build-base-image.sh
  fi
fi

options=(--opt network=host)
if [ "$ENGINE" = podman ]; then
  options+=(--opt squash)  # one layer for the build steps, so removed build tools take no space
fi
if [ "$ENGINE" = podman ] && compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
  # This machine's HTTPS goes through a re-signing proxy: trust it during the build only (read-only mount).
  options+=(--opt volume=/etc/ssl/certs:/etc/ssl/certs:ro)
fi
started=$(date +%s)
.venv/bin/bentoml containerize "$BENTO_TAG" --image-tag "$IMAGE_TAG" --backend "$ENGINE" "${options[@]}"
echo "built $IMAGE_TAG in $(( $(date +%s) - started )) s"
$ENGINE image inspect "$IMAGE_TAG" --format '{{.Size}}' | awk '{printf "image size: %.0f MB\n", $1/1e6}'
