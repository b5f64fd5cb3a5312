#!/usr/bin/env bash
# Air-gapped stand-in for python:3.11-slim: Debian bookworm (Python 3.11) from Debian's mirror, imported
# under the official name so the generated Dockerfile builds unchanged. No certificate is added to it.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/container-engine.sh
rootfs=$(mktemp -d)
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
  bookworm "$rootfs" http://deb.debian.org/debian
ln -sf python3 "$rootfs/usr/bin/python"
ln -sf pip3 "$rootfs/usr/bin/pip"
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED  # as in the official image: pip may install
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc "$rootfs"/usr/share/man
tar -C "$rootfs" -c . | $ENGINE import - docker.io/library/python:3.11-slim
rm -rf "$rootfs"
