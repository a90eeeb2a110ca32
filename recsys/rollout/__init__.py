"""Canary rollouts: analysis against `slo.yaml`, promotion and rollback through Helm.

Modules, lightest first:

- `errors`: the typed errors every rollout command raises (one line each in the CLI).
- `analysis`: PromQL for each signal and the verdict from the numbers (no I/O).
- `plan`: the exact `helm` command lines of start / weight / promote / rollback (no I/O).
- `progressive`: the step-by-step rollout loop with its decision log (actions injected).
- `prometheus`, `helm`, `kube`: the I/O: Prometheus HTTP API, the helm binary, the Kubernetes API.
- `preflight`: offline NDCG@10 of the candidate models against the stable ones.
- `localstack`, `rehearsal`: a real Prometheus and two serving stacks on 127.0.0.1.
- `cli`: `recsys rollout ...`.
"""
