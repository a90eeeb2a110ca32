#!/usr/bin/env bash
# Install `wrk` (Debian package), the benchmark's HTTP load generator, when it is missing.
# Needs root (apt-get). Idempotent: exits at once when wrk is on PATH.
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
    command -v wrk
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-wrk: wrk missing and not root; run: sudo $0" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends wrk >&2
command -v wrk
