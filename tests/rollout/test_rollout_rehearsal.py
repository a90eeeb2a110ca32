"""Canary analysis on real components: Prometheus scraping a stable and a canary stack.

One Prometheus (Debian package `prometheus`, 1 s scrapes, its own port and storage), one stable
stack and one canary stack (`RECSYS_TRACK=canary`), each a real `bentoml serve` of gateway +
retrieval + ranking on 127.0.0.1, started once for the module. A bounded traffic driver sends
W% of its requests to the canary stack (the stand-in for the chart's traffic split). The canary
is restarted with injected faults (RECSYS_FAULT_LATENCY_MS / RECSYS_FAULT_ERROR_RATE) for the
bad scenarios.

Absolute p95/p99 ceilings are slo.yaml's times LATENCY_FACTOR: this 2-core machine runs six
servers, Prometheus and the driver at once (see recsys.rollout.rehearsal); every other limit is
slo.yaml's own.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rich.console import Console

from recsys.ops.stack import free_port
from recsys.rollout.analysis import AnalysisTarget, CheckStatus, Verdict
from recsys.rollout.localstack import (
    TrafficDriver,
    private_home,
    running_prometheus,
    stack_env,
    start_stacks,
)
from recsys.rollout.progressive import RunPolicy
from recsys.rollout.prometheus import PrometheusClient, analyze
from recsys.rollout.rehearsal import SELECTOR, rehearsal_thresholds, run_phase

pytestmark = [pytest.mark.prometheus, pytest.mark.serving]

LATENCY_FACTOR = 5.0
RPS = 40.0
STEP_SECONDS = 15.0
LATENCY_MS = 60.0
ERROR_RATE = 0.1
# Figures of each scenario, printed at the end of the module (pytest -s shows them).
FIGURES: dict[str, dict] = {}


@dataclass
class Rig:
    """The running pieces shared by the scenarios."""

    prometheus_url: str
    stacks: dict
    driver: TrafficDriver
    ports: dict[str, int]
    homes: dict[str, Path]
    logs: Path
    canary_faults: tuple[float, float] = (0.0, 0.0)
    tags: dict[str, str] = field(default_factory=dict)

    def ensure_canary(self, latency_ms: float = 0.0, error_rate: float = 0.0) -> None:
        """Restart the canary stack (same port) when it runs other faults than asked."""
        if self.canary_faults == (latency_ms, error_rate):
            return
        self.stacks.pop("canary").stop()
        env = stack_env(self.homes["canary"], "canary", latency_ms, error_rate)
        self.stacks.update(start_stacks({"canary": (self.ports["canary"], env)}, self.logs))
        self.canary_faults = (latency_ms, error_rate)
        time.sleep(3)  # a few scrapes of the fresh, zeroed counters before traffic

    def drive(self, percent: float, seconds: float) -> tuple[float, int]:
        """W% to the canary for `seconds`; returns (window to analyse, canary requests sent)."""
        before = sum(self.driver.snapshot().get("canary", {}).values())
        started = time.time()
        self.driver.set_canary_percent(percent)
        time.sleep(seconds)
        self.driver.set_canary_percent(0)
        time.sleep(2.5)  # let Prometheus scrape the last increments
        sent = sum(self.driver.snapshot().get("canary", {}).values()) - before
        return time.time() - started, sent


@pytest.fixture(scope="module")
def model_tags(tiny_result) -> dict[str, str]:
    from recsys.model.artifacts import save_models

    return save_models(tiny_result)


@pytest.fixture(scope="module")
def rig(prometheus_path, model_tags, bentoml_home, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rehearsal")
    ports = {"stable": free_port(), "canary": free_port()}
    homes = {track: private_home(bentoml_home, workdir, track) for track in ports}
    logs = workdir / "logs"
    stacks = start_stacks(
        {track: (port, stack_env(homes[track], track)) for track, port in ports.items()}, logs
    )
    targets = {track: f"127.0.0.1:{port}" for track, port in ports.items()}
    try:
        with running_prometheus(
            prometheus_path, workdir / "prometheus", free_port(), targets
        ) as prometheus:
            prometheus.wait_scraped(len(targets))
            urls = {track: server.url for track, server in stacks.items()}
            users = [f"u{i}" for i in range(600)]
            with TrafficDriver(urls, users, rps=RPS, max_seconds=600) as driver:
                time.sleep(2)
                yield Rig(prometheus.url, stacks, driver, ports, homes, logs, tags=model_tags)
    finally:
        for server in stacks.values():
            server.stop()
        if FIGURES:
            print("\nrehearsal figures:\n" + json.dumps(FIGURES, indent=2))


def analyse(rig: Rig, window_s: float):
    return analyze(
        PrometheusClient(rig.prometheus_url),
        AnalysisTarget("gateway", window_s, SELECTOR),
        rehearsal_thresholds(LATENCY_FACTOR),
    )


def figures(report) -> dict:
    return {
        "verdict": report.verdict.value,
        "reason": report.reason,
        "canary": {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in report.canary.to_dict().items()
        },
        "stable": {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in report.stable.to_dict().items()
        },
    }


def phase(rig: Rig, name: str, tag: str, tmp_path: Path, faults=(0.0, 0.0)):
    console = Console(file=io.StringIO(), width=160)
    policy = RunPolicy((50, 100), STEP_SECONDS, start=True, max_inconclusive=1)
    result = run_phase(
        name,
        tag,
        policy,
        rig.driver,
        rig.prometheus_url,
        rehearsal_thresholds(LATENCY_FACTOR),
        console,
        tmp_path / "decisions.jsonl",
        rig.tags,
        faults=faults,
    )
    return result, console.file.getvalue()


def test_too_little_traffic_is_inconclusive(rig):
    rig.ensure_canary()
    window, sent = rig.drive(percent=5, seconds=8)
    report = analyse(rig, window)
    FIGURES["too_little_traffic"] = {**figures(report), "canary_requests_sent": sent}
    assert report.verdict is Verdict.INCONCLUSIVE, report.reason
    assert sent < 200
    assert report.canary.requests == pytest.approx(sent, abs=10)
    assert "fewer than min_requests 200" in report.reason


def test_healthy_canary_passes_and_is_promoted(rig, tmp_path):
    rig.ensure_canary()
    result, printed = phase(rig, "healthy", "1.1.0", tmp_path)
    analysed = [d for d in result.decisions if d.action == "analyze"]
    FIGURES["healthy"] = {
        "outcome": result.outcome,
        "analyses": [
            {
                "verdict": d.verdict,
                "reason": d.reason,
                "canary": d.evidence["canary"],
                "stable": d.evidence["stable"],
            }
            for d in analysed
        ],
    }
    assert result.outcome == "promoted", printed
    last = analysed[-1].evidence
    assert last["verdict"] == "pass"
    assert last["canary"]["requests"] >= 200 and last["canary"]["error_ratio"] == 0
    assert [d.action for d in result.decisions][-1] == "promote"
    promote = result.decisions[-1].commands[0]
    assert promote.startswith("helm upgrade recsys helm/recsys --namespace recsys --reuse-values")
    assert "--set-string gateway.image.tag=1.1.0 --set gateway.canary.enabled=false" in promote
    assert rig.driver.canary_percent == 0


def test_latency_regression_fails(rig):
    rig.ensure_canary(latency_ms=LATENCY_MS)
    window, sent = rig.drive(percent=50, seconds=STEP_SECONDS)
    report = analyse(rig, window)
    FIGURES["latency"] = {**figures(report), "canary_requests_sent": sent}
    assert report.verdict is Verdict.FAIL, report.reason
    checks = {c.name: c.status for c in report.checks}
    assert checks["p95_vs_stable"] is CheckStatus.FAIL
    assert checks["error_ratio_vs_slo"] is CheckStatus.PASS
    # Both processes of the default form (gateway, retrieval) add the injected latency.
    assert report.canary.p95_ms > 2 * LATENCY_MS


def test_error_spike_is_rolled_back_automatically(rig, tmp_path):
    rig.ensure_canary(error_rate=ERROR_RATE)
    result, printed = phase(rig, "errors", "1.2.0", tmp_path, faults=(0.0, ERROR_RATE))
    FIGURES["errors"] = {
        "outcome": result.outcome,
        "time_to_rollback_s": round(result.time_to_rollback_s or -1, 1),
        "decisions": [
            {"action": d.action, "verdict": d.verdict, "reason": d.reason} for d in result.decisions
        ],
    }
    assert result.outcome == "rolled_back" and result.exit_code == 1, printed
    rollback = result.decisions[-1]
    assert rollback.action == "rollback" and rollback.verdict == "fail"
    canary = rollback.evidence["canary"]
    FIGURES["errors"]["canary"] = canary
    assert 0.04 < canary["error_ratio"] < 0.2
    assert canary["fallback_ratio"] > 0.05
    assert rollback.commands == [
        "helm upgrade recsys helm/recsys --namespace recsys --reuse-values "
        "--set gateway.canary.enabled=false --wait --timeout 10m --description "
        "'recsys rollout: roll back gateway canary (image 1.2.0, weight 50%)'"
    ]
    assert rig.driver.canary_percent == 0
    # The printed start command carries the fault, as a rehearsal on a cluster would set it.
    assert "--set gateway.canary.faults.errorRate=0.1" in result.decisions[0].commands[0]
    assert result.time_to_rollback_s < STEP_SECONDS * 3
    log = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert [entry["action"] for entry in log][-1] == "rollback"
