#!/usr/bin/env bash
# Make a Docker engine available and running; print the docker client to use on stdout.
#
#   1. no `dockerd`: `apt-get install -y docker.io` (Debian's engine; `apt-get update` first when
#      the package lists are empty or the install fails on a stale list);
#   2. `docker info` fails: start `dockerd` in the background (these machines have no systemd),
#      its log in ${RECSYS_DOCKERD_LOG:-/var/log/recsys-dockerd.log}, and wait until it answers
#      (RECSYS_DOCKERD_WAIT seconds, default 60).
#
# The client: /usr/bin/docker (Debian's, same release as the engine) when present, else the
# first `docker` on PATH. A newer client (e.g. 28.x in /usr/local/bin) would ask the 20.10 engine
# for an API version it does not speak, so DOCKER_API_VERSION is set to the engine's for the
# checks here; callers use the printed path (scripts/build-image.sh, tests/containers).
#
# Idempotent and instant when an engine already answers. Needs root to install or start one.
# Progress goes to stderr; only the client's path goes to stdout (DOCKER=$(scripts/install-docker.sh)).
set -euo pipefail

log="${RECSYS_DOCKERD_LOG:-/var/log/recsys-dockerd.log}"
wait_s="${RECSYS_DOCKERD_WAIT:-60}"

say() { echo "install-docker: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        say "needs root to run: $*"
        return 1
    fi
}

pick_client() {
    if [ -x /usr/bin/docker ]; then
        echo /usr/bin/docker
    elif command -v docker >/dev/null 2>&1; then
        command -v docker
    else
        return 1
    fi
}

engine_answers() {
    "${client}" info >/dev/null 2>&1
}

if ! command -v dockerd >/dev/null 2>&1 && [ ! -x /usr/sbin/dockerd ]; then
    say "dockerd missing: installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial || true)" ]; then
        as_root apt-get update -qq >&2
    fi
    if ! as_root apt-get install -y -qq docker.io >&2; then
        as_root apt-get update -qq >&2
        as_root apt-get install -y -qq docker.io >&2
    fi
fi

client="$(pick_client)" || {
    say "no docker client found after installing docker.io"
    exit 1
}
# Talk to the engine at its own API version when the client is newer (harmless otherwise).
if [ -z "${DOCKER_API_VERSION:-}" ] && [ -x /usr/bin/docker ] && [ "${client}" != /usr/bin/docker ]; then
    DOCKER_API_VERSION="$(/usr/bin/docker version --format '{{.Client.APIVersion}}' 2>/dev/null || true)"
    [ -n "${DOCKER_API_VERSION}" ] && export DOCKER_API_VERSION
fi

if ! engine_answers; then
    dockerd_bin="$(command -v dockerd || echo /usr/sbin/dockerd)"
    if pgrep -x dockerd >/dev/null 2>&1; then
        say "dockerd is running but not answering yet; waiting"
    else
        say "starting ${dockerd_bin} (log: ${log})"
        as_root mkdir -p "$(dirname "${log}")"
        # setsid + nohup: the engine outlives this script and the shell that called it.
        as_root setsid nohup "${dockerd_bin}" >>"${log}" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 "${wait_s}"); do
        if engine_answers; then
            break
        fi
        sleep 1
    done
    if ! engine_answers; then
        say "dockerd did not answer within ${wait_s}s; last lines of ${log}:"
        tail -n 20 "${log}" >&2 || true
        exit 1
    fi
fi

say "engine $("${client}" version --format '{{.Server.Version}}' 2>/dev/null) answers ($(
    "${client}" info --format '{{.Driver}}' 2>/dev/null
) storage driver)"
echo "${client}"
