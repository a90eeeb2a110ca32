#!/usr/bin/env bash
# Render the plain-YAML manifests in manifests/ from the Helm chart, for users without Helm.
#
#   scripts/render-manifests.sh            sync slo.yaml into the chart, then write manifests/
#   scripts/render-manifests.sh --out DIR  write the rendered files to DIR only (no sync); the
#                                          tests use this to check manifests/ is up to date
#
# Step 1 copies the project's slo.yaml to helm/recsys/files/slo.yaml: Helm reads only files inside
# the chart, and that copy feeds the PrometheusRule thresholds and the histogram buckets (a test
# fails when the two files differ).
# Step 2 renders release "recsys" in namespace "recsys" and splits it into:
#   recsys.yaml             everything on platform kubernetes except Prometheus Operator objects;
#   recsys-monitoring.yaml  ServiceMonitor + PrometheusRule (needs the Prometheus Operator CRDs);
#   recsys-kserve.yaml      the same stack as KServe InferenceServices.
# manifests/otel-collector.yaml is written by hand and left alone.
# helm comes from $HELM, else scripts/install-helm.sh.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="${repo_root}/helm/recsys"
out_dir="${repo_root}/manifests"
sync_slo=1
while [ "$#" -gt 0 ]; do
    case "$1" in
        --out)
            out_dir="$2"
            sync_slo=0
            shift 2
            ;;
        *)
            echo "usage: $0 [--out DIR]" >&2
            exit 2
            ;;
    esac
done
helm="${HELM:-$("${repo_root}/scripts/install-helm.sh")}"
release=recsys
namespace=recsys
# The stage token is a secret: the raw manifests reference a Secret the user creates (see their
# header) instead of carrying a token that would be committed and the same for everyone.
stage_token_secret=recsys-stage-token

if [ "${sync_slo}" -eq 1 ]; then
    cp "${repo_root}/slo.yaml" "${chart}/files/slo.yaml"
fi
mkdir -p "${out_dir}"

# Write "$1" = output file, "$2" = header text, stdin = rendered YAML; keep or drop the documents
# whose kind is in the comma-separated list "$4" ("$3" = keep|drop).
# Python: the program for write_manifest (stdin carries the YAML, so the program comes via -c).
split_program='
import re
import sys

path, header, mode, kinds = sys.argv[1], sys.argv[2], sys.argv[3], set(sys.argv[4].split(","))
documents = [doc.strip("\n") for doc in re.split(r"^---\s*$", sys.stdin.read(), flags=re.M)]
kept = []
for doc in documents:
    match = re.search(r"^kind:\s*(\S+)", doc, flags=re.M)
    if match is None:
        continue
    if (match.group(1) in kinds) == (mode == "keep"):
        kept.append(doc)
with open(path, "w", encoding="utf-8") as out:
    out.write(header.rstrip("\n") + "\n")
    for doc in kept:
        out.write("---\n" + doc + "\n")
'
write_manifest() {
    python3 -c "${split_program}" "$@"
}

generated="# Generated from helm/recsys by scripts/render-manifests.sh (release \"${release}\", namespace \"${namespace}\"): do not edit; change the chart and re-run the script."
monitoring_kinds="ServiceMonitor,PrometheusRule"

"${helm}" template "${release}" "${chart}" --namespace "${namespace}" --skip-tests \
    --set stageAuth.existingSecret="${stage_token_secret}" \
    --set serviceMonitor.enabled=true --set prometheusRule.enabled=true |
    write_manifest "${out_dir}/recsys.yaml" "# This example deploys the recsys stack on plain Kubernetes: the gateway (running Ranking in its own
# process) and retrieval Deployments from one Bento image (helm/recsys with ranking.separate=true adds a
# ranking Deployment), with Services, ServiceAccounts, HPAs, PDBs, NetworkPolicies,
# the headless -metrics Services a ServiceMonitor discovers, and the Grafana dashboard ConfigMap.
# Prerequisites: Kubernetes >= 1.29 with metrics-server (for the HPAs); the namespace
# (kubectl create namespace ${namespace}); the image recsys:0.1.0 (bentoml build + bentoml containerize)
# in a registry the nodes can pull from; edit the image: fields otherwise; the stage token Secret
# (kubectl create secret generic ${stage_token_secret} -n ${namespace} --from-literal=token=\$(openssl rand -hex 32)).
# Apply: kubectl apply -n ${namespace} -f manifests/recsys.yaml
${generated}" drop "${monitoring_kinds}"

"${helm}" template "${release}" "${chart}" --namespace "${namespace}" --skip-tests \
    --set stageAuth.existingSecret="${stage_token_secret}" \
    --set serviceMonitor.enabled=true --set prometheusRule.enabled=true |
    write_manifest "${out_dir}/recsys-monitoring.yaml" "# This example adds Prometheus Operator objects for the stack of manifests/recsys.yaml: a ServiceMonitor
# (scrapes every pod, copying the track/component/version/release labels onto the series) and a
# PrometheusRule with the SLO recording rules and multi-window burn-rate alerts; every threshold comes
# from the project's slo.yaml.
# Prerequisites: manifests/recsys.yaml applied; the Prometheus Operator CRDs (monitoring.coreos.com/v1)
# and a Prometheus whose serviceMonitorSelector / ruleSelector pick these objects up (add labels).
# Apply: kubectl apply -n ${namespace} -f manifests/recsys-monitoring.yaml
${generated}" keep "${monitoring_kinds}"

"${helm}" template "${release}" "${chart}" --namespace "${namespace}" --skip-tests \
    --set stageAuth.existingSecret="${stage_token_secret}" \
    --set platform=kserve |
    write_manifest "${out_dir}/recsys-kserve.yaml" "# This example deploys the recsys stack as two KServe InferenceServices (serving.kserve.io/v1beta1,
# Serverless mode), the gateway (running Ranking in its own process) and retrieval: each predictor is
# the Bento image as a custom container named kserve-container on port 3000; the gateway reaches
# retrieval at its cluster-local predictor address.
# Canary: add spec.predictor.canaryTrafficPercent: <percent> together with the new image / model tag;
# KServe sends the rest to the last rolled-out revision; canaryTrafficPercent: 0 rolls back
# (serving.kserve.io/enable-tag-routing gives latest- and prev- URLs to test either revision).
# Prerequisites: KServe with Knative Serving (Serverless mode); Knative's emptyDir feature on
# (kubernetes.podspec-emptydir, for the /tmp volume of the read-only root filesystem); the namespace
# (kubectl create namespace ${namespace}); the image recsys:0.1.0 reachable by the nodes; the stage
# token Secret (kubectl create secret generic ${stage_token_secret} -n ${namespace} --from-literal=token=\$(openssl rand -hex 32)).
# Apply: kubectl apply -n ${namespace} -f manifests/recsys-kserve.yaml
${generated}" drop "${monitoring_kinds}"

echo "rendered into ${out_dir}" >&2
