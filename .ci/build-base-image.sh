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
# Trim what debian:bookworm-slim also leaves out: downloaded packages, apt lists, docs, man pages, locales.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale "$rootfs"/usr/share/info \
  "$rootfs"/usr/lib/python3.11/test "$rootfs"/usr/lib/python3.11/ensurepip
tar -C "$rootfs" -c . | $ENGINE import - docker.io/library/python:3.11-slim
rm -rf "$rootfs"
