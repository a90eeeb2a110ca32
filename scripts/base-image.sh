#!/usr/bin/env bash
# Make the local base image of the Bento (default recsys-base:bookworm) when it is missing, and
# print its name on stdout.
#
# Why: no container registry is reachable from this project's machines, so `python:3.11-slim`
# (BentoML's default base) cannot be pulled. The base is built from Debian packages instead:
#   debootstrap --variant=minbase bookworm + python3, python3-pip, python3-venv (Python 3.11, the
#   bentofile's python_version), bash, passwd (groupadd/useradd for the bentoml user),
#   ca-certificates; then `docker import`.
# Downloads during the image build (pip install uv, uv pip install of the Bento's requirements) go
# through this network's TLS proxy, so the machine's CA bundle is copied into the image and
# SSL_CERT_FILE, PIP_CERT, REQUESTS_CA_BUNDLE and UV_NATIVE_TLS point the tools at it.
# PIP_BREAK_SYSTEM_PACKAGES lets BentoML's `pip install uv` (run as root at build time) install
# into Debian's Python; the Bento itself runs from the /app/.venv that uv creates.
#
# Environment:
#   RECSYS_LOCAL_BASE_IMAGE  image name to make (default recsys-base:bookworm)
#   DEBIAN_MIRROR       Debian mirror (default: the first deb.debian.org-style URI in apt's sources)
#   DOCKER              docker client (default: scripts/install-docker.sh's answer)
# Idempotent: returns at once when the image exists. Needs root (debootstrap).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${RECSYS_LOCAL_BASE_IMAGE:-recsys-base:bookworm}"
suite=bookworm
ca_bundle=/etc/ssl/certs/ca-certificates.crt
docker="${DOCKER:-$(bash "${repo_root}/scripts/install-docker.sh")}"

say() { echo "base-image: $*" >&2; }

if "${docker}" image inspect "${image}" >/dev/null 2>&1; then
    say "${image} already present"
    echo "${image}"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    say "building ${image} needs root (debootstrap)"
    exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq debootstrap >&2 || { apt-get update -qq >&2 && apt-get install -y -qq debootstrap >&2; }
fi

mirror_from_apt() {
    # deb822 sources ("URIs: http://...") or one-line sources ("deb http://... bookworm main").
    local files
    files=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "${files}" ] || return 0
    # shellcheck disable=SC2086
    {
        grep -hE '^\s*URIs:' ${files} | awk '{print $2}' || true
        grep -hE '^\s*deb\s' ${files} | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; break}}' || true
    } | grep -E '/debian/?$' | head -n 1 || true
}
mirror="${DEBIAN_MIRROR:-$(mirror_from_apt)}"
mirror="${mirror:-http://deb.debian.org/debian}"
if [ ! -s "${ca_bundle}" ]; then
    say "${ca_bundle} is missing: the image could not reach PyPI through a TLS proxy"
    exit 1
fi

workdir="$(mktemp -d /var/tmp/recsys-base.XXXXXX)"
trap 'rm -rf "${workdir}"' EXIT
rootfs="${workdir}/rootfs"
started=$(date +%s)
say "debootstrap ${suite} from ${mirror} (log: ${workdir}/debootstrap.log while it runs)"
if ! debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-venv,ca-certificates,bash,passwd \
    "${suite}" "${rootfs}" "${mirror}" >"${workdir}/debootstrap.log" 2>&1; then
    tail -n 30 "${workdir}/debootstrap.log" >&2
    [ -f "${rootfs}/debootstrap/debootstrap.log" ] && tail -n 30 "${rootfs}/debootstrap/debootstrap.log" >&2
    say "debootstrap failed"
    exit 1
fi

# The machine's CA bundle (it trusts the TLS proxy) replaces the image's own.
install -m 0644 "${ca_bundle}" "${rootfs}/usr/local/share/recsys-ca-certificates.crt"
install -m 0644 "${ca_bundle}" "${rootfs}/etc/ssl/certs/ca-certificates.crt"
# Smaller image: no package lists, caches, docs or man pages.
rm -rf "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin \
    "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/usr/share/doc/* "${rootfs}"/usr/share/man/*

say "docker import as ${image}"
ca=/etc/ssl/certs/ca-certificates.crt
tar -C "${rootfs}" -c . | "${docker}" import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV SSL_CERT_FILE=${ca}" \
    --change "ENV PIP_CERT=${ca}" \
    --change "ENV REQUESTS_CA_BUNDLE=${ca}" \
    --change "ENV UV_NATIVE_TLS=1" \
    --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" \
    --change 'CMD ["/bin/bash"]' \
    - "${image}" >/dev/null

"${docker}" run --rm --network host "${image}" python3 -c 'import ssl, sys, venv; print(sys.version.split()[0])' >/dev/null
say "${image}: $("${docker}" image inspect --format '{{.Size}}' "${image}" | awk '{printf "%.0f MB", $1 / 1e6}'), built in $(($(date +%s) - started)) s"
echo "${image}"
