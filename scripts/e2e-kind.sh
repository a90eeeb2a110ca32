#!/usr/bin/env bash
# End-to-end check of the Helm chart on a throwaway kind cluster:
#   1. build the Bento image (bentoml build + bentoml containerize) and load it into kind;
#   2. install the chart, wait for the rollout, run `helm test` (POST /recommend through the gateway);
#   3. start a retrieval canary (same image, its own track), check it runs and the stack still answers;
#   4. roll the canary back and check the stable pods are untouched and `helm test` still passes.
#
# Needs: a running Docker daemon, kind, kubectl, the project's venv with bentoml (make setup) and
# trained models in the local BentoML store (make train), and helm (scripts/install-helm.sh).
# It cannot run on machines without a Docker engine (like this project's CI); run it by hand.
#
# Environment:
#   CLUSTER        kind cluster name                 (default recsys-e2e)
#   IMAGE          image name:tag to build and load  (default recsys:e2e)
#   SKIP_BUILD=1   reuse an IMAGE already in Docker
#   KEEP_CLUSTER=1 leave the cluster running afterwards (for debugging)
#   BENTOML        bentoml executable                (default .venv/bin/bentoml, else bentoml on PATH)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

cluster="${CLUSTER:-recsys-e2e}"
image="${IMAGE:-recsys:e2e}"
release=recsys
namespace=recsys
chart=helm/recsys
image_repo="${image%:*}"
image_tag="${image##*:}"

log() { printf '\n==> %s\n' "$*" >&2; }
die() {
    printf 'e2e-kind: %s\n' "$*" >&2
    exit 1
}

for tool in docker kind kubectl; do
    command -v "${tool}" >/dev/null 2>&1 || die "${tool} is required"
done
docker info >/dev/null 2>&1 || die "no Docker daemon reachable"
helm="$(scripts/install-helm.sh)"
bentoml="${BENTOML:-}"
if [ -z "${bentoml}" ]; then
    if [ -x .venv/bin/bentoml ]; then bentoml=.venv/bin/bentoml; else bentoml="$(command -v bentoml || true)"; fi
fi

cleanup() {
    if [ "${KEEP_CLUSTER:-0}" != "1" ]; then
        log "deleting kind cluster ${cluster}"
        kind delete cluster --name "${cluster}" >/dev/null 2>&1 || true
    else
        log "keeping kind cluster ${cluster} (kind delete cluster --name ${cluster})"
    fi
}

if [ "${SKIP_BUILD:-0}" != "1" ]; then
    [ -n "${bentoml}" ] || die "bentoml not found: run make setup (or set BENTOML)"
    log "building the Bento and the image ${image}"
    bento_tag="$("${bentoml}" build . --output tag | sed -n 's/^__tag__://p' | tail -n 1)"
    [ -n "${bento_tag}" ] || die "bentoml build printed no tag"
    "${bentoml}" containerize "${bento_tag}" --image-tag "${image}"
fi

log "creating kind cluster ${cluster}"
kind create cluster --name "${cluster}" --wait 120s
trap cleanup EXIT
kind load docker-image "${image}" --name "${cluster}"
kubectl create namespace "${namespace}"

# Small footprint for a laptop cluster: fixed replicas, small requests, no HPA (kind has no
# metrics-server), NetworkPolicy off (kind's default CNI does not enforce it anyway).
common_values=(
    --namespace "${namespace}"
    --set "image.repository=${image_repo}" --set "image.tag=${image_tag}" --set image.pullPolicy=Never
    --set networkPolicy.enabled=false
)
for component in gateway retrieval ranking; do
    common_values+=(
        --set "${component}.autoscaling.enabled=false" --set "${component}.replicaCount=1"
        --set "${component}.resources.requests.cpu=250m" --set "${component}.resources.requests.memory=512Mi"
        --set "${component}.resources.limits.cpu=1" --set "${component}.resources.limits.memory=2Gi"
    )
done

rollout_status() {
    local deployment
    for deployment in "$@"; do
        kubectl -n "${namespace}" rollout status "deployment/${deployment}" --timeout=600s
    done
}

log "installing the chart"
"${helm}" install "${release}" "${chart}" "${common_values[@]}" --wait --timeout 15m
rollout_status recsys-retrieval recsys-ranking recsys-gateway

log "helm test (POST /recommend)"
"${helm}" test "${release}" --namespace "${namespace}" --logs --timeout 5m

stable_pods() {
    kubectl -n "${namespace}" get pods -l app.kubernetes.io/component=retrieval,track=stable \
        -o jsonpath='{.items[*].metadata.name}'
}
stable_before="$(stable_pods)"

log "starting a retrieval canary (same image, track canary, weight 50)"
"${helm}" upgrade "${release}" "${chart}" --namespace "${namespace}" --reuse-values --wait --timeout 10m \
    --set retrieval.canary.enabled=true,retrieval.canary.image.tag="${image_tag}",retrieval.canary.weight=50
rollout_status recsys-retrieval-canary
canary_pods="$(kubectl -n "${namespace}" get pods -l app.kubernetes.io/component=retrieval,track=canary -o name)"
[ -n "${canary_pods}" ] || die "no canary pod"
kubectl -n "${namespace}" get endpoints recsys-retrieval -o jsonpath='{.subsets[*].addresses[*].ip}' |
    wc -w | grep -qv '^0$' || die "retrieval Service has no endpoints"
"${helm}" test "${release}" --namespace "${namespace}" --logs --timeout 5m

log "rolling the canary back"
"${helm}" upgrade "${release}" "${chart}" --namespace "${namespace}" --reuse-values --wait --timeout 10m \
    --set retrieval.canary.enabled=false
kubectl -n "${namespace}" wait --for=delete deployment/recsys-retrieval-canary --timeout=120s 2>/dev/null || true
if kubectl -n "${namespace}" get deployment recsys-retrieval-canary >/dev/null 2>&1; then
    die "canary Deployment still present after rollback"
fi
[ "$(stable_pods)" = "${stable_before}" ] || die "stable retrieval pods changed during canary + rollback"
"${helm}" test "${release}" --namespace "${namespace}" --logs --timeout 5m

log "e2e-kind: OK"
