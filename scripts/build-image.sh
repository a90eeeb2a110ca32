#!/usr/bin/env bash
# Build the Bento (both models inside) and its container image with a real Docker engine:
#   bentoml build  ->  bentoml containerize recsys:<version> --opt network=host -t <tag>
# then print the image tag, its size and the build time.
#
# Environment:
#   BENTOML_HOME               the BentoML store holding the models (BentoML's default ~/bentoml)
#   RECSYS_RETRIEVAL_MODEL_TAG / RECSYS_RANKING_MODEL_TAG
#                              models packed into the Bento (default: latest of each)
#   RECSYS_BASE_IMAGE          base of the image:
#                                local   (default) recsys-base:bookworm (RECSYS_LOCAL_BASE_IMAGE),
#                                        made by scripts/base-image.sh from Debian packages when
#                                        missing (no registry needed);
#                                default the build config's own base (BentoML's python:3.11-slim +
#                                        apt packages), for machines that reach Docker Hub;
#                                <image> any other local or pullable image with Python 3.11.
#   RECSYS_IMAGE_TAG           image name:tag (default recsys:<bento version>)
#   RECSYS_IMAGE_REPORT        optional path: the figures are also written there as JSON
#   DOCKER                     docker client (default: scripts/install-docker.sh's answer, which
#                              also starts the engine when it is not running)
#
# The build config is pyproject.toml's [tool.bentoml.build] (its Python packages are the project's
# dependencies). The base is chosen without touching it: with a base image set, a bentofile
# written from it with docker.base_image filled in is handed to `bentoml build -f` (same build
# context, same includes, same packages).
# Either way BentoML 1.4's generated Dockerfile first runs its Debian default install command
# (apt-get install ca-certificates gnupg2 bash build-essential git; through the host network, from
# the mirror the base image's apt sources name), then uv installs the Bento's requirements; both
# layers stay in Docker's cache while the project's dependencies do not change.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"
bentoml="${BENTOML:-${repo_root}/.venv/bin/bentoml}"
python="${PYTHON:-${repo_root}/.venv/bin/python}"
base="${RECSYS_BASE_IMAGE:-local}"
export BENTOML_DO_NOT_TRACK=true
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"

say() { echo "build-image: $*" >&2; }

started=$(date +%s.%N)
DOCKER="${DOCKER:-$(bash scripts/install-docker.sh)}"
export DOCKER
# bentoml's docker backend runs the `docker` found on PATH: put the chosen client first.
client_dir="$(mktemp -d)"
trap 'rm -rf "${client_dir}"' EXIT
ln -s "${DOCKER}" "${client_dir}/docker"
export PATH="${client_dir}:${PATH}"

bentofile=pyproject.toml
case "${base}" in
    default) ;;
    local)
        base="$(bash scripts/base-image.sh)"
        ;;
esac
if [ "${base}" != default ]; then
    bentofile="${client_dir}/bentofile.yaml"
    "${python}" - "${base}" "${bentofile}" <<'PY'
import sys
import tomllib

import yaml

base_image, out = sys.argv[1:3]
with open("pyproject.toml", "rb") as handle:
    project = tomllib.load(handle)
config = project["tool"]["bentoml"]["build"]
config.setdefault("name", project["project"]["name"])
# What BentoML does with pyproject.toml itself: the project's dependencies are the packages.
python = config.setdefault("python", {})
python["packages"] = [*python.get("packages", []), *project["project"]["dependencies"]]
docker = config.setdefault("docker", {}) or {}
# A base image replaces BentoML's distro/python choice; drop them so it does not warn.
for key in ("distro", "python_version", "system_packages"):
    docker.pop(key, None)
docker["base_image"] = base_image
config["docker"] = docker
with open(out, "w") as handle:
    yaml.safe_dump(config, handle, sort_keys=False)
PY
    say "base image ${base}"
else
    say "base image: the build config's default"
fi

say "bentoml build (BENTOML_HOME=${BENTOML_HOME:-~/bentoml}, retrieval ${RECSYS_RETRIEVAL_MODEL_TAG:-recsys-retrieval:latest}, ranking ${RECSYS_RANKING_MODEL_TAG:-recsys-ranking:latest})"
build_out="$("${bentoml}" build -f "${bentofile}" -o tag "${repo_root}")"
bento_tag="$(printf '%s\n' "${build_out}" | sed -n 's/^__tag__://p' | tail -n 1)"
if [ -z "${bento_tag}" ]; then
    printf '%s\n' "${build_out}" >&2
    say "bentoml build printed no tag"
    exit 1
fi
image_tag="${RECSYS_IMAGE_TAG:-${bento_tag}}"
say "bento ${bento_tag}; containerizing as ${image_tag}"
"${bentoml}" containerize "${bento_tag}" --backend docker --opt network=host -t "${image_tag}" >&2

seconds=$(awk -v s="${started}" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
size_bytes=$("${DOCKER}" image inspect --format '{{.Size}}' "${image_tag}")
size_mb=$(awk -v b="${size_bytes}" 'BEGIN {printf "%.0f", b / 1e6}')
if [ -n "${RECSYS_IMAGE_REPORT:-}" ]; then
    mkdir -p "$(dirname "${RECSYS_IMAGE_REPORT}")"
    printf '{"image": "%s", "bento": "%s", "base_image": "%s", "size_bytes": %s, "build_seconds": %s}\n' \
        "${image_tag}" "${bento_tag}" "${base}" "${size_bytes}" "${seconds}" >"${RECSYS_IMAGE_REPORT}"
fi
echo "image ${image_tag}: ${size_mb} MB, built in ${seconds} s (bento ${bento_tag}, base ${base})"
