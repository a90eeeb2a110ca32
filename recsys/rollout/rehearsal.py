"""Local canary rehearsal: real Prometheus, real stable and canary stacks, real analysis.

    python -m recsys.rollout.rehearsal          (or: make rehearse-canary, recsys rollout rehearse)

1. Trains tiny seeded models into a private model store (about 15 s).
2. Starts a stable and a healthy canary stack (`RECSYS_TRACK`), and Prometheus scraping both
   every second with a `track` label, all on 127.0.0.1.
3. Healthy canary: `run` through the steps; at each, the traffic driver sends W% of its
   requests to the canary stack, waits the interval, and analyses Prometheus against slo.yaml.
   It ends promoted.
4. Bad canary: the canary stack restarts with injected latency and errors
   (RECSYS_FAULT_LATENCY_MS / RECSYS_FAULT_ERROR_RATE); the same `run` rolls it back
   automatically. The time from its start to the rollback is printed.

What is simulated: there is no cluster, so the helm commands of each step are printed as a dry
run (exactly what `recsys rollout` would run), and the traffic split is made by the traffic
driver instead of replicas, an HTTPRoute or KServe. Everything else is real.

Absolute latency ceilings: this machine shares 2 cores between six server processes, Prometheus
and the traffic driver, so slo.yaml's production p95/p99 (25/60 ms) are multiplied by
`latency_factor` here, and p95 differences below one histogram bucket (10 ms) are noise; the
canary-vs-stable ratio, error and fallback limits and min_requests are slo.yaml's own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from recsys.rollout.analysis import AnalysisReport, AnalysisTarget, Thresholds, parse_duration
from recsys.rollout.errors import RolloutError
from recsys.rollout.plan import HelmTarget

# Label every rehearsal series carries (the scrape config's `release`).
SELECTOR = 'release="rehearsal"'
STABLE_TAG = "1.0.0"


@dataclass(frozen=True)
class RehearsalConfig:
    """Knobs of the rehearsal (defaults keep it under three minutes)."""

    out: Path = Path("reports/rehearsal")
    steps: str = "25,50,100"
    interval: str = "25s"
    rps: float = 40.0
    bad_latency_ms: float = 60.0
    bad_error_rate: float = 0.1
    latency_factor: float = 5.0
    canary_tag: str = "1.1.0"
    bad_tag: str = "1.2.0"


def _train_and_print_tags() -> None:
    """Train seeded tiny models into $BENTOML_HOME and print their tags as JSON (subprocess)."""
    from recsys.artifacts import save_models
    from recsys.data.synth import TINY_SYNTH, generate
    from recsys.pipeline import TrainConfig, train_pipeline

    data = generate(TINY_SYNTH)
    result = train_pipeline(data.interactions, data.catalog, TrainConfig.tiny())
    print(json.dumps(save_models(result)))


def train_tiny_models(home: Path) -> dict[str, str]:
    """Train seeded tiny models into the BentoML store at `home`; returns their tags.

    Runs in a subprocess: BENTOML_HOME is read once per process, and this process must not
    keep BentoML's state pointed at a temporary store.
    """
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "OPENBLAS_NUM_THREADS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    code = "from recsys.rollout.rehearsal import _train_and_print_tags; _train_and_print_tags()"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RolloutError(f"training the rehearsal models failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rehearsal_thresholds(latency_factor: float, latency_slack_ms: float = 10.0) -> Thresholds:
    """slo.yaml's limits, with the absolute latency ceilings scaled for this machine.

    `latency_slack_ms`: here p95 sits around 30-50 ms, where the histogram's buckets are 10 ms
    apart (0.03, 0.04, 0.05 s); two identical stacks can differ by one bucket, so differences
    below one bucket width do not count against the canary.
    """
    from recsys.slo import load_slo

    limits = Thresholds.from_slo(load_slo())
    return replace(
        limits,
        p95_ms=limits.p95_ms * latency_factor,
        p99_ms=limits.p99_ms * latency_factor,
        latency_slack_ms=latency_slack_ms,
    )


class RehearsalActions:
    """Prints each step's helm command (dry run) and moves the driver's split to match."""

    def __init__(self, helm_actions, driver, console: Console) -> None:
        self.helm_actions = helm_actions
        self.driver = driver
        self.console = console

    def start(self, weight: int) -> list[str]:
        commands = self.helm_actions.start(weight)
        self.driver.set_canary_percent(weight)
        return commands

    def set_weight(self, weight: int) -> list[str]:
        commands = self.helm_actions.set_weight(weight)
        self.driver.set_canary_percent(weight)
        return commands

    def promote(self) -> list[str]:
        # Here the stable stack stands for the promoted version: the canary stack gets no more
        # traffic, as when the canary Deployment goes away after promotion.
        commands = self.helm_actions.promote()
        self.driver.set_canary_percent(0)
        return commands

    def rollback(self) -> list[str]:
        self.driver.set_canary_percent(0)
        return self.helm_actions.rollback()


def _phase(console: Console, title: str) -> None:
    console.rule(f"[bold]{title}")


def run_phase(
    name: str,
    tag: str,
    policy,
    driver,
    prometheus_url: str,
    limits: Thresholds,
    console: Console,
    log_path: Path,
    model_tags: dict[str, str],
    faults: tuple[float, float] = (0.0, 0.0),
):
    """One progressive rollout of the gateway canary against the local stacks.

    Args:
        name: phase name written into the decision log.
        tag: canary image tag shown in the printed helm commands.
        policy: steps and interval (recsys.rollout.progressive.RunPolicy).
        driver: the TrafficDriver whose split stands in for the chart's.
        prometheus_url: the local Prometheus.
        limits: analysis thresholds.
        console: where tables and decisions are printed.
        log_path: decision log (JSON lines, appended).
        model_tags: stable model tags, for the planned helm values.
        faults: (latency ms, error rate) the canary stack runs with; shown in the printed
            `start` command as the chart's canary.faults.* (how a cluster rehearsal sets them).

    Returns:
        The RunResult.
    """
    from recsys.rollout.actions import HelmActions
    from recsys.rollout.helm import Helm, chart_values
    from recsys.rollout.progressive import run_progressive
    from recsys.rollout.prometheus import PrometheusClient, analyze
    from recsys.rollout.render import (
        analysis_table,
        checks_table,
        command_line,
        decision_line,
        verdict_line,
    )

    def refuse(argv):  # the rehearsal never runs helm against a cluster
        raise RolloutError("the rehearsal only prints helm commands")

    values = chart_values(
        {
            "image": {"tag": STABLE_TAG},
            "retrieval": {"modelTag": model_tags["retrieval"]},
            "ranking": {"modelTag": model_tags["ranking"]},
        }
    )
    target = HelmTarget(release="recsys", namespace="recsys", chart="helm/recsys")

    def echo(command, dry_run: bool) -> None:
        console.print(command_line(command, dry_run), soft_wrap=True, highlight=False)

    helm_actions = HelmActions(
        Helm(target, runner=refuse),
        values,
        "gateway",
        image_tag=tag,
        fault_latency_ms=round(faults[0]),
        fault_error_rate=faults[1],
        dry_run=True,
        echo=echo,
    )
    client = PrometheusClient(prometheus_url)

    def analyze_window(window_s: float) -> AnalysisReport:
        report = analyze(client, AnalysisTarget("gateway", window_s, SELECTOR), limits)
        console.print(analysis_table(report))
        console.print(checks_table(report))
        console.print(verdict_line(report))
        return report

    def record(decision) -> None:
        console.print(decision_line(decision), soft_wrap=True)
        with log_path.open("a") as handle:
            handle.write(json.dumps({"phase": name, **decision.to_dict()}, default=str) + "\n")

    actions = RehearsalActions(helm_actions, driver, console)
    return run_progressive(policy, actions, analyze_window, on_decision=record)


def rehearse(config: RehearsalConfig, console: Console | None = None) -> int:
    """Run the whole rehearsal; returns 0 when the healthy canary was promoted and the bad one
    rolled back automatically, else 1."""
    from recsys.rollout.localstack import (
        TrafficDriver,
        find_prometheus,
        private_home,
        running_prometheus,
        stack_env,
        start_stacks,
    )
    from recsys.rollout.progressive import RunPolicy, parse_steps
    from recsys.stack import free_port

    console = console or Console()
    steps = parse_steps(config.steps)
    interval_s = parse_duration(config.interval)
    binary = find_prometheus()
    if binary is None:
        raise RolloutError(
            "the prometheus server is not installed: run "
            "`bash scripts/install-prometheus.sh` (as root)"
        )
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "decisions.jsonl"
    log_path.write_text("")
    workdir = Path(tempfile.mkdtemp(prefix="recsys-rehearsal-"))
    limits = rehearsal_thresholds(config.latency_factor)
    summary: dict[str, Any] = {"config": {k: str(v) for k, v in config.__dict__.items()}}
    stacks: dict = {}
    began = time.monotonic()
    try:
        _phase(console, "1/4 models")
        with console.status("training tiny seeded models into a private store"):
            model_home = workdir / "models-home"
            tags = train_tiny_models(model_home)
        console.print(f"models: {tags}")
        ports = {"stable": free_port(), "canary": free_port()}
        homes = {track: private_home(model_home, workdir, track) for track in ports}
        _phase(console, "2/4 stable + canary stacks, Prometheus")
        with console.status("starting the stable and the canary stack (6 processes)"):
            stacks = start_stacks(
                {track: (port, stack_env(homes[track], track)) for track, port in ports.items()},
                out / "logs",
            )
        targets = {track: f"127.0.0.1:{port}" for track, port in ports.items()}
        with running_prometheus(binary, workdir / "prometheus", free_port(), targets) as prom:
            with console.status("waiting for Prometheus to scrape both stacks"):
                prom.wait_scraped(len(targets))
            console.print(
                f"Prometheus {prom.url} scrapes stable {stacks['stable'].url} and "
                f"canary {stacks['canary'].url} every second"
            )
            console.print(
                f"limits: slo.yaml canary section; absolute p95/p99 {limits.p95_ms:.0f}/"
                f"{limits.p99_ms:.0f} ms (slo.yaml x{config.latency_factor:g} on this machine); "
                f"p95 noise slack {limits.latency_slack_ms:g} ms; "
                f"min_requests {limits.min_requests}; traffic {config.rps:g} req/s, split by "
                "the driver"
            )
            users = [f"u{i}" for i in range(600)]
            urls = {track: server.url for track, server in stacks.items()}
            budget = 4 * interval_s * (len(steps) + 2) * 2 + 300
            with TrafficDriver(urls, users, rps=config.rps, max_seconds=budget) as driver:
                time.sleep(3)  # stable-only traffic first: the baseline
                _phase(console, f"3/4 healthy canary {config.canary_tag}: steps {config.steps}")

                def phase(name: str, tag: str, faults: tuple[float, float] = (0.0, 0.0)):
                    policy = RunPolicy(steps, interval_s, start=True)
                    return run_phase(
                        name, tag, policy, driver, prom.url, limits, console, log_path, tags, faults
                    )

                healthy = phase("healthy", config.canary_tag)
                summary["healthy"] = healthy.to_dict()
                _phase(
                    console,
                    f"4/4 bad canary {config.bad_tag}: +{config.bad_latency_ms:g} ms"
                    f" per call, {config.bad_error_rate:.0%} errors",
                )
                with console.status("restarting the canary stack with injected faults"):
                    stacks.pop("canary").stop()
                    bad_env = stack_env(
                        homes["canary"], "canary", config.bad_latency_ms, config.bad_error_rate
                    )
                    stacks.update(
                        start_stacks({"canary": (ports["canary"], bad_env)}, out / "logs")
                    )
                    time.sleep(3)  # a few scrapes of the fresh (zeroed) counters
                bad = phase("bad", config.bad_tag, (config.bad_latency_ms, config.bad_error_rate))
                summary["bad"] = bad.to_dict()
            summary["traffic"] = {
                t: {str(k): v for k, v in c.items()} for t, c in driver.snapshot().items()
            }
    finally:
        for server in stacks.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary["wall_time_s"] = time.monotonic() - began
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    ok = summary["healthy"]["outcome"] == "promoted" and summary["bad"]["outcome"] == "rolled_back"
    _phase(console, "result")
    console.print(f"healthy canary: [bold]{summary['healthy']['outcome']}[/]")
    console.print(f"bad canary: [bold]{summary['bad']['outcome']}[/]")
    seconds = summary["bad"]["time_to_rollback_s"]
    if seconds is not None:
        console.print(f"bad canary, start to automatic rollback: [bold]{seconds:.1f}s[/]")
    console.print(f"decision log: {log_path}   summary: {out / 'summary.json'}")
    console.print(
        "[green]rehearsal passed[/]" if ok else "[red]rehearsal did not end as expected[/]"
    )
    return 0 if ok else 1


def main() -> None:
    """Entry point of `python -m recsys.rollout.rehearsal` (errors: one line, exit 2)."""
    import sys

    from recsys.errors import RecsysError

    try:
        sys.exit(rehearse(RehearsalConfig()))
    except RecsysError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
