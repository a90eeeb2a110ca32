"""The PrometheusRule takes every threshold from slo.yaml, and Prometheus accepts and runs it.

slo.yaml is the one source: helm/recsys/files/slo.yaml must be its byte copy (Helm reads only
files inside the chart; scripts/render-manifests.sh syncs it), the rendered numbers must equal
the file's, promtool must accept the rules, and a synthetic outage must fire the page alert.
"""

from __future__ import annotations

import json
import math
import re
import subprocess

import pytest
import yaml

pytestmark = pytest.mark.helm

# Multi-window, multi-burn-rate table (Google SRE workbook): share of the error budget spent in
# the long window, long window in hours, short window.
BURN_WINDOWS = [
    ("1h", 1, "5m", 0.02),
    ("6h", 6, "30m", 0.05),
    ("1d", 24, "2h", 0.10),
    ("3d", 72, "6h", 0.10),
]


def rule_groups(chart, helpers, sets=("prometheusRule.enabled=true",)):
    objects = chart.render((), sets)
    (rule,) = helpers.objects_of(objects, "PrometheusRule")
    return rule["spec"]["groups"]


def all_rules(groups):
    return [rule for group in groups for rule in group["rules"]]


def thresholds(expr: str) -> list[float]:
    """Numbers compared with `>` in an expression (the thresholds)."""
    return [float(x) for x in re.findall(r">\s*([0-9.e-]+)\s*$", expr, flags=re.M)]


def test_chart_copy_of_slo_file_is_identical(helpers):
    original = (helpers.repo_root / "slo.yaml").read_bytes()
    copy = (helpers.chart_dir / "files" / "slo.yaml").read_bytes()
    assert copy == original, (
        "helm/recsys/files/slo.yaml differs from slo.yaml: run scripts/render-manifests.sh"
    )


def test_burn_rate_alerts_use_slo_objective_and_window(chart, helpers, slo):
    rules = all_rules(rule_groups(chart, helpers))
    budget = 1 - slo["objective"]
    window_hours = slo["window_days"] * 24
    for alert, budget_of_sli in (
        ("RecsysErrorBudgetBurn", budget),
        ("RecsysLatencyBudgetBurn", 0.01),
    ):
        found = {r["labels"]["long_window"]: r for r in rules if r.get("alert") == alert}
        assert set(found) == {w[0] for w in BURN_WINDOWS}
        for long_window, hours, short_window, share in BURN_WINDOWS:
            rule = found[long_window]
            burn = share * window_hours / hours
            assert math.isclose(float(rule["labels"]["burn_rate"]), burn, rel_tol=1e-6)
            assert rule["labels"]["short_window"] == short_window
            values = thresholds(rule["expr"])
            assert len(values) == 2
            for value in values:
                assert math.isclose(value, burn * budget_of_sli, rel_tol=1e-6), (
                    alert,
                    long_window,
                    value,
                )
            assert f"ratio_rate{long_window}{{" in rule["expr"]
            assert f"ratio_rate{short_window}{{" in rule["expr"]
    # For the usual 30-day window these are the workbook's 14.4x / 6x / 3x / 1x.
    if slo["window_days"] == 30:
        page = next(
            r
            for r in rules
            if r.get("alert") == "RecsysErrorBudgetBurn" and r["labels"]["long_window"] == "1h"
        )
        assert page["labels"]["burn_rate"] == "14.4"


def test_latency_thresholds_come_from_slo(chart, helpers, slo):
    rules = all_rules(rule_groups(chart, helpers))
    p95_alerts = {
        r["labels"]["endpoint"]: r for r in rules if r.get("alert") == "RecsysLatencyP95AboveSLO"
    }
    assert set(p95_alerts) == {f"/{name}" for name in slo["endpoints"]}
    slow_ratio_rules = [
        r for r in rules if r.get("record", "").startswith("recsys:slo_slow_requests_per_request:")
    ]
    for name, endpoint in slo["endpoints"].items():
        (value,) = thresholds(p95_alerts[f"/{name}"]["expr"])
        assert math.isclose(value, endpoint["p95_ms"] / 1000, rel_tol=1e-9)
        mine = [r for r in slow_ratio_rules if r["labels"]["endpoint"] == f"/{name}"]
        assert len(mine) == 7
        for rule in mine:
            (le,) = re.findall(r'le="([^"]+)"', rule["expr"])
            assert math.isclose(float(le), endpoint["p99_ms"] / 1000, rel_tol=1e-9)


def test_canary_thresholds_come_from_slo(chart, helpers, slo):
    rules = {
        r["alert"]: r
        for r in all_rules(rule_groups(chart, helpers))
        if r.get("alert", "").startswith("RecsysCanary")
    }
    canary = slo["canary"]
    errors = rules["RecsysCanaryErrorRatioAboveStable"]["expr"]
    assert re.search(
        rf"\)\s*>\s*{re.escape(str(canary['max_error_ratio_delta']))}\s*$", errors, flags=re.M
    )
    latency = rules["RecsysCanaryLatencyAboveStable"]["expr"]
    assert re.search(rf"^\s*{re.escape(str(canary['max_latency_ratio']))} \* ", latency, flags=re.M)
    fallbacks = rules["RecsysCanaryFallbackRatioHigh"]["expr"]
    assert re.search(
        rf"\)\s*>\s*{re.escape(str(canary['max_fallback_ratio']))}\s*$", fallbacks, flags=re.M
    )
    for rule in rules.values():
        assert f">= {canary['min_requests']}" in rule["expr"]


def test_histogram_buckets_include_every_slo_threshold(chart, helpers, slo):
    objects = chart.render()
    (gateway,) = [
        d
        for d in helpers.objects_of(objects, "Deployment")
        if d["metadata"]["name"] == "recsys-gateway"
    ]
    env = {
        e["name"]: e.get("value")
        for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    buckets = json.loads(env["BENTOML_CONFIG_OVERRIDES"])["services"]["Recommender"]["metrics"][
        "duration"
    ]["buckets"]
    assert buckets == sorted(set(buckets)), "prometheus_client needs sorted, distinct bounds"
    # BentoML's config schema takes floats only: a bare `1` stops the server at start.
    assert all(isinstance(bound, float) for bound in buckets)
    for endpoint in slo["endpoints"].values():
        for key in ("p95_ms", "p99_ms"):
            assert any(math.isclose(b, endpoint[key] / 1000) for b in buckets), (key, endpoint[key])


def write_rule_file(chart, helpers, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(chart, helpers)}, sort_keys=False))
    return path


def test_promtool_check_rules(chart, helpers, promtool_bin, tmp_path):
    path = write_rule_file(chart, helpers, tmp_path)
    result = subprocess.run(
        [promtool_bin, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def series(labels: dict[str, str], metric: str) -> str:
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def test_promtool_unit_test_burn_rate_alert(chart, helpers, promtool_bin, tmp_path, slo):
    """5% of /recommend requests fail: the 1h/5m page fires; 0.05% errors page nobody."""
    rules = write_rule_file(chart, helpers, tmp_path)
    base = {
        "namespace": helpers.namespace,
        "release": helpers.release,
        "component": "gateway",
        "track": "stable",
        "endpoint": "/recommend",
    }
    p99_le = f"{slo['endpoints']['recommend']['p99_ms'] / 1000}"

    def traffic(ok_per_min: int, errors_per_min: int, fast_per_min: int) -> list[dict[str, str]]:
        total = ok_per_min + errors_per_min
        return [
            {
                "series": series(
                    {**base, "http_response_code": "200"}, "bentoml_service_request_total"
                ),
                "values": f"0+{ok_per_min}x90",
            },
            {
                "series": series(
                    {**base, "http_response_code": "500"}, "bentoml_service_request_total"
                ),
                "values": f"0+{errors_per_min}x90",
            },
            {
                "series": series(
                    {**base, "le": p99_le}, "bentoml_service_request_duration_seconds_bucket"
                ),
                "values": f"0+{fast_per_min}x90",
            },
            {
                "series": series(
                    {**base, "le": "+Inf"}, "bentoml_service_request_duration_seconds_bucket"
                ),
                "values": f"0+{total}x90",
            },
            {
                "series": series(base, "bentoml_service_request_duration_seconds_count"),
                "values": f"0+{total}x90",
            },
        ]

    page = {
        "alertname": "RecsysErrorBudgetBurn",
        "alertstate": "firing",
        "severity": "critical",
        "slo": "availability",
        "long_window": "1h",
        "short_window": "5m",
        "burn_rate": "14.4",
        "namespace": helpers.namespace,
        "release": helpers.release,
        "endpoint": "/recommend",
    }
    fired = 'ALERTS{alertname="RecsysErrorBudgetBurn",long_window="1h",alertstate="firing"}'
    latency_page = (
        'ALERTS{alertname="RecsysLatencyBudgetBurn",long_window="1h",alertstate="firing"}'
    )
    unit_tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "outage: 5% errors, 30% slower than p99",
                "interval": "1m",
                "input_series": traffic(ok_per_min=950, errors_per_min=50, fast_per_min=700),
                "promql_expr_test": [
                    {
                        "expr": "round(recsys:slo_errors_per_request:ratio_rate5m, 0.0001)",
                        "eval_time": "30m",
                        "exp_samples": [
                            {
                                "labels": series(
                                    {
                                        "namespace": helpers.namespace,
                                        "release": helpers.release,
                                        "endpoint": "/recommend",
                                    },
                                    "",
                                ),
                                "value": 0.05,
                            }
                        ],
                    },
                    {
                        "expr": fired,
                        "eval_time": "30m",
                        "exp_samples": [{"labels": series(page, "ALERTS"), "value": 1}],
                    },
                    {
                        "expr": f"count({latency_page})",
                        "eval_time": "30m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    },
                ],
            },
            {
                "name": "healthy: 0.05% errors, 0.5% slow",
                "interval": "1m",
                "input_series": traffic(ok_per_min=19990, errors_per_min=10, fast_per_min=19900),
                "promql_expr_test": [
                    {"expr": fired, "eval_time": "60m", "exp_samples": []},
                    {"expr": latency_page, "eval_time": "60m", "exp_samples": []},
                ],
            },
        ],
    }
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(unit_tests, sort_keys=False))
    result = subprocess.run(
        [promtool_bin, "test", "rules", test_file.name],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
