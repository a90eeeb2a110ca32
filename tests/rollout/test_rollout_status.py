"""`recsys rollout status` against a mock Kubernetes API server.

No cluster runs here: a real HTTP server on 127.0.0.1 serves canned Deployment, HTTPRoute and
InferenceService lists (shaped like the chart's objects), and the real `kubernetes` client talks
to it through a kubeconfig file, exactly as it would talk to a cluster's API server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from recsys.rollout.errors import KubernetesError, ReleaseNotFoundError
from recsys.rollout.kube import api_client, collect_status

SELECTOR = "app.kubernetes.io/instance=recsys,app.kubernetes.io/part-of=recsys"
DEPLOYMENTS = "/apis/apps/v1/namespaces/recsys/deployments"
ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/recsys/httproutes"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/recsys/inferenceservices"


def labels(component: str, track: str | None = None) -> dict[str, str]:
    found = {
        "app.kubernetes.io/name": "recsys",
        "app.kubernetes.io/instance": "recsys",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "recsys",
    }
    if track:
        found["track"] = track
    return found


def deployment(
    component: str, track: str, version: str, replicas: int, ready: int, model: str = ""
) -> dict:
    name = f"recsys-{component}" + ("-canary" if track == "canary" else "")
    pod_labels = {**labels(component, track), "app.kubernetes.io/version": version}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "recsys", "labels": labels(component, track)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels(component, track)},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {"recsys.io/model-tag": model} if model else {},
                },
                "spec": {
                    "containers": [
                        {"name": "bento", "image": f"registry.example.com/recsys:{version}"}
                    ]
                },
            },
        },
        "status": {"replicas": replicas, "readyReplicas": ready},
    }


def listing(kind: str, items: list[dict]) -> dict:
    return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}


NOT_FOUND = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "reason": "NotFound",
    "code": 404,
    "message": "the server could not find the requested resource",
}

REPLICA_RATIO = {
    DEPLOYMENTS: listing(
        "DeploymentList",
        [
            deployment("gateway", "stable", "1.0.0", 2, 2),
            deployment("retrieval", "stable", "1.0.0", 2, 2, "recsys-retrieval:aaa"),
            deployment("ranking", "stable", "1.0.0", 2, 2, "recsys-ranking:bbb"),
            deployment("ranking", "canary", "1.1.0", 1, 1, "recsys-ranking:ccc"),
        ],
    ),
}
GATEWAY_API = {
    DEPLOYMENTS: listing(
        "DeploymentList",
        [
            deployment("gateway", "stable", "1.0.0", 2, 2),
            deployment("gateway", "canary", "1.1.0", 1, 0),
        ],
    ),
    ROUTES: listing(
        "HTTPRouteList",
        [
            {
                "metadata": {"name": "recsys-gateway", "labels": labels("gateway")},
                "spec": {
                    "rules": [
                        {
                            "backendRefs": [
                                {"name": "recsys-gateway-stable", "port": 3000, "weight": 95},
                                {"name": "recsys-gateway-canary", "port": 3000, "weight": 5},
                            ]
                        }
                    ]
                },
            }
        ],
    ),
}


def isvc(component: str, canary_percent: int | None) -> dict:
    in_canary = canary_percent is not None
    predictor = {
        "minReplicas": 1,
        "labels": {
            **labels(component, "canary" if in_canary else "stable"),
            "app.kubernetes.io/version": "1.1.0" if in_canary else "1.0.0",
        },
        "annotations": {"recsys.io/model-tag": f"recsys-{component}:new"},
        "containers": [
            {"name": "kserve-container", "image": f"recsys:{'1.1.0' if in_canary else '1.0.0'}"}
        ],
    }
    traffic = [
        {
            "revisionName": f"recsys-{component}-predictor-00001",
            "percent": 100,
            "latestRevision": True,
        }
    ]
    revisions = {
        "latestCreatedRevision": f"recsys-{component}-predictor-00001",
        "latestReadyRevision": f"recsys-{component}-predictor-00001",
        "latestRolledoutRevision": f"recsys-{component}-predictor-00001",
    }
    if in_canary:
        predictor["canaryTrafficPercent"] = canary_percent
        traffic = [
            {
                "revisionName": f"recsys-{component}-predictor-00002",
                "percent": canary_percent,
                "latestRevision": True,
                "tag": "latest",
            },
            {
                "revisionName": f"recsys-{component}-predictor-00001",
                "percent": 100 - canary_percent,
                "latestRevision": False,
                "tag": "prev",
            },
        ]
        revisions.update(
            latestCreatedRevision=f"recsys-{component}-predictor-00002",
            latestReadyRevision=f"recsys-{component}-predictor-00002",
            previousRolledoutRevision=f"recsys-{component}-predictor-00001",
        )
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": f"recsys-{component}",
            "namespace": "recsys",
            "labels": labels(component),
        },
        "spec": {"predictor": predictor},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "components": {"predictor": {**revisions, "traffic": traffic}},
        },
    }


KSERVE = {
    DEPLOYMENTS: listing("DeploymentList", []),
    ISVCS: listing("InferenceServiceList", [isvc("gateway", None), isvc("retrieval", 20)]),
}


def api(objects: dict[str, dict]):
    """Answer GETs from `objects` by path; another release's selector matches nothing."""

    def respond(path: str):
        url = urlparse(path)
        selector = parse_qs(url.query).get("labelSelector", [""])[0]
        if url.path in objects:
            if selector != SELECTOR:
                return 200, {**objects[url.path], "items": []}
            return 200, objects[url.path]
        return 404, NOT_FOUND

    return respond


def kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "mock", "cluster": {"server": server}}],
                "users": [{"name": "sre", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "sre"}}],
                "current-context": "mock",
            }
        )
    )
    return path


def status_of(stub_server, tmp_path, objects) -> dict:
    server = stub_server(api(objects))
    client = api_client(str(kubeconfig(tmp_path, server.url)))
    try:
        return {c.component: c for c in collect_status(client, "recsys", "recsys")}
    finally:
        client.close()


def test_replica_ratio_status(stub_server, tmp_path):
    found = status_of(stub_server, tmp_path, REPLICA_RATIO)
    assert list(found) == ["gateway", "retrieval", "ranking"]
    ranking = found["ranking"]
    assert ranking.stable.version == "1.0.0" and ranking.stable.model_tag == "recsys-ranking:bbb"
    assert ranking.canary.version == "1.1.0" and ranking.canary.model_tag == "recsys-ranking:ccc"
    assert ranking.canary.is_ready and (ranking.canary.ready, ranking.canary.desired) == (1, 1)
    assert ranking.canary.weight == pytest.approx(100 / 3)
    assert ranking.split.startswith("replica ratio")
    assert found["gateway"].canary is None and found["gateway"].stable.weight == 100


def test_gateway_api_weights_come_from_the_route(stub_server, tmp_path):
    gateway = status_of(stub_server, tmp_path, GATEWAY_API)["gateway"]
    assert (gateway.stable.weight, gateway.canary.weight) == (95, 5)
    assert gateway.canary.is_ready is False  # 0 of 1 pods ready
    assert gateway.split.startswith("HTTPRoute")


def test_kserve_status_reads_traffic_and_revisions(stub_server, tmp_path):
    found = status_of(stub_server, tmp_path, KSERVE)
    retrieval = found["retrieval"]
    assert retrieval.platform == "kserve"
    assert retrieval.canary.weight == 20 and retrieval.stable.weight == 80
    assert retrieval.canary.name.endswith("00002") and retrieval.stable.name.endswith("00001")
    assert retrieval.canary.image == "recsys:1.1.0" and retrieval.canary.is_ready
    assert "canaryTrafficPercent=20" in retrieval.canary.detail
    assert found["gateway"].canary is None and found["gateway"].stable.weight == 100


def test_missing_release_and_unreachable_api_are_typed_errors(stub_server, tmp_path):
    with pytest.raises(ReleaseNotFoundError, match="release 'recsys'"):
        status_of(stub_server, tmp_path, {})
    from recsys.ops.stack import free_port

    client = api_client(str(kubeconfig(tmp_path, f"http://127.0.0.1:{free_port()}")))
    client.configuration.retries = 0
    with pytest.raises(KubernetesError, match="cannot reach the Kubernetes API"):
        collect_status(client, "recsys", "recsys")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "recsys", "rollout", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_status_command_prints_the_table_and_json(stub_server, tmp_path):
    server = stub_server(api(REPLICA_RATIO))
    config = str(kubeconfig(tmp_path, server.url))
    done = run_cli("status", "--kubeconfig", config)
    assert done.returncode == 0, done.stderr
    assert "recsys-ranking:ccc" in done.stdout and "33%" in done.stdout
    done = run_cli("status", "--kubeconfig", config, "--json")
    rows = {row["component"]: row for row in json.loads(done.stdout)}
    assert rows["ranking"]["canary"]["version"] == "1.1.0"
    done = run_cli("status", "--kubeconfig", config, "--release", "other")
    assert done.returncode == 2
    assert done.stderr.startswith("error: no recsys Deployments or InferenceServices of release")
    assert "Traceback" not in done.stderr
    assert all("labelSelector=" in request for request in server.requests)
