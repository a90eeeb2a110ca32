#!/usr/bin/env bash
# Install `promtool` and the `prometheus` server (Debian package `prometheus`) when either is
# missing from PATH. The rollout tests start a real Prometheus server on 127.0.0.1.
#
# The chart's tests run `promtool check rules` / `promtool test rules` on the
# rendered PrometheusRule. Only promtool is wanted: no Prometheus daemon may be
# left running afterwards. Debian's maintainer scripts ask invoke-rc.d before
# starting a service; a policy-rc.d that answers 101 ("action forbidden") stops
# them, and we put one in place for the duration of the install if none exists.
# Recommends (prometheus-node-exporter, another daemon) are not installed.
#
# Needs root (apt-get). Idempotent: exits at once when promtool is present.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-prometheus: promtool missing and not root; run: sudo $0" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "${policy}" ]; then
    printf '#!/bin/sh\n# temporary: set by scripts/install-prometheus.sh\nexit 101\n' >"${policy}"
    chmod 0755 "${policy}"
    created_policy=1
fi
cleanup() {
    if [ "${created_policy}" -eq 1 ]; then
        rm -f "${policy}"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends prometheus >&2

# Belt and braces: if an init system started the daemon anyway, stop and disable it.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi

command -v promtool
