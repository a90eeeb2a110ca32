"""The exact `helm` command lines of each rollout step, from the release's current values.

Nothing here runs anything: `recsys rollout` executes these commands (or prints them with
`--dry-run`), the tests compare them with expected argv lists and render the chart with the
values they set. Helm stays the source of truth: every step is a `helm upgrade --reuse-values`
(or a `helm rollback`), so `helm history` lists each one with its description.

Keys are those of helm/recsys/values.yaml (see docs/operations.md "Canary, promote, roll back"):
`<component>.canary.enabled|image.repository|image.tag|modelTag|weight|faults.*`, and on
promotion `<component>.image.repository|image.tag|modelTag`.

By default Ranking runs inside the gateway (`ranking.separate: false`): a ranking canary is then
a gateway canary whose ranking model is `gateway.canary.rankingModelTag`, promoted into
`ranking.modelTag` (`ChartValues.workload` maps the component).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from recsys.rollout.analysis import check_component
from recsys.rollout.errors import CanaryAlreadyRunningError, NoCanaryError, RolloutError

# Values the chart's schema accepts for a tag / model tag, minus what `--set` would split on.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@/+-]{0,200}")
_REPOSITORY = re.compile(r"[a-z0-9][a-z0-9._:/-]{0,250}")
_RELEASE = re.compile(r"[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?")


@dataclass(frozen=True)
class HelmTarget:
    """Where the commands act.

    Attributes:
        release: Helm release name.
        namespace: Kubernetes namespace of the release.
        chart: chart reference for `helm upgrade` (a path such as helm/recsys, or repo/chart).
        helm: the helm binary.
        kube_context: kubeconfig context; None uses the current one.
        timeout: `--timeout` of upgrades and rollbacks (pods must be ready within it).
        wait: pass `--wait`, so a step returns only once its pods are ready.
    """

    release: str = "recsys"
    namespace: str = "recsys"
    chart: str = "helm/recsys"
    helm: str = "helm"
    kube_context: str | None = None
    timeout: str = "10m"
    wait: bool = True

    def __post_init__(self) -> None:
        if not _RELEASE.fullmatch(self.release):
            raise RolloutError(f"not a valid Helm release name: {self.release!r}")

    def scope(self) -> list[str]:
        """`--namespace` (and `--kube-context`) flags every command carries."""
        flags = ["--namespace", self.namespace]
        if self.kube_context:
            flags += ["--kube-context", self.kube_context]
        return flags

    def get_values(self) -> list[str]:
        """argv reading the release's computed values as JSON."""
        return [
            self.helm,
            "get",
            "values",
            self.release,
            *self.scope(),
            "--all",
            "--output",
            "json",
        ]

    def history(self) -> list[str]:
        """argv of `helm history` as JSON."""
        return [self.helm, "history", self.release, *self.scope(), "--output", "json"]


@dataclass(frozen=True)
class Setting:
    """One `--set` (or `--set-string` for text, so a tag like 1.10 stays a string)."""

    key: str
    value: str | int | float | bool

    def flag(self) -> list[str]:
        if isinstance(self.value, bool):
            return ["--set", f"{self.key}={'true' if self.value else 'false'}"]
        if isinstance(self.value, int):
            return ["--set", f"{self.key}={self.value}"]
        if isinstance(self.value, float):
            text = f"{self.value:.6f}".rstrip("0").rstrip(".") or "0"
            return ["--set", f"{self.key}={text}"]
        return ["--set-string", f"{self.key}={self.value}"]


@dataclass(frozen=True)
class HelmCommand:
    """One helm invocation and what it does, for logs and `--dry-run`."""

    argv: tuple[str, ...]
    summary: str
    settings: tuple[Setting, ...] = field(default=())

    def shell(self) -> str:
        """The command as one copy-pasteable shell line."""
        return shlex.join(self.argv)

    def values(self) -> dict[str, str | int | float | bool]:
        """The keys this command sets (empty for `helm rollback`)."""
        return {s.key: s.value for s in self.settings}


def upgrade(target: HelmTarget, settings: list[Setting], summary: str) -> HelmCommand:
    """`helm upgrade --reuse-values` setting exactly `settings`."""
    argv = [target.helm, "upgrade", target.release, target.chart, *target.scope(), "--reuse-values"]
    for setting in settings:
        argv += setting.flag()
    if target.wait:
        argv += ["--wait", "--timeout", target.timeout]
    argv += ["--description", f"recsys rollout: {summary}"[:200]]
    return HelmCommand(tuple(argv), summary, tuple(settings))


class ChartValues:
    """Read-only view of a release's values (`helm get values --all --output json`)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    @property
    def platform(self) -> str:
        return str(self.raw.get("platform") or "kubernetes")

    def component(self, name: str) -> dict[str, Any]:
        check_component(name)
        return self.raw.get(name) or {}

    @property
    def ranking_in_gateway(self) -> bool:
        """True when Ranking runs inside the gateway's process (ranking.separate is false)."""
        return not (self.raw.get("ranking") or {}).get("separate")

    def workload(self, name: str) -> str:
        """The component whose pods run `name`: the gateway for ranking unless it is separate."""
        check_component(name)
        return "gateway" if name == "ranking" and self.ranking_in_gateway else name

    def model_key(self, name: str) -> str | None:
        """Key under `<workload>.canary` holding the canary's model tag, or None (no model)."""
        if self.workload(name) != "gateway":
            return "modelTag"
        return "rankingModelTag" if self.ranking_in_gateway else None

    def canary(self, name: str) -> dict[str, Any]:
        return self.component(name).get("canary") or {}

    def canary_enabled(self, name: str) -> bool:
        return bool(self.canary(name).get("enabled"))

    def canary_weight(self, name: str) -> int:
        return int(self.canary(name).get("weight") or 0)

    def weight_is_exact(self, name: str) -> bool:
        """True when W% is split per request (KServe, or a Gateway API route for `name`)."""
        if self.platform == "kserve":
            return True
        gateway_api = self.raw.get("gatewayAPI") or {}
        if not gateway_api.get("enabled"):
            return False
        return name == "gateway" or bool(gateway_api.get("meshRouting"))

    def stable_replicas(self, name: str) -> int:
        """Stable pods the canary is sized against (HPA minimum when autoscaling)."""
        component = self.component(name)
        autoscaling = component.get("autoscaling") or {}
        if autoscaling.get("enabled"):
            return int(autoscaling.get("minReplicas") or 1)
        return int(component.get("replicaCount") or 1)

    def canary_pods(self, name: str, weight: int) -> int:
        """Canary pods the chart runs for `weight` (same integer maths as recsys.canaryReplicas)."""
        stable = self.stable_replicas(name)
        if self.platform == "kserve":
            return 0  # Knative sizes revisions itself
        if self.weight_is_exact(name):
            return max(1, (stable * weight + 99) // 100)
        if weight <= 0:
            return 0
        rest = 100 - weight
        return max(1, (stable * weight + rest // 2) // rest)

    def effective_share(self, name: str, weight: int) -> float:
        """Percent of requests the canary really gets at `weight`."""
        if self.weight_is_exact(name) or weight <= 0:
            return float(weight)
        pods = self.canary_pods(name, weight)
        return 100.0 * pods / (self.stable_replicas(name) + pods)

    def canary_summary(self, name: str) -> str:
        canary = self.canary(name)
        image = (canary.get("image") or {}).get("tag") or "(stable image)"
        key = self.model_key(name)
        model = (canary.get(key) if key else "") or ""
        return (
            f"image {image}"
            + (f", model {model}" if model else "")
            + (f", weight {self.canary_weight(name)}%")
        )


def _check_weight(values: ChartValues, component: str, weight: int) -> None:
    top = 100 if values.weight_is_exact(component) else 99
    if not 1 <= weight <= top:
        hint = (
            ""
            if top == 100
            else " (replica-ratio splitting cannot give the canary everything: promote instead)"
        )
        raise RolloutError(
            f"--weight must be between 1 and {top} for {component}, got {weight}" + hint
        )


def _check_tag(flag: str, value: str) -> None:
    if value == "latest":
        raise RolloutError(f"{flag} 'latest' is rejected by the chart: pin a version")
    if not _TAG.fullmatch(value):
        raise RolloutError(f"{flag} {value!r} has characters a tag cannot have")


def plan_start(
    target: HelmTarget,
    values: ChartValues,
    component: str,
    image_tag: str,
    weight: int,
    model_tag: str | None = None,
    image_repository: str | None = None,
    fault_latency_ms: int = 0,
    fault_error_rate: float = 0.0,
) -> list[HelmCommand]:
    """Start a canary of `component` taking `weight` percent.

    Every canary key is set explicitly, so nothing of an earlier canary survives
    `--reuse-values` (an old model tag, repository or injected fault).

    A ranking canary while Ranking runs inside the gateway is a gateway canary carrying
    `model_tag` as its ranking model (`gateway.canary.rankingModelTag`).

    Raises:
        CanaryAlreadyRunningError: the component (or the gateway it runs in) has a canary.
        RolloutError: invalid weight or tag, or a model tag for a gateway that runs no model.
    """
    asked = component
    component = values.workload(asked)
    model_key = values.model_key(asked)
    if values.canary_enabled(component):
        inside = (
            "ranking runs inside the gateway (ranking.separate=false), whose canary "
            if asked != component
            else f"a {component} canary "
        )
        raise CanaryAlreadyRunningError(
            f"{inside}is already running ({values.canary_summary(component)}): "
            f"promote or roll it back first (recsys rollout promote|rollback --component "
            f"{component})"
        )
    _check_weight(values, component, weight)
    _check_tag("--image-tag", image_tag)
    if model_key is None and model_tag:
        raise RolloutError(
            "the gateway runs no model with ranking.separate=true: drop --model-tag, or give "
            "it to --component ranking"
        )
    if model_tag:
        _check_tag("--model-tag", model_tag)
    if image_repository and not _REPOSITORY.fullmatch(image_repository):
        raise RolloutError(f"--image-repository {image_repository!r} is not a repository")
    if not 0 <= fault_error_rate <= 1 or fault_latency_ms < 0:
        raise RolloutError("fault injection needs latency >= 0 and an error rate in 0..1")
    prefix = f"{component}.canary"
    settings = [
        Setting(f"{prefix}.enabled", True),
        Setting(f"{prefix}.image.repository", image_repository or ""),
        Setting(f"{prefix}.image.tag", image_tag),
    ]
    if model_key is not None:
        settings.append(Setting(f"{prefix}.{model_key}", model_tag or ""))
    settings += [
        Setting(f"{prefix}.weight", weight),
        Setting(f"{prefix}.faults.latencyMs", int(fault_latency_ms)),
        Setting(f"{prefix}.faults.errorRate", float(fault_error_rate)),
    ]
    what = f"start {component} canary {image_tag}" + (f" model {model_tag}" if model_tag else "")
    if asked != component:
        what = f"start ranking canary (in the gateway): {what[6:]}"
    return [upgrade(target, settings, f"{what} at {weight}%")]


def plan_set_weight(
    target: HelmTarget, values: ChartValues, component: str, weight: int
) -> list[HelmCommand]:
    """Move a running canary to `weight` percent."""
    component = values.workload(component)
    if not values.canary_enabled(component):
        raise NoCanaryError(f"no {component} canary is running: start one first")
    _check_weight(values, component, weight)
    settings = [Setting(f"{component}.canary.weight", weight)]
    return [upgrade(target, settings, f"{component} canary weight {weight}%")]


def plan_promote(target: HelmTarget, values: ChartValues, component: str) -> list[HelmCommand]:
    """Stable takes the canary's image (and model), then the canary is switched off.

    A gateway canary's ranking model (Ranking inside the gateway) becomes `ranking.modelTag`.
    """
    model_key = values.model_key(component)
    component = values.workload(component)
    if not values.canary_enabled(component):
        raise NoCanaryError(f"no {component} canary is running: nothing to promote")
    canary = values.canary(component)
    image = canary.get("image") or {}
    settings: list[Setting] = []
    if image.get("repository"):
        settings.append(Setting(f"{component}.image.repository", str(image["repository"])))
    if image.get("tag"):
        settings.append(Setting(f"{component}.image.tag", str(image["tag"])))
    if model_key is not None and canary.get(model_key):
        owner = "ranking" if model_key == "rankingModelTag" else component
        stable_key = f"{owner}.modelTag"
        settings.append(Setting(stable_key, str(canary[model_key])))
    settings.append(Setting(f"{component}.canary.enabled", False))
    summary = f"promote {component} canary ({values.canary_summary(component)})"
    return [upgrade(target, settings, summary)]


def plan_rollback(
    target: HelmTarget, values: ChartValues, component: str, to_revision: int | None = None
) -> list[HelmCommand]:
    """Send every request back to stable; stable pods are never touched.

    kubernetes: one upgrade, `canary.enabled=false`. kserve: first `canary.weight=0` (KServe
    pins 100% to the last rolled-out revision at once), then `canary.enabled=false` (puts the
    stable spec back as a new revision). With `to_revision`: `helm rollback` to that revision.
    """
    component = values.workload(component)
    if to_revision is not None:
        if to_revision < 1:
            raise RolloutError(f"--to-revision must be a Helm revision (>= 1), got {to_revision}")
        argv = [target.helm, "rollback", target.release, str(to_revision), *target.scope()]
        if target.wait:
            argv += ["--wait", "--timeout", target.timeout]
        return [HelmCommand(tuple(argv), f"helm rollback to revision {to_revision}")]
    if not values.canary_enabled(component):
        raise NoCanaryError(f"no {component} canary is running: nothing to roll back")
    commands = []
    if values.platform == "kserve":
        commands.append(
            upgrade(
                target,
                [Setting(f"{component}.canary.weight", 0)],
                f"roll back {component}: pin 100% to the previous revision",
            )
        )
    commands.append(
        upgrade(
            target,
            [Setting(f"{component}.canary.enabled", False)],
            f"roll back {component} canary ({values.canary_summary(component)})",
        )
    )
    return commands


def apply_settings(raw: dict[str, Any], commands: list[HelmCommand]) -> dict[str, Any]:
    """The values a release would have after `commands` (what --reuse-values merges).

    Used to chain plans without a cluster (dry runs, the rehearsal) and by the tests that render
    the chart with these values.
    """
    import copy

    merged = copy.deepcopy(raw)
    for command in commands:
        for key, value in command.values().items():
            node = merged
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return merged
