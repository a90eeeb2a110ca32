"""`recsys rollout`: canary status, preflight, start, analysis, promotion and rollback.

Only typer is imported here; each command imports what it needs, so `recsys --help` stays fast.
Exit codes: 0 pass / done, 1 fail (analysis or preflight) or rolled back, 2 error (one line,
from recsys.cli.main.main), 3 inconclusive (or held for lack of evidence).
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

rollout_app = typer.Typer(
    help="Canary rollouts: status, preflight, start, analyze, run, promote, rollback.",
    no_args_is_help=True,
)

Component = Annotated[str, typer.Option("--component", "-c", help="gateway, retrieval or ranking")]
Release = Annotated[str, typer.Option(envvar="RECSYS_RELEASE", help="Helm release name")]
Namespace = Annotated[
    str, typer.Option("--namespace", "-n", envvar="RECSYS_NAMESPACE", help="Namespace")
]
Chart = Annotated[
    str | None,
    typer.Option(
        envvar="RECSYS_HELM_CHART",
        help="Chart for `helm upgrade` (default: this repository's helm/recsys)",
    ),
]
HelmBin = Annotated[
    str | None, typer.Option("--helm", help="helm binary (default: PATH, then .tools/bin/helm)")
]
KubeContext = Annotated[str | None, typer.Option(help="kubeconfig context")]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Print the exact helm commands instead of running them")
]
ValuesFrom = Annotated[
    Path | None,
    typer.Option(
        help="Plan from this values file (merged over the chart defaults) instead of "
        "`helm get values`: offline dry runs"
    ),
]
Timeout = Annotated[str, typer.Option(help="helm --timeout (canary pods ready within it)")]
PrometheusURL = Annotated[
    str,
    typer.Option(envvar="RECSYS_PROMETHEUS_URL", help="Prometheus base URL"),
]
Window = Annotated[str, typer.Option(help="Analysis window ending now, e.g. 5m, 90s")]
Selector = Annotated[
    str,
    typer.Option(
        envvar="RECSYS_PROMETHEUS_SELECTOR",
        help='Extra label matchers, e.g. namespace="recsys",release="recsys"',
    ),
]
SLOPath = Annotated[Path | None, typer.Option("--slo", help="SLO file (default: slo.yaml)")]
SLOEndpoint = Annotated[
    str, typer.Option(help="slo.yaml endpoint whose p95/p99/error objectives apply")
]
Endpoint = Annotated[
    str | None,
    typer.Option(help="HTTP path analysed (default: /recommend, /retrieve or /rank)"),
]
P95 = Annotated[float | None, typer.Option("--p95-ms", help="Override the p95 ceiling (ms)")]
P99 = Annotated[float | None, typer.Option("--p99-ms", help="Override the p99 ceiling (ms)")]
LatencyRatio = Annotated[
    float | None, typer.Option(help="Override canary.max_latency_ratio (canary/stable p95)")
]
MinRequests = Annotated[int | None, typer.Option(help="Override canary.min_requests")]
LatencySlack = Annotated[
    float, typer.Option(help="p95 differences below this many ms count as noise")
]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON")]


def _console():
    from rich.console import Console

    return Console()


def _echo(console):
    from recsys.rollout.render import command_line

    def echo(command, dry_run: bool) -> None:
        console.print(f"# {command.summary}", style="dim", highlight=False)
        console.print(command_line(command, dry_run), soft_wrap=True, highlight=False)

    return echo


def _note_workload(console, values, component: str) -> None:
    """Say so when a ranking canary is carried by the gateway (Ranking runs inside it)."""
    if values.workload(component) != component:
        console.print(
            "ranking runs inside the gateway (ranking.separate=false): its canary is a gateway "
            "canary with another ranking model",
            style="dim",
            highlight=False,
        )


def _change_release(options: HelmOptions, component: str, plan: Callable[..., Any]):
    """Plan helm commands against the release's values and carry them out (or print them).

    Args:
        options: the release and how to reach it.
        component: the component the command is about (named when Ranking runs in the gateway).
        plan: (target, values) -> the helm commands.

    Returns:
        (the release's values, the console), for what the command prints next.
    """
    runner = options.runner()
    values = options.values(runner)
    console = _console()
    _note_workload(console, values, component)
    runner.execute(plan(runner.target, values), options.dry_run, _echo(console))
    return values, console


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str))


Command = TypeVar("Command", bound=Callable[..., Any])


def with_options(**groups: Callable[..., Any]) -> Callable[[Command], Command]:
    """Declare a group of options once and hand each command one object built from them.

    Each keyword names a parameter of the command and the function that declares the group's
    options (its parameters, typed with the Annotated aliases above) and builds the object. The
    command's signature, as Typer reads it, gets the group's options in place of that parameter,
    so the command line stays exactly as if every command declared them itself.
    """

    def decorate(command: Command) -> Command:
        hints = get_type_hints(command, include_extras=True)
        params = [
            p.replace(annotation=hints[p.name])
            for p in inspect.signature(command).parameters.values()
            if p.name not in groups
        ]
        members: dict[str, list[str]] = {}
        for name, build in groups.items():
            build_hints = get_type_hints(build, include_extras=True)
            options = list(inspect.signature(build).parameters.values())
            params += [p.replace(annotation=build_hints[p.name]) for p in options]
            members[name] = [p.name for p in options]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            for name, build in groups.items():
                kwargs[name] = build(**{option: kwargs.pop(option) for option in members[name]})
            return command(**kwargs)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class HelmOptions:
    """How a command reaches the release: `helm upgrade --reuse-values` on it, or a dry run."""

    release: str
    namespace: str
    chart: str | None
    helm: str | None
    kube_context: str | None
    timeout: str
    dry_run: bool
    values_from: Path | None

    def runner(self):
        """The Helm runner of the release."""
        from recsys.rollout.helm import DEFAULT_CHART, Helm, find_helm
        from recsys.rollout.plan import HelmTarget

        target = HelmTarget(
            release=self.release,
            namespace=self.namespace,
            chart=self.chart or str(DEFAULT_CHART),
            helm=find_helm(self.helm),
            kube_context=self.kube_context,
            timeout=self.timeout,
        )
        return Helm(target)

    def values(self, runner):
        """The release's values: --values-from merged over the chart defaults, else helm's."""
        from recsys.rollout.helm import values_from_file

        if self.values_from is not None:
            chart = Path(runner.target.chart)
            return values_from_file(self.values_from, chart if chart.is_dir() else None)
        return runner.get_values()


def helm_options(
    release: Release = "recsys",
    namespace: Namespace = "recsys",
    chart: Chart = None,
    helm: HelmBin = None,
    kube_context: KubeContext = None,
    timeout: Timeout = "10m",
    dry_run: DryRun = False,
    values_from: ValuesFrom = None,
) -> HelmOptions:
    """The Helm options of every command that changes the release."""
    return HelmOptions(release, namespace, chart, helm, kube_context, timeout, dry_run, values_from)


@dataclass(frozen=True)
class AnalysisOptions:
    """Where the metrics come from and which limits they are held to."""

    prometheus_url: str
    selector: str
    endpoint: str | None
    slo: Path | None
    slo_endpoint: str
    p95_ms: float | None
    p99_ms: float | None
    max_latency_ratio: float | None
    min_requests: int | None
    latency_slack_ms: float

    def limits(self):
        """The thresholds: the SLO file's endpoint objectives with the overrides applied."""
        from recsys.ops.slo import load_slo
        from recsys.rollout.analysis import Thresholds

        return Thresholds.from_slo(load_slo(self.slo), self.slo_endpoint).with_overrides(
            p95_ms=self.p95_ms,
            p99_ms=self.p99_ms,
            max_latency_ratio=self.max_latency_ratio,
            min_requests=self.min_requests,
            latency_slack_ms=self.latency_slack_ms,
        )

    def analyze_once(self, component: str, window_s: float, limits, at: float | None = None):
        """One canary-vs-stable analysis of `component` over the window ending at `at` (now)."""
        from recsys.rollout.analysis import AnalysisTarget
        from recsys.rollout.prometheus import PrometheusClient, analyze

        target = AnalysisTarget(component, window_s, self.selector, self.endpoint)
        return analyze(PrometheusClient(self.prometheus_url), target, limits, at)


def analysis_options(
    prometheus_url: PrometheusURL = "http://127.0.0.1:9090",
    selector: Selector = "",
    endpoint: Endpoint = None,
    slo: SLOPath = None,
    slo_endpoint: SLOEndpoint = "recommend",
    p95_ms: P95 = None,
    p99_ms: P99 = None,
    max_latency_ratio: LatencyRatio = None,
    min_requests: MinRequests = None,
    latency_slack_ms: LatencySlack = 0.0,
) -> AnalysisOptions:
    """The Prometheus and threshold options of `analyze` and `run`."""
    return AnalysisOptions(
        prometheus_url,
        selector,
        endpoint,
        slo,
        slo_endpoint,
        p95_ms,
        p99_ms,
        max_latency_ratio,
        min_requests,
        latency_slack_ms,
    )


@rollout_app.command("status")
def status(
    release: Release = "recsys",
    namespace: Namespace = "recsys",
    kubeconfig: Annotated[
        str | None, typer.Option(help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    ] = None,
    context: KubeContext = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Per component: stable and canary versions, traffic share and readiness (Kubernetes API)."""
    from recsys.rollout.kube import api_client, collect_status
    from recsys.rollout.render import status_table

    client = api_client(kubeconfig, context)
    try:
        components = collect_status(client, release, namespace)
    finally:
        client.close()
    console = _console()
    if as_json:
        console.print_json(json.dumps([c.to_dict() for c in components]))
        return
    console.print(status_table(components))


@rollout_app.command("preflight")
def preflight(
    candidate_ranking: Annotated[str, typer.Option(help="Candidate ranking model tag")],
    stable_ranking: Annotated[str, typer.Option(help="Stable ranking model tag")],
    data: Annotated[Path, typer.Option(help="Data set directory")] = Path("data"),
    candidate_retrieval: Annotated[
        str | None, typer.Option(help="Candidate retrieval tag (default: the ranking model's)")
    ] = None,
    stable_retrieval: Annotated[
        str | None, typer.Option(help="Stable retrieval tag (default: the ranking model's)")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Allowed relative NDCG@10 drop (0.02 = 2%)")
    ] = 0.02,
    movielens: Annotated[bool, typer.Option(help="Read MovieLens files from --data")] = False,
    json_out: JsonOut = None,
) -> None:
    """Refuse a candidate whose offline NDCG@10 drops beyond the tolerance (exit 1)."""
    from recsys.rollout.preflight import run_preflight
    from recsys.rollout.render import preflight_table

    console = _console()
    with console.status("evaluating stable and candidate models on the latest window"):
        result = run_preflight(
            data,
            stable_ranking,
            candidate_ranking,
            stable_retrieval=stable_retrieval,
            candidate_retrieval=candidate_retrieval,
            tolerance=tolerance,
            movielens=movielens,
        )
    console.print(preflight_table(result))
    verdict = "[green]PASS[/]" if result.passed else "[red]REFUSED[/]"
    console.print(f"preflight: {verdict}  {result.reason}")
    _write_json(json_out, result.to_dict())
    raise typer.Exit(result.exit_code)


@rollout_app.command("start")
@with_options(helm_options=helm_options)
def start(
    component: Component,
    image_tag: Annotated[str, typer.Option(help="Image tag of the canary")],
    weight: Annotated[int, typer.Option(help="Percent of traffic for the canary")] = 10,
    model_tag: Annotated[
        str | None,
        typer.Option(
            help="Model tag of the canary: retrieval's, ranking's, or the gateway's in-process "
            "ranker (ranking.separate=false)"
        ),
    ] = None,
    image_repository: Annotated[
        str | None, typer.Option(help="Canary image repository (default: stable's)")
    ] = None,
    fault_latency_ms: Annotated[
        int, typer.Option(help="TEST ONLY: latency injected into the canary", hidden=True)
    ] = 0,
    fault_error_rate: Annotated[
        float, typer.Option(help="TEST ONLY: error share injected into the canary", hidden=True)
    ] = 0.0,
    *,
    helm_options: HelmOptions,
) -> None:
    """Start a canary: `helm upgrade --reuse-values` with <component>.canary.* set."""
    from recsys.rollout.plan import plan_start

    values, console = _change_release(
        helm_options,
        component,
        lambda target, values: plan_start(
            target,
            values,
            component,
            image_tag,
            weight,
            model_tag=model_tag,
            image_repository=image_repository,
            fault_latency_ms=fault_latency_ms,
            fault_error_rate=fault_error_rate,
        ),
    )
    component = values.workload(component)
    share = values.effective_share(component, weight)
    if not values.weight_is_exact(component):
        pods = values.canary_pods(component, weight)
        console.print(
            f"{component}: {pods} canary pod(s) beside "
            f"{values.stable_replicas(component)} stable: about {share:.0f}% of "
            f"requests (asked {weight}%; replica ratio)"
        )
    else:
        console.print(f"{component}: canary gets exactly {weight}% of requests")


@rollout_app.command("set-weight")
@with_options(helm_options=helm_options)
def set_weight(
    component: Component,
    weight: Annotated[int, typer.Option(help="New percent of traffic for the canary")],
    *,
    helm_options: HelmOptions,
) -> None:
    """Move a running canary to another share of traffic."""
    from recsys.rollout.plan import plan_set_weight

    _change_release(
        helm_options,
        component,
        lambda target, values: plan_set_weight(target, values, component, weight),
    )


@rollout_app.command("promote")
@with_options(helm_options=helm_options)
def promote(
    component: Component,
    *,
    helm_options: HelmOptions,
) -> None:
    """Stable takes the canary's image (and model tag); the canary is switched off."""
    from recsys.rollout.plan import plan_promote

    _change_release(
        helm_options, component, lambda target, values: plan_promote(target, values, component)
    )


@rollout_app.command("rollback")
@with_options(helm_options=helm_options)
def rollback(
    component: Component,
    to_revision: Annotated[
        int | None, typer.Option(help="Use `helm rollback` to this revision instead")
    ] = None,
    *,
    helm_options: HelmOptions,
) -> None:
    """Send all traffic back to stable (KServe: weight 0 first, then canary off)."""
    from recsys.rollout.plan import ChartValues, plan_rollback

    runner = helm_options.runner()
    values = ChartValues({}) if to_revision is not None else helm_options.values(runner)
    commands = plan_rollback(runner.target, values, component, to_revision=to_revision)
    console = _console()
    if to_revision is None:
        _note_workload(console, values, component)
    runner.execute(commands, helm_options.dry_run, _echo(console))


def _print_report(console, report) -> None:
    from recsys.rollout.render import analysis_table, checks_table, verdict_line

    console.print(analysis_table(report))
    console.print(checks_table(report))
    console.print(verdict_line(report))


@rollout_app.command("analyze")
@with_options(analysis=analysis_options)
def analyze(
    component: Component = "gateway",
    window: Window = "5m",
    at: Annotated[
        float | None, typer.Option(help="Evaluate at this Unix time (default: now)")
    ] = None,
    json_out: JsonOut = None,
    *,
    analysis: AnalysisOptions,
) -> None:
    """Canary vs stable from Prometheus against slo.yaml: exit 0 pass, 1 fail, 3 inconclusive.

    While Ranking runs inside the gateway (the chart's default) a ranking canary is a gateway
    canary: analyse --component gateway.
    """
    from recsys.rollout.analysis import parse_duration

    report = analysis.analyze_once(component, parse_duration(window), analysis.limits(), at)
    _print_report(_console(), report)
    _write_json(json_out, report.to_dict())
    raise typer.Exit(report.verdict.exit_code)


@rollout_app.command("run")
@with_options(analysis=analysis_options, helm_options=helm_options)
def run(
    component: Component,
    steps: Annotated[str, typer.Option(help="Canary percentages; 100 = promote")] = "5,25,50,100",
    interval: Annotated[str, typer.Option(help="Wait per step before analysing")] = "2m",
    image_tag: Annotated[
        str | None, typer.Option(help="Start a canary with this image tag at the first step")
    ] = None,
    model_tag: Annotated[str | None, typer.Option(help="Model tag of a started canary")] = None,
    image_repository: Annotated[str | None, typer.Option(help="Canary image repository")] = None,
    max_inconclusive: Annotated[
        int, typer.Option(help="Extra intervals to wait on an inconclusive analysis")
    ] = 2,
    on_inconclusive: Annotated[
        str, typer.Option(help="hold (leave the canary, exit 3) or rollback")
    ] = "hold",
    log: Annotated[Path, typer.Option(help="Decision log (JSON lines, appended)")] = Path(
        "reports/rollout/decisions.jsonl"
    ),
    *,
    analysis: AnalysisOptions,
    helm_options: HelmOptions,
) -> None:
    """Progressive rollout: weight steps with analysis; the first failure rolls back (exit 1)."""
    from recsys.rollout.actions import HelmActions
    from recsys.rollout.analysis import check_component, parse_duration
    from recsys.rollout.progressive import RunPolicy, parse_steps, run_progressive
    from recsys.rollout.prometheus import PrometheusClient

    check_component(component)
    policy = RunPolicy(
        parse_steps(steps),
        parse_duration(interval),
        start=image_tag is not None,
        max_inconclusive=max_inconclusive,
        on_inconclusive=on_inconclusive,
    )  # type: ignore[arg-type]
    limits = analysis.limits()
    PrometheusClient(analysis.prometheus_url).query("vector(1)")  # fail before touching the release
    runner = helm_options.runner()
    values = helm_options.values(runner)
    console = _console()
    _note_workload(console, values, component)
    # What is analysed: the pods that run the component (the gateway's for an in-process ranking).
    analysed = values.workload(component)
    if image_tag is None and not values.canary_enabled(analysed):
        from recsys.rollout.errors import NoCanaryError

        raise NoCanaryError(f"no {analysed} canary is running: pass --image-tag to start one")
    actions = HelmActions(
        runner,
        values,
        component,
        image_tag=image_tag,
        model_tag=model_tag,
        image_repository=image_repository,
        dry_run=helm_options.dry_run,
        echo=_echo(console),
    )
    log.parent.mkdir(parents=True, exist_ok=True)

    def analyze_window(window_s: float):
        report = analysis.analyze_once(analysed, window_s, limits)
        _print_report(console, report)
        return report

    def record(decision) -> None:
        from recsys.rollout.render import decision_line

        console.print(decision_line(decision), soft_wrap=True)
        with log.open("a") as handle:
            handle.write(
                json.dumps(
                    {"component": component, "release": helm_options.release, **decision.to_dict()},
                    default=str,
                )
                + "\n"
            )

    result = run_progressive(policy, actions, analyze_window, on_decision=record)
    console.print(f"outcome: [bold]{result.outcome}[/] (decisions logged to {log})")
    if result.time_to_rollback_s is not None:
        console.print(f"canary start to rollback: {result.time_to_rollback_s:.1f}s")
    raise typer.Exit(result.exit_code)


@rollout_app.command("rehearse")
def rehearse(
    out: Annotated[Path, typer.Option(help="Where logs and the summary go")] = Path(
        "reports/rehearsal"
    ),
    steps: Annotated[str, typer.Option(help="Steps of the healthy canary")] = "25,50,100",
    interval: Annotated[str, typer.Option(help="Wait per step")] = "25s",
    rps: Annotated[float, typer.Option(help="Requests per second of the traffic driver")] = 40.0,
    bad_latency_ms: Annotated[float, typer.Option(help="Latency injected per call")] = 60.0,
    bad_error_rate: Annotated[float, typer.Option(help="Error share injected")] = 0.1,
) -> None:
    """Local rehearsal on 127.0.0.1: Prometheus, a stable and a canary stack, real analysis."""
    from recsys.rollout.rehearsal import RehearsalConfig
    from recsys.rollout.rehearsal import rehearse as run_rehearsal

    config = RehearsalConfig(
        out=out,
        steps=steps,
        interval=interval,
        rps=rps,
        bad_latency_ms=bad_latency_ms,
        bad_error_rate=bad_error_rate,
    )
    raise typer.Exit(run_rehearsal(config))
