"""Canary analysis as pure functions: PromQL, thresholds from slo.yaml, verdicts from numbers."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import yaml

from recsys.ops.slo import DEFAULT_SLO_FILE, load_slo
from recsys.rollout.analysis import (
    AnalysisTarget,
    CheckStatus,
    Thresholds,
    TrackNumbers,
    Verdict,
    build_report,
    decide,
    numbers_by_track,
    parse_duration,
    promql_duration,
    validate_selector,
)
from recsys.rollout.errors import RolloutError, UnknownComponentError

LIMITS = Thresholds(
    p95_ms=25,
    p99_ms=60,
    max_error_ratio=0.001,
    max_latency_ratio=1.2,
    max_error_ratio_delta=0.005,
    max_fallback_ratio=0.05,
    min_requests=200,
)


def track(
    requests=1000.0, errors=0.0, p95_ms=20.0, p99_ms=40.0, fallbacks=0.0, api_requests=None
) -> TrackNumbers:
    return TrackNumbers(
        requests=requests,
        errors=errors,
        p95_s=p95_ms / 1000,
        p99_s=p99_ms / 1000,
        fallbacks=fallbacks,
        api_requests=requests if api_requests is None else api_requests,
    )


def statuses(checks) -> dict[str, CheckStatus]:
    return {c.name: c.status for c in checks}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("2m", 120), ("1m30s", 90), ("1h", 3600), ("500ms", 0.5), (30, 30)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "2x", "-5s", "0", "m", "1m 30s"])
def test_bad_durations_are_refused(text):
    with pytest.raises(RolloutError):
        parse_duration(text)


def test_promql_ranges_are_whole_seconds():
    assert promql_duration(119.6) == "120s"
    assert promql_duration(0.2) == "1s"


def test_selector_is_validated_and_normalised():
    assert validate_selector(' namespace="recsys" , release=~"rec.*",') == (
        'namespace="recsys",release=~"rec.*"'
    )
    assert validate_selector("") == ""
    for bad in ['{namespace="x"}', "namespace=recsys", 'a="b" or vector(1)']:
        with pytest.raises(RolloutError):
            validate_selector(bad)


def test_gateway_queries_split_by_track_and_skip_probes():
    queries = AnalysisTarget("gateway", 300, 'namespace="recsys"').queries()
    labels = (
        'runner_name="Recommender",endpoint="/recommend",track=~"stable|canary",namespace="recsys"'
    )
    assert queries["requests"] == (
        f"sum by (track) (increase(bentoml_service_request_total{{{labels}}}[300s]))"
    )
    assert 'http_response_code=~"5.."' in queries["errors"]
    assert queries["p95"] == (
        "histogram_quantile(0.95, sum by (track, le) "
        f"(rate(bentoml_service_request_duration_seconds_bucket{{{labels}}}[300s])))"
    )
    assert queries["p99"].startswith("histogram_quantile(0.99,")
    assert "recsys_fallback_total" in queries["fallbacks"]
    assert 'endpoint=~"/recommend|/recommend_batch|/similar_items"' in queries["api_requests"]
    # /readyz, /livez and /stages are counted by BentoML too: only API paths are asked for.
    assert not any("readyz" in q or "livez" in q for q in queries.values())


def test_stage_queries_use_the_stage_service_and_have_no_fallback_ratio():
    queries = AnalysisTarget("ranking", 120).queries()
    assert 'runner_name="Ranking",endpoint="/rank"' in queries["requests"]
    assert "fallbacks" not in queries and "api_requests" not in queries


def test_unknown_component_is_a_typed_error():
    with pytest.raises(UnknownComponentError, match="gateway, retrieval, ranking"):
        AnalysisTarget("frontend", 60)


def test_thresholds_come_from_the_project_slo_file():
    raw = yaml.safe_load(DEFAULT_SLO_FILE.read_text())
    limits = Thresholds.from_slo(load_slo())
    assert limits.p95_ms == raw["endpoints"]["recommend"]["p95_ms"]
    assert limits.p99_ms == raw["endpoints"]["recommend"]["p99_ms"]
    assert limits.max_error_ratio == raw["endpoints"]["recommend"]["max_error_ratio"]
    for key in ("max_latency_ratio", "max_error_ratio_delta", "max_fallback_ratio", "min_requests"):
        assert getattr(limits, key) == raw["canary"][key]
    assert limits.with_overrides(min_requests=10, p95_ms=None).min_requests == 10
    with pytest.raises(RolloutError, match="recommend"):
        Thresholds.from_slo(load_slo(), "nope")


def test_healthy_canary_passes():
    verdict, reason, checks = decide(
        "gateway", track(p95_ms=20), track(requests=500, p95_ms=22), LIMITS, 300
    )
    assert verdict is Verdict.PASS, reason
    assert all(c.status is CheckStatus.PASS for c in checks)
    assert "500 canary requests" in reason


def test_latency_regression_against_stable_fails():
    verdict, reason, checks = decide(
        "gateway", track(p95_ms=15), track(requests=500, p95_ms=19), LIMITS, 300
    )
    assert verdict is Verdict.FAIL
    assert statuses(checks)["p95_vs_stable"] is CheckStatus.FAIL
    assert statuses(checks)["p95_vs_slo"] is CheckStatus.PASS
    assert "18.0 ms" in reason  # the limit, 1.2 x 15 ms


def test_latency_slack_absorbs_bucket_noise():
    limits = LIMITS.with_overrides(latency_slack_ms=5)
    verdict, _, _ = decide(
        "gateway", track(p95_ms=10), track(requests=500, p95_ms=14.5), limits, 300
    )
    assert verdict is Verdict.PASS


def test_slo_ceilings_fail_even_when_stable_is_as_slow():
    verdict, _, checks = decide(
        "gateway",
        track(p95_ms=30, p99_ms=80),
        track(requests=500, p95_ms=30, p99_ms=80),
        LIMITS,
        300,
    )
    assert verdict is Verdict.FAIL
    assert statuses(checks)["p95_vs_slo"] is CheckStatus.FAIL
    assert statuses(checks)["p99_vs_slo"] is CheckStatus.FAIL
    assert statuses(checks)["p95_vs_stable"] is CheckStatus.PASS


def test_error_spike_fails_on_ratio_and_delta():
    verdict, reason, checks = decide(
        "gateway", track(errors=0), track(requests=500, errors=25), LIMITS, 300
    )
    assert verdict is Verdict.FAIL
    assert statuses(checks)["error_ratio_vs_slo"] is CheckStatus.FAIL
    assert statuses(checks)["error_ratio_vs_stable"] is CheckStatus.FAIL
    assert "5.00%" in reason


def test_fallback_ratio_fails_on_the_gateway():
    verdict, _, checks = decide("gateway", track(), track(requests=500, fallbacks=40), LIMITS, 300)
    assert verdict is Verdict.FAIL
    assert statuses(checks)["fallback_ratio"] is CheckStatus.FAIL


def test_fallback_ratio_does_not_apply_to_stages():
    verdict, _, checks = decide("retrieval", track(), track(requests=500), LIMITS, 300)
    assert verdict is Verdict.PASS
    assert statuses(checks)["fallback_ratio"] is CheckStatus.NOT_APPLICABLE


def test_too_few_canary_requests_is_inconclusive_even_if_bad():
    verdict, reason, _ = decide("gateway", track(), track(requests=150, errors=100), LIMITS, 60)
    assert verdict is Verdict.INCONCLUSIVE
    assert "150 requests" in reason and "min_requests 200" in reason


def test_too_few_stable_requests_is_inconclusive():
    verdict, reason, checks = decide("gateway", track(requests=50), track(requests=500), LIMITS, 60)
    assert verdict is Verdict.INCONCLUSIVE
    assert statuses(checks)["p95_vs_stable"] is CheckStatus.NO_DATA
    assert "no stable data" in reason


def test_no_series_at_all_points_at_the_track_label():
    verdict, reason, _ = decide("gateway", TrackNumbers(), TrackNumbers(), LIMITS, 60)
    assert verdict is Verdict.INCONCLUSIVE
    assert "`track` label" in reason


def test_a_failure_wins_over_missing_stable_data():
    verdict, _, _ = decide(
        "gateway", track(requests=50), track(requests=500, p95_ms=90), LIMITS, 60
    )
    assert verdict is Verdict.FAIL


def test_query_results_become_track_numbers_with_nan_as_missing():
    tracks = numbers_by_track(
        {
            "requests": {"stable": 100.0, "canary": 40.0, "other": 5.0},
            "p95": {"stable": 0.02, "canary": math.nan},
            "errors": {"canary": 2.0},
        }
    )
    assert tracks["stable"].requests == 100 and tracks["stable"].p95_ms == pytest.approx(20)
    assert tracks["canary"].p95_s is None
    assert tracks["stable"].error_ratio == 0.0  # no 5xx series: no errors
    assert tracks["canary"].error_ratio == pytest.approx(0.05)


def test_report_serialises_everything_it_decided_from():
    target = AnalysisTarget("gateway", 120)
    report = build_report(
        target,
        {
            "requests": {"stable": 1000, "canary": 300},
            "api_requests": {"stable": 1000, "canary": 300},
            "p95": {"stable": 0.02, "canary": 0.02},
            "p99": {"stable": 0.04, "canary": 0.04},
        },
        LIMITS,
        evaluated_at=1_700_000_000,
    )
    data = report.to_dict()
    assert data["verdict"] == "pass"
    assert data["canary"]["requests"] == 300
    assert data["thresholds"]["min_requests"] == 200
    assert set(data["queries"]) >= {"requests", "errors", "p95", "p99", "fallbacks"}
    assert [c["name"] for c in data["checks"]] == [
        "p95_vs_slo",
        "p99_vs_slo",
        "p95_vs_stable",
        "error_ratio_vs_slo",
        "error_ratio_vs_stable",
        "fallback_ratio",
    ]
    assert (Verdict.PASS.exit_code, Verdict.FAIL.exit_code, Verdict.INCONCLUSIVE.exit_code) == (
        0,
        1,
        3,
    )


def test_decision_modules_import_nothing_heavy():
    code = (
        "import sys\n"
        "import recsys.rollout.analysis, recsys.rollout.plan, recsys.rollout.progressive\n"
        "import recsys.rollout.cli\n"
        "heavy = [m for m in ('bentoml', 'kubernetes', 'numpy', 'pandas', 'httpx', 'rich')\n"
        "         if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""
