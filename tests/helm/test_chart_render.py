"""Every ci/ scenario lints strictly and renders objects that match their published schemas.

Built-in kinds are checked against the upstream Kubernetes JSON schemas in strict mode (unknown
fields rejected) for the oldest supported and the newest bundled Kubernetes version. Custom
resources: InferenceService by strict deserialisation into the kserve SDK models; ServiceMonitor,
PrometheusRule and HTTPRoute against field-set schemas written from their published CRDs
(tests/helm/crd_schemas/).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.helm

CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
}


def test_lint_strict(chart, scenario, helpers):
    result = chart.run("lint", "--strict", str(helpers.chart_dir), "-f", str(scenario))
    assert result.returncode == 0, result.stdout + result.stderr


def test_builtin_kinds_match_kubernetes_schemas(chart, scenario, kube_schemas, helpers):
    objects = chart.render((scenario,))
    checked = 0
    for version in helpers.kube_versions:
        for obj in objects:
            key = (obj["apiVersion"], obj["kind"])
            validator = kube_schemas.validator(version, *key)
            if validator is None:
                assert key in CUSTOM_KINDS, f"{key} has no Kubernetes schema and no CRD check"
                continue
            errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
            assert not errors, (
                f"{obj['kind']}/{obj['metadata']['name']} vs Kubernetes {version}: "
                + "; ".join(
                    f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
                )
            )
            checked += 1
    assert checked > 0


def test_custom_resources_match_published_fields(chart, scenario, crd_validators, kserve_strict):
    for obj in chart.render((scenario,)):
        key = (obj["apiVersion"], obj["kind"])
        if key not in CUSTOM_KINDS:
            continue
        if obj["kind"] == "InferenceService":
            model = kserve_strict(obj, "V1beta1InferenceService")
            assert model.spec.predictor.containers[0].name == "kserve-container"
            continue
        errors = list(crd_validators[key].iter_errors(obj))
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
        )


def test_strict_kserve_check_rejects_unknown_fields(chart, helpers, kserve_strict):
    isvc = next(
        o
        for o in chart.render((helpers.chart_dir / "ci" / "kserve-values.yaml",))
        if o["kind"] == "InferenceService"
    )
    broken = {
        **isvc,
        "spec": {"predictor": {**isvc["spec"]["predictor"], "canaryTrafficPercnt": 5}},
    }
    with pytest.raises(ValueError, match="canaryTrafficPercnt"):
        kserve_strict(broken, "V1beta1InferenceService")


def test_crd_field_sets_reject_unknown_fields(chart, helpers, crd_validators):
    objects = chart.render((helpers.chart_dir / "ci" / "gateway-api-values.yaml",))
    route = next(o for o in objects if o["kind"] == "HTTPRoute")
    broken = {**route, "spec": {**route["spec"], "backendRef": []}}
    assert list(crd_validators[("gateway.networking.k8s.io/v1", "HTTPRoute")].iter_errors(broken))


@pytest.mark.parametrize(
    ("scenario_name", "expected"),
    [
        # Two Deployments by default: the gateway (with Ranking in process) and retrieval.
        (
            "default",
            {"Deployment": 2, "Service": 2, "HorizontalPodAutoscaler": 2, "PodDisruptionBudget": 2},
        ),
        ("canary", {"Deployment": 4, "Service": 4, "ServiceMonitor": 1, "PrometheusRule": 1}),
        (
            "kserve",
            {
                "InferenceService": 2,
                "Deployment": 0,
                "Service": 0,
                "NetworkPolicy": 0,
                "PrometheusRule": 1,
            },
        ),
        ("gateway-api", {"HTTPRoute": 2, "Deployment": 4}),
        (
            "autoscaling-off",
            {"HorizontalPodAutoscaler": 0, "PodDisruptionBudget": 2, "Deployment": 3},
        ),
        ("ingress", {"Ingress": 1, "Job": 1}),
        (
            "ranking-separate",
            {
                "Deployment": 4,
                "Service": 3,
                "HorizontalPodAutoscaler": 3,
                "PodDisruptionBudget": 3,
                "NetworkPolicy": 3,
            },
        ),
    ],
)
def test_scenarios_render_the_expected_objects(chart, helpers, scenario_name, expected):
    objects = chart.render((helpers.chart_dir / "ci" / f"{scenario_name}-values.yaml",))
    counts = {kind: len(helpers.objects_of(objects, kind)) for kind in expected}
    assert counts == expected


def test_every_scenario_has_a_ci_file(helpers):
    names = {path.name for path in helpers.scenario_files}
    assert names >= {
        "default-values.yaml",
        "canary-values.yaml",
        "kserve-values.yaml",
        "gateway-api-values.yaml",
        "autoscaling-off-values.yaml",
        "ingress-values.yaml",
        "ranking-separate-values.yaml",
    }


def test_kubernetes_check_is_strict(chart, helpers, kube_schemas):
    deployment = next(o for o in chart.render() if o["kind"] == "Deployment")
    container = {
        **deployment["spec"]["template"]["spec"]["containers"][0],
        "imagePullPolicyy": "Always",
    }
    pod = {**deployment["spec"]["template"]["spec"], "containers": [container]}
    broken = {
        **deployment,
        "spec": {**deployment["spec"], "template": {**deployment["spec"]["template"], "spec": pod}},
    }
    validator = kube_schemas.validator(helpers.kube_versions[0], "apps/v1", "Deployment")
    assert any("imagePullPolicyy" in error.message for error in validator.iter_errors(broken))
