"""The training CronJob, its RBAC and the model-health / retraining alerts.

Rendered with the real helm binary, validated against the upstream (strict) Kubernetes schemas,
and the alerts run by the real promtool on synthetic series.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

pytestmark = pytest.mark.helm

ON = ("training.enabled=true",)
RUN = (*ON, "training.canary=run", "modelStore.url=/model-store")
EVERYTHING = (
    *RUN,
    "prometheusRule.enabled=true",
    "serviceMonitor.enabled=true",
    "loadtest.enabled=true",
)
# Kinds a release needs only to read: helm --wait watches pods and ReplicaSets.
READ_ONLY = {("", "pods"), ("apps", "replicasets")}


def _kind_resource(obj: dict) -> tuple[str, str]:
    group = obj["apiVersion"].rpartition("/")[0]
    plural = {
        "NetworkPolicy": "networkpolicies",
        "Ingress": "ingresses",
        "HorizontalPodAutoscaler": "horizontalpodautoscalers",
        "PodDisruptionBudget": "poddisruptionbudgets",
    }.get(obj["kind"], obj["kind"].lower() + "s")
    return group, plural


def _granted(role: dict) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule or rule["resourceNames"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_training_is_off_by_default(chart, helpers):
    objects = chart.render((), ())
    assert not helpers.objects_of(objects, "CronJob")
    assert not helpers.objects_of(objects, "Role")


@pytest.mark.parametrize("sets", [ON, RUN], ids=["record", "run"])
def test_cronjob_validates_strictly(chart, helpers, kube_schemas, sets):
    objects = chart.render((), sets)
    for version in helpers.kube_versions:
        for obj in objects:
            validator = kube_schemas.validator(version, obj["apiVersion"], obj["kind"])
            if validator is None:
                continue
            errors = list(validator.iter_errors(obj))
            assert not errors, f"{version} {obj['kind']}: {errors[0].message}"
    (cron,) = helpers.objects_of(objects, "CronJob")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    (gateway,) = [
        d
        for d in helpers.objects_of(objects, "Deployment")
        if d["metadata"]["name"].endswith("gateway")
    ]
    assert container["image"] == gateway["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["command"] == ["python", "-m", "recsys", "retrain"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"].endswith("-training")
    has_helm = any(c["name"] == "helm" for c in pod.get("initContainers", []))
    assert has_helm == ("training.canary=run" in sets)


def test_cronjob_arguments_reach_the_job_cli(chart, helpers):
    """Every flag the chart passes is one `recsys retrain` accepts (typer parses them here)."""
    from typer.testing import CliRunner

    from recsys.cli.main import app

    (cron,) = helpers.objects_of(chart.render((), RUN), "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    flags = [arg.split("=")[0] for arg in container["args"] if arg.startswith("--")]
    usage = CliRunner().invoke(app, ["retrain", "--help"], terminal_width=200).output
    for flag in flags:
        assert flag in usage, f"the chart passes {flag}, which `recsys retrain` does not know"


def test_record_mode_may_only_post_events(chart, helpers):
    (role,) = helpers.objects_of(chart.render((), ON), "Role")
    assert _granted(role) == {("", "events"): {"create"}}
    assert not helpers.objects_of(chart.render((), ON), "ClusterRole")


def test_rollout_rbac_is_what_helm_upgrade_of_this_release_needs(chart, helpers, scenario):
    """Per ci/*-values.yaml scenario (Gateway API, ingress, KServe, ...)."""
    sets = EVERYTHING
    if "kserve" in scenario.name:  # KServe pods are scraped through annotations
        sets = tuple(s for s in sets if not s.startswith("serviceMonitor"))
    objects = chart.render((scenario,), sets)
    (role,) = helpers.objects_of(objects, "Role")
    granted = _granted(role)
    assert not helpers.objects_of(objects, "ClusterRole")
    assert all("*" not in verbs for verbs in granted.values()) and ("*", "*") not in granted
    # `helm test` hooks are not installed by `helm upgrade`.
    rendered = {
        _kind_resource(obj)
        for obj in objects
        if "test" not in obj["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    }
    needed = rendered | {("", "secrets")} | READ_ONLY | {("", "events")}
    missing = rendered - {key for key, verbs in granted.items() if "patch" in verbs}
    assert not missing, f"helm upgrade could not change {missing}"
    extra = set(granted) - needed
    assert not extra, f"more than helm upgrade of this release needs: {extra}"
    for key in READ_ONLY:
        assert granted[key] == {"get", "list", "watch"}
    (binding,) = helpers.objects_of(objects, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["namespace"] == helpers.namespace


def _rules_file(chart, helpers, tmp_path):
    objects = chart.render((), (*ON, "prometheusRule.enabled=true"))
    (rule,) = helpers.objects_of(objects, "PrometheusRule")
    # Only this groups: the SLO recording rules would make promtool ten times slower.
    groups = [
        group
        for group in rule["spec"]["groups"]
        if group["name"].endswith((".model-health", ".retraining"))
    ]
    assert len(groups) == 2
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


def _case(name, series, alert, eval_time, fires: bool) -> dict:
    return {
        "name": name,
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [
            {
                "expr": f'count(ALERTS{{alertname="{alert}",alertstate="firing"}})',
                "eval_time": eval_time,
                "exp_samples": [{"labels": "{}", "value": 1}] if fires else [],
            }
        ],
    }


def test_promtool_fires_each_model_health_and_retraining_alert(
    chart, helpers, promtool_bin, tmp_path
):
    rules = _rules_file(chart, helpers, tmp_path)
    ns, rel = helpers.namespace, helpers.release
    served = {
        "namespace": ns,
        "release": rel,
        "component": "Ranking",
        "track": "stable",
        "model_version": "recsys-ranking:x",
    }
    job = {"namespace": ns, "release": rel, "job": "recsys-retrain"}

    def drift(psi: float, requests: int, live: float) -> list[dict[str, str]]:
        return [
            _series("recsys_drift_psi", f"{psi}x120", **served, signal="ranking_score"),
            _series("recsys_drift_window_requests", f"{requests}x120", **served),
            _series(
                "recsys_drift_share", f"{live}x120", **served, signal="unknown_users", window="live"
            ),
            _series(
                "recsys_drift_share", "0.1x120", **served, signal="unknown_users", window="training"
            ),
        ]

    tests = [
        # data ended at Unix time 0: at 49h it is 49h old (limit 48h, for 15m)
        _case(
            "stale model",
            [_series("recsys_model_data_end_timestamp_seconds", "0x3000", **served)],
            "RecsysModelStale",
            "49h",
            True,
        ),
        # data end keeps up with the clock (retrained all the time): never stale
        _case(
            "fresh model",
            [_series("recsys_model_data_end_timestamp_seconds", "0+60x3000", **served)],
            "RecsysModelStale",
            "49h",
            False,
        ),
        _case("drift", drift(0.6, 1000, 0.1), "RecsysModelDrift", "40m", True),
        _case("drift, too few requests", drift(0.6, 50, 0.1), "RecsysModelDrift", "40m", False),
        _case("no drift", drift(0.1, 1000, 0.1), "RecsysModelDrift", "40m", False),
        _case("unknown users", drift(0.1, 1000, 0.5), "RecsysUnknownUsersHigh", "40m", True),
        _case("usual users", drift(0.1, 1000, 0.2), "RecsysUnknownUsersHigh", "40m", False),
        _case(
            "failed run",
            [_series("recsys_retrain_run_success", "0x10", **job)],
            "RecsysRetrainingFailed",
            "5m",
            True,
        ),
        _case(
            "good run",
            [_series("recsys_retrain_run_success", "1x10", **job)],
            "RecsysRetrainingFailed",
            "5m",
            False,
        ),
        # the last run ended at Unix time 0: at 28h nothing ran for 28h (limit 26h, for 1h)
        _case(
            "missed runs",
            [_series("recsys_retrain_last_run_timestamp_seconds", "0x1700", **job)],
            "RecsysRetrainingMissed",
            "28h",
            True,
        ),
        _case(
            "never reported",
            [_series("recsys_retrain_run_success", "1x100", **job)],
            "RecsysRetrainingMissed",
            "90m",
            True,
        ),
        _case(
            "runs on time",
            [_series("recsys_retrain_last_run_timestamp_seconds", "0+60x1700", **job)],
            "RecsysRetrainingMissed",
            "28h",
            False,
        ),
    ]
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
        )
    )
    result = subprocess.run(
        [promtool_bin, "test", "rules", test_file.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
