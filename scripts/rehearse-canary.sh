#!/usr/bin/env bash
# Local canary rehearsal, for a person to watch (make rehearse-canary).
#
# Starts on 127.0.0.1: a real Prometheus (Debian package `prometheus`, 1 s scrapes), a stable and
# a canary serving stack (tiny seeded models trained on the spot), then
#   1. a healthy canary goes through the progressive steps with the analysis at each: promoted;
#   2. a bad canary (injected latency and errors) is rolled back automatically, and the time
#      from its start to the rollback is printed.
# Helm commands are printed as dry runs (no cluster here) and the traffic split is made by the
# traffic driver (W% of requests to the canary stack). Takes about two and a half minutes.
#
# Arguments go to `recsys rollout rehearse` (e.g. --steps 10,50,100 --interval 30s --rps 60).
# Logs and the summary: reports/rehearsal/ (decisions.jsonl, summary.json, logs/).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

python_bin="${PYTHON:-}"
if [ -z "${python_bin}" ]; then
    if [ -x .venv/bin/python ]; then
        python_bin=.venv/bin/python
    else
        python_bin="$(command -v python3)"
    fi
fi

if ! command -v prometheus >/dev/null 2>&1 && [ ! -x /usr/bin/prometheus ]; then
    echo "rehearse-canary: installing the prometheus package (scripts/install-prometheus.sh)" >&2
    bash scripts/install-prometheus.sh >/dev/null
fi

export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
exec "${python_bin}" -m recsys rollout rehearse "$@"
