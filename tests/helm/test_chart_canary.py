"""Canary rendering: replica arithmetic, exact route weights, KServe traffic percent, and the
`helm upgrade --set` keys that `recsys rollout start/promote/rollback` use."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.helm


def deployments_by_name(helpers, objects):
    return {d["metadata"]["name"]: d for d in helpers.objects_of(objects, "Deployment")}


def env_of(container):
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def fixed_replicas(component: str, replicas: int) -> tuple[str, ...]:
    return (
        f"{component}.autoscaling.enabled=false",
        f"{component}.replicaCount={replicas}",
    )


def canary_on(component: str, weight: int, tag: str = "2.0.0") -> tuple[str, ...]:
    return (
        f"{component}.canary.enabled=true",
        f"{component}.canary.image.tag={tag}",
        f"{component}.canary.weight={weight}",
    )


# Replica-ratio splitting: one Service over both tracks, so the canary's share of requests is
# c / (N + c). The chart picks c = round(N * W / (100 - W)), at least 1 while W > 0.
REPLICA_RATIO_CASES = [
    # (stable replicas N, weight W, expected canary replicas c)
    (9, 10, 1),  # exactly 10%
    (4, 20, 1),  # exactly 20%
    (3, 50, 3),  # exactly 50%
    (10, 25, 3),  # 23%: the closest a 13-pod split gets to 25%
    (2, 10, 1),  # 33%: two stable pods cannot dilute one canary further (documented granularity)
    (2, 25, 1),  # 33%
    (1, 90, 9),  # 90%
    (5, 0, 0),  # weight 0: canary Deployment kept at zero pods
]


@pytest.mark.parametrize(("stable", "weight", "expected"), REPLICA_RATIO_CASES)
def test_replica_ratio_arithmetic(chart, helpers, stable, weight, expected):
    objects = chart.render((), fixed_replicas("retrieval", stable) + canary_on("retrieval", weight))
    deployments = deployments_by_name(helpers, objects)
    assert deployments["recsys-retrieval"]["spec"]["replicas"] == stable
    canary = deployments["recsys-retrieval-canary"]
    assert canary["spec"]["replicas"] == expected
    if weight and expected > 1:
        share = expected / (stable + expected)
        assert abs(share - weight / 100) <= 1 / (stable + expected)


def test_replica_ratio_uses_hpa_minimum_with_autoscaling(chart, helpers):
    sets = (
        "ranking.separate=true",
        "ranking.autoscaling.enabled=true",
        "ranking.autoscaling.minReplicas=9",
        "ranking.autoscaling.maxReplicas=20",
        *canary_on("ranking", 10),
    )
    deployments = deployments_by_name(helpers, chart.render((), sets))
    assert "replicas" not in deployments["recsys-ranking"]["spec"], "the HPA owns the stable count"
    assert deployments["recsys-ranking-canary"]["spec"]["replicas"] == 1
    hpas = helpers.objects_of(chart.render((), sets), "HorizontalPodAutoscaler")
    assert all(h["spec"]["scaleTargetRef"]["name"] != "recsys-ranking-canary" for h in hpas)


def test_canary_deployment_shape(chart, helpers):
    sets = (
        *canary_on("retrieval", 10, tag="2.0.0"),
        "retrieval.modelTag=recsys-retrieval:old",
        "retrieval.canary.modelTag=recsys-retrieval:new",
        "retrieval.canary.faults.latencyMs=40",
        "retrieval.canary.faults.errorRate=0.1",
        "image.tag=1.0.0",
    )
    objects = chart.render((), sets)
    deployments = deployments_by_name(helpers, objects)
    stable, canary = deployments["recsys-retrieval"], deployments["recsys-retrieval-canary"]
    stable_pod, canary_pod = stable["spec"]["template"], canary["spec"]["template"]
    assert stable_pod["metadata"]["labels"]["track"] == "stable"
    assert canary_pod["metadata"]["labels"]["track"] == "canary"
    assert canary["spec"]["selector"]["matchLabels"]["track"] == "canary"
    assert canary_pod["metadata"]["labels"]["app.kubernetes.io/version"] == "2.0.0"
    assert stable_pod["spec"]["containers"][0]["image"] == "recsys:1.0.0"
    assert canary_pod["spec"]["containers"][0]["image"] == "recsys:2.0.0"
    stable_env, canary_env = (
        env_of(stable_pod["spec"]["containers"][0]),
        env_of(canary_pod["spec"]["containers"][0]),
    )
    assert stable_env["RECSYS_RETRIEVAL_MODEL_TAG"] == "recsys-retrieval:old"
    assert canary_env["RECSYS_RETRIEVAL_MODEL_TAG"] == "recsys-retrieval:new"
    assert canary_pod["metadata"]["annotations"]["recsys.io/model-tag"] == "recsys-retrieval:new"
    assert canary_env["RECSYS_FAULT_LATENCY_MS"] == "40"
    assert canary_env["RECSYS_FAULT_ERROR_RATE"] == "0.1"
    assert "RECSYS_FAULT_LATENCY_MS" not in stable_env, "faults are injected into the canary only"
    # Replica-ratio mode: the one Service selects both tracks.
    (service,) = [
        s
        for s in helpers.objects_of(objects, "Service")
        if s["metadata"]["name"] == "recsys-retrieval"
    ]
    assert "track" not in service["spec"]["selector"]
    for pod in (stable_pod, canary_pod):
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("stable", "weight", "expected_pods"), [(2, 5, 1), (10, 35, 4), (3, 0, 1), (4, 100, 4)]
)
def test_gateway_api_route_weights_are_exact(chart, helpers, stable, weight, expected_pods):
    sets = (
        "gatewayAPI.enabled=true",
        "gatewayAPI.parentRefs[0].name=public",
        *fixed_replicas("gateway", stable),
        *canary_on("gateway", weight),
    )
    objects = chart.render((), sets)
    (route,) = helpers.objects_of(objects, "HTTPRoute")
    backends = {ref["name"]: ref for ref in route["spec"]["rules"][0]["backendRefs"]}
    assert backends["recsys-gateway-stable"]["weight"] == 100 - weight
    assert backends["recsys-gateway-canary"]["weight"] == weight
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    services = {s["metadata"]["name"]: s for s in helpers.objects_of(objects, "Service")}
    assert services["recsys-gateway"]["spec"]["selector"]["track"] == "stable"
    assert services["recsys-gateway-canary"]["spec"]["selector"]["track"] == "canary"
    assert services["recsys-gateway-stable"]["spec"]["selector"]["track"] == "stable"
    deployments = deployments_by_name(helpers, objects)
    assert deployments["recsys-gateway-canary"]["spec"]["replicas"] == expected_pods


def test_mesh_routes_split_internal_components(chart, helpers):
    objects = chart.render((helpers.chart_dir / "ci" / "gateway-api-values.yaml",))
    routes = {r["metadata"]["name"]: r for r in helpers.objects_of(objects, "HTTPRoute")}
    assert set(routes) == {"recsys-gateway", "recsys-retrieval"}, "no ranking: it is in the gateway"
    retrieval = routes["recsys-retrieval"]
    assert retrieval["spec"]["parentRefs"] == [
        {"group": "", "kind": "Service", "name": "recsys-retrieval", "port": 3000}
    ]
    weights = {ref["name"]: ref["weight"] for ref in retrieval["spec"]["rules"][0]["backendRefs"]}
    assert weights == {"recsys-retrieval-stable": 70, "recsys-retrieval-canary": 30}
    # A separate ranking gets its own mesh route, undivided without a canary.
    separate = chart.render(
        (helpers.chart_dir / "ci" / "gateway-api-values.yaml",), ("ranking.separate=true",)
    )
    routes = {r["metadata"]["name"]: r for r in helpers.objects_of(separate, "HTTPRoute")}
    assert {
        ref["weight"] for ref in routes["recsys-ranking"]["spec"]["rules"][0]["backendRefs"]
    } == {100}


@pytest.mark.parametrize("weight", [0, 20, 100])
def test_kserve_canary_traffic_percent(chart, helpers, weight):
    sets = (
        "platform=kserve",
        "ranking.separate=true",
        "retrieval.canary.modelTag=recsys-retrieval:new",
        *canary_on("retrieval", weight),
    )
    objects = chart.render((), sets)
    isvcs = {i["metadata"]["name"]: i for i in helpers.objects_of(objects, "InferenceService")}
    retrieval = isvcs["recsys-retrieval"]
    predictor = retrieval["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == weight
    assert retrieval["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    assert retrieval["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert (
        retrieval["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"]
        == "true"
    )
    assert predictor["annotations"]["prometheus.io/scrape"] == "true"
    assert predictor["annotations"]["prometheus.io/port"] == "3000"
    assert predictor["labels"]["track"] == "canary"
    container = predictor["containers"][0]
    assert container["name"] == "kserve-container"
    assert container["ports"] == [{"name": "http1", "containerPort": 3000, "protocol": "TCP"}]
    assert container["image"] == "recsys:2.0.0"
    assert env_of(container)["RECSYS_RETRIEVAL_MODEL_TAG"] == "recsys-retrieval:new"
    assert "canaryTrafficPercent" not in isvcs["recsys-ranking"]["spec"]["predictor"]
    assert isvcs["recsys-ranking"]["spec"]["predictor"]["labels"]["track"] == "stable"


# The exact keys `recsys rollout` sets on `helm upgrade --reuse-values`; repeated --set arguments
# stand in for --reuse-values here (later ones win, as on an upgrade).
BASE = ("image.tag=1.0.0", "retrieval.modelTag=recsys-retrieval:m1")
START = (
    "retrieval.canary.enabled=true,retrieval.canary.image.tag=1.1.0,"
    "retrieval.canary.modelTag=recsys-retrieval:m2,retrieval.canary.weight=10"
)
PROMOTE = (
    "retrieval.image.tag=1.1.0,retrieval.modelTag=recsys-retrieval:m2,"
    "retrieval.canary.enabled=false"
)
ROLLBACK = "retrieval.canary.enabled=false"


def stable_retrieval(helpers, objects):
    deployments = deployments_by_name(helpers, objects)
    container = deployments["recsys-retrieval"]["spec"]["template"]["spec"]["containers"][0]
    return (
        container["image"],
        env_of(container)["RECSYS_RETRIEVAL_MODEL_TAG"],
        "recsys-retrieval-canary" in deployments,
    )


def test_rollout_start_promote_rollback_keys(chart, helpers):
    assert stable_retrieval(helpers, chart.render((), BASE)) == (
        "recsys:1.0.0",
        "recsys-retrieval:m1",
        False,
    )
    started = chart.render((), (*BASE, START))
    assert stable_retrieval(helpers, started) == ("recsys:1.0.0", "recsys-retrieval:m1", True)
    canary = deployments_by_name(helpers, started)["recsys-retrieval-canary"]["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert (canary["image"], env_of(canary)["RECSYS_RETRIEVAL_MODEL_TAG"]) == (
        "recsys:1.1.0",
        "recsys-retrieval:m2",
    )
    promoted = chart.render((), (*BASE, START, PROMOTE))
    assert stable_retrieval(helpers, promoted) == ("recsys:1.1.0", "recsys-retrieval:m2", False)
    rolled_back = chart.render((), (*BASE, START, ROLLBACK))
    assert stable_retrieval(helpers, rolled_back) == ("recsys:1.0.0", "recsys-retrieval:m1", False)


def test_operations_doc_lists_the_rollout_keys(helpers):
    doc = (helpers.repo_root / "docs" / "operations.md").read_text()
    for key in (
        "<component>.canary.enabled=true",
        "<component>.canary.image.tag=",
        "<component>.canary.modelTag=",
        "<component>.canary.weight=",
        "<component>.image.tag=",
        "<component>.modelTag=",
        "<component>.canary.enabled=false",
        "--reuse-values",
    ):
        assert key in doc, key


# A ranking-model canary while Ranking runs inside the gateway: a gateway canary with another
# ranking model, promoted into ranking.modelTag.
GATEWAY_START = (
    "gateway.canary.enabled=true,gateway.canary.image.tag=1.0.0,"
    "gateway.canary.rankingModelTag=recsys-ranking:r2,gateway.canary.weight=25"
)
GATEWAY_PROMOTE = (
    "gateway.image.tag=1.0.0,ranking.modelTag=recsys-ranking:r2,gateway.canary.enabled=false"
)


def gateway_ranking_models(helpers, objects) -> dict[str, str]:
    deployments = deployments_by_name(helpers, objects)
    return {
        name: env_of(d["spec"]["template"]["spec"]["containers"][0]).get("RECSYS_RANKING_MODEL_TAG")
        for name, d in deployments.items()
        if name.startswith("recsys-gateway")
    }


def test_ranking_model_canary_is_a_gateway_canary(chart, helpers):
    base = ("image.tag=1.0.0", "ranking.modelTag=recsys-ranking:r1")
    started = chart.render((), (*base, GATEWAY_START))
    assert gateway_ranking_models(helpers, started) == {
        "recsys-gateway": "recsys-ranking:r1",
        "recsys-gateway-canary": "recsys-ranking:r2",
    }
    canary = deployments_by_name(helpers, started)["recsys-gateway-canary"]["spec"]["template"]
    assert canary["metadata"]["annotations"]["recsys.io/model-tag"] == "recsys-ranking:r2"
    assert not [d for d in deployments_by_name(helpers, started) if "ranking" in d]
    promoted = chart.render((), (*base, GATEWAY_START, GATEWAY_PROMOTE))
    assert gateway_ranking_models(helpers, promoted) == {"recsys-gateway": "recsys-ranking:r2"}
    # Without a ranking canary tag the gateway canary keeps stable's ranker.
    plain = chart.render((), (*base, *canary_on("gateway", 10)))
    assert gateway_ranking_models(helpers, plain)["recsys-gateway-canary"] == "recsys-ranking:r1"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            canary_on("ranking", 10),
            "ranking.canary.enabled needs ranking.separate=true",
        ),
        (
            ("ranking.separate=true", "gateway.canary.rankingModelTag=recsys-ranking:r2"),
            "gateway.canary.rankingModelTag applies only when Ranking runs inside the gateway",
        ),
    ],
)
def test_contradictory_ranking_values_are_refused(chart, sets, message):
    assert message in " ".join(chart.render_error((), sets).split())
