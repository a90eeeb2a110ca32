"""The SLO gate's pure logic: percentiles, thresholds, early abort, verdict and exit codes."""

from __future__ import annotations

import json

import pytest

from loadtests import gate_verdict
from loadtests.gate_checks import (
    SustainedBreachDetector,
    Traffic,
    evaluate,
    percentile,
    plan_min_rps_checks,
)
from loadtests.gate_thresholds import EndpointThresholds
from loadtests.gate_verdict import EXIT_PASS, EXIT_SLO_BREACH, decide_exit_code

RECOMMEND = EndpointThresholds(p95_ms=25, p99_ms=60, max_error_ratio=0.001, min_rps=150)
SIMILAR = EndpointThresholds(p95_ms=20, p99_ms=50, max_error_ratio=0.001, min_rps=20)
THRESHOLDS = {"recommend": RECOMMEND, "similar_items": SIMILAR}


def traffic(times: dict[int, int], failures: int = 0) -> Traffic:
    return Traffic(requests=sum(times.values()), failures=failures, response_times=times)


def healthy() -> dict[str, Traffic]:
    return {
        "recommend": traffic({10: 900, 20: 85, 40: 15}),  # p95 20, p99 40
        "similar_items": traffic({5: 200}),
    }


def by_key(checks):
    return {(c.endpoint, c.metric): c for c in checks}


@pytest.mark.parametrize(
    ("histogram", "quantile", "expected"),
    [
        ({v: 1 for v in range(1, 101)}, 0.95, 95.0),  # nearest rank: the 95th of 100
        ({v: 1 for v in range(1, 101)}, 0.99, 99.0),
        ({v: 1 for v in range(1, 101)}, 0.50, 50.0),
        ({v: 1 for v in range(1, 101)}, 1.0, 100.0),
        ({10: 95, 500: 5}, 0.95, 10.0),  # exactly 95 % at 10 ms
        ({10: 94, 500: 6}, 0.95, 500.0),  # one request more over the line moves p95
        ({7: 1}, 0.99, 7.0),
        ({30: 2, 10: 2}, 0.5, 10.0),  # keys need not be sorted
    ],
)
def test_percentile_nearest_rank(histogram, quantile, expected):
    assert percentile(histogram, quantile) == expected


def test_percentile_of_nothing_and_bad_quantile():
    assert percentile({}, 0.95) is None
    with pytest.raises(ValueError, match="quantile"):
        percentile({1: 1}, 0)


def test_traffic_since_is_the_difference_of_two_snapshots():
    earlier = Traffic(10, 1, {5: 8, 30: 2})
    later = Traffic(25, 3, {5: 18, 30: 4, 90: 3})
    window = later.since(earlier)
    assert window == Traffic(15, 2, {5: 10, 30: 2, 90: 3})
    assert window.error_ratio == pytest.approx(2 / 15)


def test_healthy_traffic_passes_every_check():
    checks = evaluate(healthy(), THRESHOLDS, seconds=1.0)
    found = by_key(checks)
    assert {c.status for c in checks} == {"pass"}
    assert found[("recommend", "p95_ms")].observed == 20
    assert found[("recommend", "p99_ms")].observed == 40
    assert found[("recommend", "rps")].observed == 1000
    assert decide_exit_code(checks, aborted=False, request_errors=0) == EXIT_PASS


@pytest.mark.parametrize(
    ("endpoint", "seen", "breached_metric"),
    [
        ("recommend", traffic({10: 900, 30: 100}), "p95_ms"),  # p95 30 > 25
        ("recommend", traffic({10: 985, 70: 15}), "p99_ms"),  # p95 fine, p99 70 > 60
        ("recommend", traffic({10: 1000}, failures=2), "error_ratio"),  # 0.002 > 0.001
        ("recommend", traffic({10: 100}), "rps"),  # 100 req/s < 150
        ("similar_items", traffic({25: 200}), "p95_ms"),  # the other endpoint's own numbers
    ],
)
def test_each_threshold_breaches_alone(endpoint, seen, breached_metric):
    observed = {**healthy(), endpoint: seen}
    checks = evaluate(observed, THRESHOLDS, seconds=1.0)
    failed = [(c.endpoint, c.metric) for c in checks if c.breached]
    assert failed == [(endpoint, breached_metric)]
    assert decide_exit_code(checks, aborted=False, request_errors=0) == EXIT_SLO_BREACH


def test_thresholds_are_inclusive():
    at_limit = {
        "recommend": traffic({25: 950, 60: 49, 10: 1}),  # p95 exactly 25, p99 exactly 60
        "similar_items": traffic({20: 20}),
    }
    assert all(not c.breached for c in evaluate(at_limit, THRESHOLDS, seconds=0.1))


def test_an_endpoint_without_traffic_fails_the_run():
    checks = evaluate({"recommend": healthy()["recommend"]}, THRESHOLDS, seconds=1.0)
    missing = [c for c in checks if c.endpoint == "similar_items"]
    assert [(c.metric, c.status) for c in missing] == [("requests", "fail")]
    assert "no request" in missing[0].note


def test_failed_requests_count_in_rps_as_missing_throughput():
    seen = {**healthy(), "recommend": traffic({10: 1000}, failures=900)}
    rps = by_key(evaluate(seen, THRESHOLDS, seconds=1.0))[("recommend", "rps")]
    assert rps.observed == 100 and rps.breached


def test_request_errors_within_budget_keep_locusts_error_code():
    checks = evaluate({**healthy(), "recommend": traffic({10: 2000}, failures=1)}, THRESHOLDS, 1.0)
    assert not any(c.breached for c in checks)
    assert decide_exit_code(checks, aborted=False, request_errors=1) == 1
    assert decide_exit_code(checks, aborted=False, request_errors=1, exit_code_on_error=0) == 0
    # a breach wins over request errors, and an early abort is a breach
    assert decide_exit_code([], aborted=True, request_errors=5) == EXIT_SLO_BREACH


def test_min_rps_plan_skips_only_floors_the_offered_load_cannot_reach():
    planned = {"recommend": 30.0, "similar_items": 25.0}
    skipped = plan_min_rps_checks(THRESHOLDS, "auto", planned)
    assert set(skipped) == {"recommend"} and "30.0 req/s" in skipped["recommend"]
    assert plan_min_rps_checks(THRESHOLDS, "auto", None) == {}  # closed loop: all checked
    assert plan_min_rps_checks(THRESHOLDS, "enforce", planned) == {}
    assert set(plan_min_rps_checks(THRESHOLDS, "report", None)) == set(THRESHOLDS)
    with pytest.raises(ValueError, match="min-rps"):
        plan_min_rps_checks(THRESHOLDS, "sometimes", None)


def test_skipped_floor_is_reported_not_passed():
    slow = {**healthy(), "recommend": traffic({10: 30})}
    checks = evaluate(slow, THRESHOLDS, seconds=1.0, skip_min_rps={"recommend": "paced at 30"})
    rps = by_key(checks)[("recommend", "rps")]
    assert (rps.status, rps.observed, rps.note) == ("not_checked", 30.0, "paced at 30")
    assert decide_exit_code(checks, aborted=False, request_errors=0) == EXIT_PASS


def test_windows_judge_latency_and_errors_but_never_throughput():
    checks = evaluate(healthy(), THRESHOLDS, seconds=None)
    assert {c.metric for c in checks} == {"p95_ms", "p99_ms", "error_ratio"}


def test_sustained_breach_needs_consecutive_windows_of_the_same_check():
    detector = SustainedBreachDetector(THRESHOLDS, consecutive=3, min_requests=20)
    slow = {**healthy(), "recommend": traffic({80: 100})}
    assert detector.observe(slow) and not detector.should_abort
    detector.observe(slow)
    detector.observe(healthy())  # recovered: the streak starts again
    detector.observe(slow)
    detector.observe(slow)
    assert not detector.should_abort
    detector.observe(slow)
    assert detector.should_abort
    assert {(c.endpoint, c.metric) for c in detector.sustained} == {
        ("recommend", "p95_ms"),
        ("recommend", "p99_ms"),
    }


def test_sparse_windows_neither_extend_nor_reset_a_streak():
    detector = SustainedBreachDetector(THRESHOLDS, consecutive=2, min_requests=20)
    slow = {**healthy(), "recommend": traffic({80: 100})}
    sparse = {**healthy(), "recommend": traffic({5: 3})}  # 3 requests: no decision
    detector.observe(slow)
    detector.observe(sparse)
    assert not detector.should_abort
    detector.observe(slow)
    assert detector.should_abort


def test_window_p99_needs_a_hundred_requests_to_be_judged():
    detector = SustainedBreachDetector(THRESHOLDS, consecutive=1, min_requests=20)
    one_slow = {**healthy(), "recommend": traffic({10: 59, 200: 1})}  # 60 requests, p99 = 200
    assert detector.observe(one_slow) == [] and not detector.should_abort
    statuses = {
        c.metric: c.status
        for c in evaluate(one_slow, THRESHOLDS, None, min_tail=1)
        if c.endpoint == "recommend"
    }
    assert statuses == {"p95_ms": "pass", "p99_ms": "not_checked", "error_ratio": "pass"}
    many_slow = {**healthy(), "recommend": traffic({10: 98, 200: 2})}  # 100 requests
    assert [c.metric for c in detector.observe(many_slow)] == ["p99_ms"]
    assert detector.should_abort


def test_early_abort_can_be_switched_off():
    detector = SustainedBreachDetector(THRESHOLDS, consecutive=0)
    for _ in range(10):
        detector.observe({**healthy(), "recommend": traffic({80: 100})})
    assert not detector.should_abort


def test_verdict_json_names_the_breach():
    seen = {**healthy(), "recommend": traffic({10: 500, 300: 500})}
    checks = evaluate(seen, THRESHOLDS, seconds=10.0, skip_min_rps={"recommend": "paced"})
    code = decide_exit_code(checks, aborted=False, request_errors=0)
    verdict = gate_verdict.build_verdict(
        checks, seen, 10.0, code, run={"shape": "constant"}, generator={"cpu_share_of_machine": 0.1}
    )
    assert json.loads(json.dumps(verdict)) == verdict  # plain JSON
    assert verdict["schema"] == gate_verdict.VERDICT_SCHEMA
    assert verdict["passed"] is False and verdict["exit_code"] == 99
    assert verdict["outcome"] == "slo_breach" and verdict["aborted_early"] is False
    assert {(b["endpoint"], b["metric"]) for b in verdict["breaches"]} == {
        ("recommend", "p95_ms"),
        ("recommend", "p99_ms"),
    }
    recommend = verdict["endpoints"]["recommend"]
    assert recommend["p95_ms"] == 300 and recommend["rps"] == 100
    assert recommend["checks"] == {
        "p95_ms": "fail",
        "p99_ms": "fail",
        "error_ratio": "pass",
        "rps": "not_checked",
    }
    assert verdict["run"]["measured_s"] == 10.0


def test_verdict_outcomes():
    ok = evaluate(healthy(), THRESHOLDS, 1.0)
    common = {"endpoints": healthy(), "measured_s": 1.0, "run": {}, "generator": {}}
    assert gate_verdict.build_verdict(ok, exit_code=0, **common)["outcome"] == "pass"
    assert gate_verdict.build_verdict(ok, exit_code=1, **common)["outcome"] == "request_errors"
    aborted = gate_verdict.build_verdict(ok, exit_code=99, abort={"at_s": 20}, **common)
    assert aborted["outcome"] == "aborted_sustained_breach" and aborted["aborted_early"]


def test_table_lists_every_check_with_its_result():
    seen = {**healthy(), "similar_items": traffic({45: 100})}
    checks = evaluate(seen, THRESHOLDS, seconds=1.0)
    table = gate_verdict.render_table(checks, decide_exit_code(checks, False, 0))
    lines = table.splitlines()
    assert lines[0] == "SLO gate: FAIL (exit code 99)"
    assert len(lines) == 3 + len(checks)
    breached = [line for line in lines if "FAIL" in line and line.startswith("similar_items")]
    assert [line.split()[1] for line in breached] == ["p95_ms"]
    assert "<= 20" in breached[0] and " 45 " in breached[0]
