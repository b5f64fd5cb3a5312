#!/usr/bin/env bash
# Docker Compose with whatever engine this machine has: `.ci/compose.sh up -d`, `.ci/compose.sh down`.
# STANDINS=1, for machines with no registry access: MLflow and Prometheus run from images built here from PyPI and
# Debian packages (deploy/standins/). Grafana has no such source; name the services to start without it.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/container-engine.sh
if [ "${STANDINS:-0}" = 1 ]; then
  options=(--network host)
  if [ "$ENGINE" = podman ] && compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    options+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)  # this machine's re-signing proxy, trusted for the build only
  fi
  for name in mlflow prometheus; do
    if ! $ENGINE image inspect "localhost/$name-standin" >/dev/null 2>&1; then
      $ENGINE build "${options[@]}" -t "localhost/$name-standin" -f "deploy/standins/$name.Containerfile" deploy/standins
    fi
  done
  export MLFLOW_IMAGE=localhost/mlflow-standin PROMETHEUS_IMAGE=localhost/prometheus-standin
fi
if [ "$ENGINE" = docker ]; then
  exec docker compose "$@"
fi
exec .venv/bin/podman-compose "$@"
