"""The progressive rollout loop with scripted analyses, a fake clock and recorded actions."""

from __future__ import annotations

import pytest

from recsys.rollout.analysis import AnalysisTarget, Thresholds, Verdict, build_report
from recsys.rollout.errors import HelmError, PrometheusUnreachableError, RolloutError
from recsys.rollout.progressive import RunPolicy, parse_steps, run_progressive

LIMITS = Thresholds(
    p95_ms=25,
    p99_ms=60,
    max_error_ratio=0.001,
    max_latency_ratio=1.2,
    max_error_ratio_delta=0.005,
    max_fallback_ratio=0.05,
    min_requests=200,
)
NUMBERS = {
    Verdict.PASS: {
        "requests": {"stable": 2000, "canary": 400},
        "api_requests": {"stable": 2000, "canary": 400},
        "p95": {"stable": 0.02, "canary": 0.02},
        "p99": {"stable": 0.04, "canary": 0.04},
    },
    Verdict.FAIL: {
        "requests": {"stable": 2000, "canary": 400},
        "api_requests": {"stable": 2000, "canary": 400},
        "errors": {"canary": 40},
        "p95": {"stable": 0.02, "canary": 0.02},
        "p99": {"stable": 0.04, "canary": 0.04},
    },
    Verdict.INCONCLUSIVE: {
        "requests": {"stable": 2000, "canary": 20},
        "p95": {"stable": 0.02, "canary": 0.02},
    },
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Actions:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_on = fail_on

    def _do(self, *call) -> list[str]:
        self.calls.append(call)
        if call[0] == self.fail_on:
            raise HelmError(f"{call[0]} failed")
        return [" ".join(map(str, call))]

    def start(self, weight):
        return self._do("start", weight)

    def set_weight(self, weight):
        return self._do("weight", weight)

    def promote(self):
        return self._do("promote")

    def rollback(self):
        return self._do("rollback")


def scripted(*verdicts: Verdict):
    """An analyzer returning these verdicts in turn; records the windows it was asked for."""
    queue = list(verdicts)
    windows: list[float] = []

    def analyze(window_s: float):
        windows.append(window_s)
        verdict = queue.pop(0)
        report = build_report(AnalysisTarget("gateway", window_s), NUMBERS[verdict], LIMITS)
        assert report.verdict is verdict
        return report

    analyze.windows = windows
    return analyze


def test_all_steps_pass_then_promote():
    clock, actions = FakeClock(), Actions()
    analyze = scripted(Verdict.PASS, Verdict.PASS, Verdict.PASS)
    logged = []
    result = run_progressive(
        RunPolicy((5, 25, 50, 100), 120, start=True),
        actions,
        analyze,
        sleep=clock.sleep,
        clock=clock,
        on_decision=logged.append,
    )
    assert result.outcome == "promoted" and result.exit_code == 0
    assert actions.calls == [("start", 5), ("weight", 25), ("weight", 50), ("promote",)]
    assert analyze.windows == [120, 120, 120]
    assert [d.action for d in logged] == [
        "start",
        "analyze",
        "weight",
        "analyze",
        "weight",
        "analyze",
        "promote",
    ]
    assert logged[1].evidence["verdict"] == "pass"
    assert logged[-1].commands == ["promote"]
    assert result.time_to_rollback_s is None


def test_first_failed_analysis_rolls_back_and_stops():
    clock, actions = FakeClock(), Actions()
    result = run_progressive(
        RunPolicy((5, 25, 50, 100), 60, start=True),
        actions,
        scripted(Verdict.PASS, Verdict.FAIL),
        sleep=clock.sleep,
        clock=clock,
    )
    assert result.outcome == "rolled_back" and result.exit_code == 1
    assert actions.calls == [("start", 5), ("weight", 25), ("rollback",)]
    rollback = result.decisions[-1]
    assert rollback.action == "rollback" and rollback.verdict == "fail"
    assert "5xx ratio" in rollback.reason
    assert rollback.evidence["canary"]["errors"] == 40
    assert result.time_to_rollback_s == pytest.approx(120)


def test_inconclusive_waits_with_a_growing_window():
    clock, actions = FakeClock(), Actions()
    analyze = scripted(Verdict.INCONCLUSIVE, Verdict.PASS)
    result = run_progressive(
        RunPolicy((10, 100), 30, start=True), actions, analyze, sleep=clock.sleep, clock=clock
    )
    assert result.outcome == "promoted"
    assert analyze.windows == [30, 60]
    assert "waiting another interval" in result.decisions[1].reason


def test_lasting_inconclusive_holds_or_rolls_back():
    clock, actions = FakeClock(), Actions()
    result = run_progressive(
        RunPolicy((10, 100), 30, start=True, max_inconclusive=1),
        actions,
        scripted(Verdict.INCONCLUSIVE, Verdict.INCONCLUSIVE),
        sleep=clock.sleep,
        clock=clock,
    )
    assert result.outcome == "held" and result.exit_code == 3
    assert actions.calls == [("start", 10)]
    clock, actions = FakeClock(), Actions()
    result = run_progressive(
        RunPolicy((10, 100), 30, start=True, max_inconclusive=0, on_inconclusive="rollback"),
        actions,
        scripted(Verdict.INCONCLUSIVE),
        sleep=clock.sleep,
        clock=clock,
    )
    assert result.outcome == "rolled_back" and result.exit_code == 3
    assert actions.calls[-1] == ("rollback",)


def test_without_a_100_step_the_canary_stays():
    clock, actions = FakeClock(), Actions()
    result = run_progressive(
        RunPolicy((10, 20), 30),
        actions,
        scripted(Verdict.PASS, Verdict.PASS),
        sleep=clock.sleep,
        clock=clock,
    )
    assert result.outcome == "completed" and result.exit_code == 0
    assert actions.calls == [("weight", 10), ("weight", 20)]
    assert "promote" in result.decisions[-1].reason


def test_analysis_errors_roll_back_then_surface():
    clock, actions = FakeClock(), Actions()

    def unreachable(window_s):
        raise PrometheusUnreachableError("cannot reach Prometheus")

    with pytest.raises(PrometheusUnreachableError):
        run_progressive(
            RunPolicy((10, 100), 30, start=True),
            actions,
            unreachable,
            sleep=clock.sleep,
            clock=clock,
        )
    assert actions.calls == [("start", 10), ("rollback",)]


def test_failed_weight_change_rolls_back():
    clock, actions = FakeClock(), Actions(fail_on="weight")
    with pytest.raises(HelmError):
        run_progressive(
            RunPolicy((10, 50, 100), 30, start=True),
            actions,
            scripted(Verdict.PASS),
            sleep=clock.sleep,
            clock=clock,
        )
    assert actions.calls == [("start", 10), ("weight", 50), ("rollback",)]


def test_failed_start_is_rolled_back_too():
    clock, actions = FakeClock(), Actions(fail_on="start")
    with pytest.raises(HelmError, match="start failed"):
        run_progressive(
            RunPolicy((10, 100), 30, start=True),
            actions,
            scripted(),
            sleep=clock.sleep,
            clock=clock,
        )
    assert actions.calls == [("start", 10), ("rollback",)]


@pytest.mark.parametrize("text", ["", "5,5", "50,25", "0,10", "5,101", "a,b", ",".join(["1"] * 21)])
def test_bad_steps_are_refused(text):
    with pytest.raises(RolloutError):
        parse_steps(text)


def test_policy_bounds():
    assert parse_steps(" 5, 25,50,100 ") == (5, 25, 50, 100)
    with pytest.raises(RolloutError):
        RunPolicy((5,), 0)
    with pytest.raises(RolloutError):
        RunPolicy((100,), 10, start=True)
    with pytest.raises(RolloutError):
        RunPolicy((5,), 10, on_inconclusive="ignore")  # type: ignore[arg-type]
