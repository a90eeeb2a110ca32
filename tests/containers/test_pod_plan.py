"""The pod-spec -> `docker run` translation itself (helm only, no Docker): every setting of the
rendered pods reaches the plan, and no URL in any container's environment leaves loopback."""

from __future__ import annotations

import re

import pytest
from conftest import SCENARIOS
from pod_runner import CLUSTER_URL, PodPlan, cpu_cores, memory_bytes

pytestmark = [pytest.mark.containers]

URL = re.compile(r"https?://([^/:\s]+)")


@pytest.mark.parametrize("scenario", ["default", "canary", "gateway-api", "ranking-separate"])
def test_every_url_is_loopback_and_the_hardening_is_planned(chart_render, scenario):
    objects = chart_render([SCENARIOS / f"{scenario}-values.yaml"])
    plan = PodPlan.from_manifests(objects)
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert set(plan.containers) == {d["metadata"]["name"] for d in deployments}
    assert plan.tests, "no helm test pod rendered"
    host_ports = [c.host_port for c in plan.containers.values()]
    assert len(set(host_ports)) == len(host_ports)
    for name, container in {**plan.containers, **plan.tests}.items():
        for key, value in container.env.items():
            assert not CLUSTER_URL.search(value), f"{name} {key}={value}"
            assert set(URL.findall(value)) <= {"127.0.0.1"}, f"{name} {key}={value}"
        args = container.docker_args("x")
        assert args[args.index("--network") + 1] == "host"
        assert container.user == "1034:1034" and container.group_add == ["1034"]
        assert container.read_only and "/tmp" in container.tmpfs
        assert container.cap_drop == ["ALL"] and container.no_new_privileges
        assert container.cpus and container.memory
    for name, container in plan.containers.items():
        port_arg = container.args[container.args.index("--port") + 1]
        assert int(port_arg) == container.host_port, name
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container.probes)
    gateway = plan.containers["recsys-gateway"]
    depends = dict(item.split("=", 1) for item in gateway.env["BENTOML_SERVE_DEPENDS"].split())
    # Remote stages only: without a ranking Deployment, Ranking runs inside the gateway.
    remote = {"Retrieval": "recsys-retrieval", "Ranking": "recsys-ranking"}
    assert depends == {
        stage: plan.containers[name].url
        for stage, name in remote.items()
        if name in plan.containers
    }
    assert ("recsys-ranking" in plan.containers) == (scenario == "ranking-separate")
    tokens = {c.env.get("RECSYS_STAGE_TOKEN") for c in plan.containers.values()}
    assert len(tokens) == 1 and None not in tokens, "all pods share one stage token"


def test_quantities():
    assert memory_bytes("512Mi") == 512 * 2**20
    assert memory_bytes("1G") == 10**9
    assert memory_bytes(1024) == 1024
    assert cpu_cores("500m") == 0.5
    assert cpu_cores("2") == 2.0
    with pytest.raises(ValueError, match="unparsable"):
        memory_bytes("12 parsecs")
