"""Helm side of the rollout: exact command lines, and the chart rendered with what they set.

No cluster runs here, so `helm upgrade --reuse-values` itself cannot run. Instead:
- the planner's argv lists are compared with the expected ones, through a recording runner;
- the real `helm template` renders the chart with a base values file plus the very
  `--set`/`--set-string` flags of each step, in order (what --reuse-values merges), which proves
  the values pass the chart's schema and shows the canary Deployment, HTTPRoute weights and
  InferenceService canaryTrafficPercent that each step produces.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from recsys.rollout.actions import HelmActions
from recsys.rollout.errors import (
    CanaryAlreadyRunningError,
    HelmError,
    NoCanaryError,
    ReleaseNotFoundError,
    RolloutError,
    UnknownComponentError,
)
from recsys.rollout.helm import CommandResult, Helm, chart_values, values_from_file
from recsys.rollout.plan import (
    HelmTarget,
    apply_settings,
    plan_promote,
    plan_rollback,
    plan_set_weight,
    plan_start,
)

CHART = Path(__file__).resolve().parents[2] / "helm" / "recsys"
TARGET = HelmTarget(release="recsys", namespace="recsys", chart="helm/recsys", helm="helm")
UPGRADE = ["helm", "upgrade", "recsys", "helm/recsys", "--namespace", "recsys", "--reuse-values"]
WAIT = ["--wait", "--timeout", "10m"]
BASE = {
    "image": {"repository": "registry.example.com/recsys", "tag": "1.0.0"},
    "retrieval": {"modelTag": "recsys-retrieval:aaa111"},
    "ranking": {"modelTag": "recsys-ranking:bbb222"},
}
# Ranking as a Deployment of its own; by default (BASE) it runs inside the gateway.
SEPARATE = {**BASE, "ranking": {**BASE["ranking"], "separate": True}}
KSERVE = {**BASE, "platform": "kserve"}
GATEWAY_API = {
    **BASE,
    "gatewayAPI": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gw"}]},
}


def argv_without_description(argv) -> list[str]:
    argv = list(argv)
    index = argv.index("--description")
    return argv[:index] + argv[index + 2 :]


class RecordingRunner:
    """Stands in for the helm binary: records argv, answers from a script."""

    def __init__(self, answers: dict[str, CommandResult] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv) -> CommandResult:
        self.calls.append(list(argv))
        return self.answers.get(argv[1], CommandResult(0, "{}", ""))


def test_start_sets_every_canary_key_explicitly():
    values = chart_values(SEPARATE)
    [command] = plan_start(TARGET, values, "ranking", "1.10", 25, model_tag="recsys-ranking:ccc")
    assert argv_without_description(command.argv) == [
        *UPGRADE,
        "--set",
        "ranking.canary.enabled=true",
        "--set-string",
        "ranking.canary.image.repository=",
        # --set-string: "1.10" must not become the number 1.1
        "--set-string",
        "ranking.canary.image.tag=1.10",
        "--set-string",
        "ranking.canary.modelTag=recsys-ranking:ccc",
        "--set",
        "ranking.canary.weight=25",
        "--set",
        "ranking.canary.faults.latencyMs=0",
        "--set",
        "ranking.canary.faults.errorRate=0",
        *WAIT,
    ]
    assert command.argv[-2:] == (
        "--description",
        "recsys rollout: start ranking canary 1.10 model recsys-ranking:ccc at 25%",
    )
    assert "ranking.canary.image.tag=1.10" in command.shell()


def test_gateway_canary_has_no_model_tag_when_ranking_is_separate():
    [command] = plan_start(TARGET, chart_values(SEPARATE), "gateway", "1.1.0", 5)
    assert not any("odelTag" in part for part in command.argv)
    with pytest.raises(RolloutError, match=r"runs no model with ranking\.separate=true"):
        plan_start(TARGET, chart_values(SEPARATE), "gateway", "1.1.0", 5, model_tag="x:1")


def test_ranking_canary_in_the_default_topology_is_a_gateway_canary():
    values = chart_values(BASE)
    [start] = plan_start(TARGET, values, "ranking", "1.1.0", 25, model_tag="recsys-ranking:ccc")
    assert start.values() == {
        "gateway.canary.enabled": True,
        "gateway.canary.image.repository": "",
        "gateway.canary.image.tag": "1.1.0",
        "gateway.canary.rankingModelTag": "recsys-ranking:ccc",
        "gateway.canary.weight": 25,
        "gateway.canary.faults.latencyMs": 0,
        "gateway.canary.faults.errorRate": 0.0,
    }
    assert "start ranking canary (in the gateway)" in start.summary
    # A gateway canary started with a model tag is the same thing.
    [same] = plan_start(TARGET, values, "gateway", "1.1.0", 25, model_tag="recsys-ranking:ccc")
    assert same.values() == start.values()

    started = chart_values(apply_settings(BASE, [start]))
    [weight] = plan_set_weight(TARGET, started, "ranking", 50)
    assert weight.values() == {"gateway.canary.weight": 50}
    [promote] = plan_promote(TARGET, started, "ranking")
    assert promote.values() == {
        "gateway.image.tag": "1.1.0",
        "ranking.modelTag": "recsys-ranking:ccc",
        "gateway.canary.enabled": False,
    }
    [rollback] = plan_rollback(TARGET, started, "ranking")
    assert rollback.values() == {"gateway.canary.enabled": False}
    with pytest.raises(CanaryAlreadyRunningError, match="ranking runs inside the gateway"):
        plan_start(TARGET, started, "ranking", "1.2.0", 10, model_tag="recsys-ranking:ddd")
    with pytest.raises(CanaryAlreadyRunningError, match="model recsys-ranking:ccc"):
        plan_start(TARGET, started, "gateway", "1.2.0", 10)


def test_weight_promote_and_rollback_lines():
    values = chart_values(
        apply_settings(
            SEPARATE,
            plan_start(TARGET, chart_values(SEPARATE), "ranking", "1.1.0", 5, model_tag="r:ccc"),
        )
    )
    [weight] = plan_set_weight(TARGET, values, "ranking", 50)
    assert argv_without_description(weight.argv) == [
        *UPGRADE,
        "--set",
        "ranking.canary.weight=50",
        *WAIT,
    ]
    [promote] = plan_promote(TARGET, values, "ranking")
    assert argv_without_description(promote.argv) == [
        *UPGRADE,
        "--set-string",
        "ranking.image.tag=1.1.0",
        "--set-string",
        "ranking.modelTag=r:ccc",
        "--set",
        "ranking.canary.enabled=false",
        *WAIT,
    ]
    [rollback] = plan_rollback(TARGET, values, "ranking")
    assert argv_without_description(rollback.argv) == [
        *UPGRADE,
        "--set",
        "ranking.canary.enabled=false",
        *WAIT,
    ]
    [helm_rollback] = plan_rollback(TARGET, values, "ranking", to_revision=7)
    assert list(helm_rollback.argv) == [
        "helm",
        "rollback",
        "recsys",
        "7",
        "--namespace",
        "recsys",
        *WAIT,
    ]


def test_kserve_rollback_is_two_steps():
    values = chart_values(
        apply_settings(KSERVE, plan_start(TARGET, chart_values(KSERVE), "retrieval", "1.1.0", 20))
    )
    first, second = plan_rollback(TARGET, values, "retrieval")
    assert "retrieval.canary.weight=0" in first.argv
    assert "retrieval.canary.enabled=false" in second.argv


def test_kube_context_and_no_wait_are_passed_through():
    target = HelmTarget(kube_context="prod-eu", wait=False, chart="oci://charts/recsys")
    [command] = plan_set_weight(
        target, chart_values({**BASE, "gateway": {"canary": {"enabled": True}}}), "gateway", 10
    )
    assert command.argv[:8] == (
        "helm",
        "upgrade",
        "recsys",
        "oci://charts/recsys",
        "--namespace",
        "recsys",
        "--kube-context",
        "prod-eu",
    )
    assert "--wait" not in command.argv


def test_refusals_are_typed():
    values = chart_values(BASE)
    running = chart_values(
        {**BASE, "gateway": {"canary": {"enabled": True, "image": {"tag": "1.1.0"}}}}
    )
    with pytest.raises(CanaryAlreadyRunningError, match=r"image 1\.1\.0"):
        plan_start(TARGET, running, "gateway", "1.2.0", 10)
    with pytest.raises(NoCanaryError):
        plan_promote(TARGET, values, "gateway")
    with pytest.raises(NoCanaryError):
        plan_rollback(TARGET, values, "ranking")
    with pytest.raises(NoCanaryError):
        plan_set_weight(TARGET, values, "ranking", 10)
    with pytest.raises(UnknownComponentError):
        plan_start(TARGET, values, "frontend", "1.1.0", 10)
    with pytest.raises(RolloutError, match="latest"):
        plan_start(TARGET, values, "gateway", "latest", 10)
    with pytest.raises(RolloutError, match="promote instead"):
        plan_start(TARGET, values, "gateway", "1.1.0", 100)
    # Exact splitting (KServe, Gateway API) can take the whole share.
    assert plan_start(TARGET, chart_values(KSERVE), "ranking", "1.1.0", 100)
    with pytest.raises(RolloutError):
        HelmTarget(release="Not_A_Release")


@pytest.mark.parametrize(
    ("stable", "weight", "pods", "share"),
    # The table of docs/operations.md "Canary granularity".
    [(2, 10, 1, 33), (4, 20, 1, 20), (9, 10, 1, 10), (10, 25, 3, 23), (3, 50, 3, 50)],
)
def test_replica_arithmetic_matches_the_operations_guide(stable, weight, pods, share):
    values = chart_values({"gateway": {"autoscaling": {"enabled": False}, "replicaCount": stable}})
    assert values.canary_pods("gateway", weight) == pods
    assert round(values.effective_share("gateway", weight)) == share


def test_helm_errors_become_one_line_errors():
    not_found = CommandResult(1, "", "Error: release: not found\n")
    helm = Helm(TARGET, RecordingRunner({"get": not_found}))
    with pytest.raises(ReleaseNotFoundError, match="release 'recsys' not found in namespace"):
        helm.get_values()
    failed = CommandResult(1, "", "Error: UPGRADE FAILED: values don't meet the schema\n")
    helm = Helm(TARGET, RecordingRunner({"upgrade": failed}))
    commands = plan_set_weight(
        TARGET, chart_values({**BASE, "gateway": {"canary": {"enabled": True}}}), "gateway", 10
    )
    with pytest.raises(HelmError, match="UPGRADE FAILED"):
        helm.execute(commands, dry_run=False)


def test_actions_run_planned_commands_and_dry_run_runs_none():
    runner = RecordingRunner()
    helm = Helm(TARGET, runner)
    echoed = []
    actions = HelmActions(
        helm,
        chart_values(SEPARATE),
        "ranking",
        image_tag="1.1.0",
        model_tag="r:ccc",
        echo=lambda c, d: echoed.append((c.summary, d)),
    )
    actions.start(5)
    actions.set_weight(25)
    actions.promote()
    assert [call[1] for call in runner.calls] == ["upgrade", "upgrade", "upgrade"]
    assert "ranking.canary.weight=25" in runner.calls[1]
    assert echoed[0] == ("start ranking canary 1.1.0 model r:ccc at 5%", False)
    dry = RecordingRunner()
    dry_actions = HelmActions(
        Helm(TARGET, dry), chart_values(BASE), "ranking", image_tag="1.1.0", dry_run=True
    )
    lines = dry_actions.start(5) + dry_actions.rollback()
    assert dry.calls == []
    assert lines[0].startswith("helm upgrade recsys helm/recsys --namespace recsys")
    # Ranking inside the gateway (BASE): the canary is the gateway's.
    assert "gateway.canary.enabled=true" in lines[0]
    assert "gateway.canary.enabled=false" in lines[1]


def test_get_values_reads_json(tmp_path):
    runner = RecordingRunner({"get": CommandResult(0, '{"platform": "kserve"}', "")})
    assert Helm(TARGET, runner).get_values().platform == "kserve"
    assert runner.calls[0] == [
        "helm",
        "get",
        "values",
        "recsys",
        "--namespace",
        "recsys",
        "--all",
        "--output",
        "json",
    ]
    path = tmp_path / "values.yaml"
    path.write_text("gateway:\n  canary:\n    enabled: true\n")
    values = values_from_file(path, CHART)
    assert values.canary_enabled("gateway") and values.stable_replicas("gateway") == 2


# --- the real chart, rendered with each step's values --------------------------------------


def render(helm_path: str, tmp_path: Path, base: dict, steps: list[list]) -> list[dict]:
    """`helm template` with the base values and the --set flags of each step's commands."""
    base_file = tmp_path / "base-values.yaml"
    base_file.write_text(yaml.safe_dump(base))
    argv = [
        helm_path,
        "template",
        "recsys",
        str(CHART),
        "--namespace",
        "recsys",
        "-f",
        str(base_file),
    ]
    for commands in steps:
        for command in commands:
            parts = list(command.argv)
            for i, part in enumerate(parts):
                if part in {"--set", "--set-string"}:
                    argv += [part, parts[i + 1]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name), None)


def env_of(deployment: dict) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.helm
def test_ranking_canary_in_the_gateway_renders_start_promote_and_rollback(helm_path, tmp_path):
    values = chart_values(BASE, CHART)
    start = plan_start(TARGET, values, "ranking", "1.1.0", 25, model_tag="recsys-ranking:ccc")
    started = chart_values(apply_settings(values.raw, start))
    objects = render(helm_path, tmp_path, BASE, [start])
    assert find(objects, "Deployment", "recsys-ranking") is None
    assert find(objects, "Deployment", "recsys-ranking-canary") is None
    canary = find(objects, "Deployment", "recsys-gateway-canary")
    assert canary["spec"]["replicas"] == started.canary_pods("gateway", 25) == 1
    assert env_of(canary)["RECSYS_RANKING_MODEL_TAG"] == "recsys-ranking:ccc"
    assert env_of(canary)["BENTOML_SERVE_DEPENDS"].split() == [
        "Retrieval=http://recsys-retrieval.recsys.svc:3000"
    ]
    stable = find(objects, "Deployment", "recsys-gateway")
    assert env_of(stable)["RECSYS_RANKING_MODEL_TAG"] == "recsys-ranking:bbb222"

    promote = plan_promote(TARGET, started, "ranking")
    objects = render(helm_path, tmp_path, BASE, [start, promote])
    assert find(objects, "Deployment", "recsys-gateway-canary") is None
    stable = find(objects, "Deployment", "recsys-gateway")
    assert env_of(stable)["RECSYS_RANKING_MODEL_TAG"] == "recsys-ranking:ccc"
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/recsys:1.1.0"
    )

    rollback = plan_rollback(TARGET, started, "ranking")
    objects = render(helm_path, tmp_path, BASE, [start, rollback])
    assert find(objects, "Deployment", "recsys-gateway-canary") is None
    stable = find(objects, "Deployment", "recsys-gateway")
    assert env_of(stable)["RECSYS_RANKING_MODEL_TAG"] == "recsys-ranking:bbb222"


@pytest.mark.helm
def test_kubernetes_start_promote_and_rollback_render(helm_path, tmp_path):
    values = chart_values(SEPARATE, CHART)
    start = plan_start(TARGET, values, "ranking", "1.1.0", 25, model_tag="recsys-ranking:ccc")
    started = chart_values(apply_settings(values.raw, start))
    objects = render(helm_path, tmp_path, SEPARATE, [start])
    canary = find(objects, "Deployment", "recsys-ranking-canary")
    assert canary is not None
    assert canary["spec"]["replicas"] == started.canary_pods("ranking", 25) == 1
    assert canary["spec"]["template"]["metadata"]["labels"]["track"] == "canary"
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/recsys:1.1.0"
    )
    assert env_of(canary)["RECSYS_RANKING_MODEL_TAG"] == "recsys-ranking:ccc"
    assert env_of(canary)["RECSYS_TRACK"] == "canary"
    assert "RECSYS_FAULT_ERROR_RATE" not in env_of(canary)

    promote = plan_promote(TARGET, started, "ranking")
    objects = render(helm_path, tmp_path, SEPARATE, [start, promote])
    assert find(objects, "Deployment", "recsys-ranking-canary") is None
    stable = find(objects, "Deployment", "recsys-ranking")
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/recsys:1.1.0"
    )
    assert env_of(stable)["RECSYS_RANKING_MODEL_TAG"] == "recsys-ranking:ccc"

    rollback = plan_rollback(TARGET, started, "ranking")
    objects = render(helm_path, tmp_path, SEPARATE, [start, rollback])
    assert find(objects, "Deployment", "recsys-ranking-canary") is None
    stable = find(objects, "Deployment", "recsys-ranking")
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/recsys:1.0.0"
    )
    assert env_of(stable)["RECSYS_RANKING_MODEL_TAG"] == "recsys-ranking:bbb222"


@pytest.mark.helm
@pytest.mark.parametrize("weight", [5, 25, 50, 75])
def test_canary_replicas_follow_the_weight_like_the_chart(helm_path, tmp_path, weight):
    values = chart_values(BASE, CHART)
    start = plan_start(TARGET, values, "retrieval", "1.1.0", weight)
    objects = render(helm_path, tmp_path, BASE, [start])
    canary = find(objects, "Deployment", "recsys-retrieval-canary")
    assert canary["spec"]["replicas"] == values.canary_pods("retrieval", weight)


@pytest.mark.helm
def test_gateway_api_weights_render_exactly(helm_path, tmp_path):
    values = chart_values(GATEWAY_API, CHART)
    start = plan_start(TARGET, values, "gateway", "1.1.0", 5)
    step = plan_set_weight(TARGET, chart_values(apply_settings(values.raw, start)), "gateway", 50)
    for steps, expected in (([start], (95, 5)), ([start, step], (50, 50))):
        route = find(render(helm_path, tmp_path, GATEWAY_API, steps), "HTTPRoute", "recsys-gateway")
        weights = [ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]]
        assert tuple(weights) == expected


@pytest.mark.helm
def test_kserve_canary_traffic_percent_and_two_step_rollback(helm_path, tmp_path):
    values = chart_values(KSERVE, CHART)
    start = plan_start(TARGET, values, "retrieval", "1.1.0", 20, model_tag="recsys-retrieval:z")
    started = chart_values(apply_settings(values.raw, start))
    isvc = find(
        render(helm_path, tmp_path, KSERVE, [start]), "InferenceService", "recsys-retrieval"
    )
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 20
    assert predictor["labels"]["track"] == "canary"
    pin, disable = plan_rollback(TARGET, started, "retrieval")
    isvc = find(
        render(helm_path, tmp_path, KSERVE, [start, [pin]]), "InferenceService", "recsys-retrieval"
    )
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    isvc = find(
        render(helm_path, tmp_path, KSERVE, [start, [pin], [disable]]),
        "InferenceService",
        "recsys-retrieval",
    )
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert isvc["spec"]["predictor"]["labels"]["track"] == "stable"
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["image"] == "registry.example.com/recsys:1.0.0"


@pytest.mark.helm
def test_injected_faults_reach_only_the_canary(helm_path, tmp_path):
    values = chart_values(BASE, CHART)
    start = plan_start(
        TARGET, values, "gateway", "1.1.0", 25, fault_latency_ms=50, fault_error_rate=0.05
    )
    objects = render(helm_path, tmp_path, BASE, [start])
    canary_env = env_of(find(objects, "Deployment", "recsys-gateway-canary"))
    assert canary_env["RECSYS_FAULT_LATENCY_MS"] == "50"
    assert canary_env["RECSYS_FAULT_ERROR_RATE"] == "0.05"
    assert "RECSYS_FAULT_LATENCY_MS" not in env_of(find(objects, "Deployment", "recsys-gateway"))


def test_a_failed_start_can_still_be_rolled_back():
    timeout = CommandResult(1, "", "Error: UPGRADE FAILED: context deadline exceeded\n")
    runner = RecordingRunner({"upgrade": timeout})
    actions = HelmActions(Helm(TARGET, runner), chart_values(BASE), "gateway", image_tag="1.1.0")
    with pytest.raises(HelmError, match="context deadline exceeded"):
        actions.start(10)
    runner.answers = {}
    [line] = actions.rollback()
    assert "--set gateway.canary.enabled=false" in line
    assert runner.calls[-1][1] == "upgrade"
