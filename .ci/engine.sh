#!/usr/bin/env bash
# Run the container engine this machine has (docker, or podman with project-local settings): .ci/engine.sh ps
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/container-engine.sh
exec "$ENGINE" "$@"
