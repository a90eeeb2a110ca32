"""manifests/: committed renders equal a fresh render, every file says what it is and what it needs,
and the hand-written OpenTelemetry Collector example is well-formed."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

pytestmark = pytest.mark.helm

RENDERED = ("recsys.yaml", "recsys-monitoring.yaml", "recsys-kserve.yaml")


@pytest.fixture(scope="module")
def fresh_render(helm_bin, helpers, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("manifests")
    result = subprocess.run(
        ["bash", str(helpers.repo_root / "scripts" / "render-manifests.sh"), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "HELM": helm_bin},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out_dir


@pytest.mark.parametrize("name", RENDERED)
def test_committed_manifests_match_a_fresh_render(helpers, fresh_render, name):
    committed = (helpers.repo_root / "manifests" / name).read_text()
    fresh = (fresh_render / name).read_text()
    assert committed == fresh, (
        f"manifests/{name} is stale: run scripts/render-manifests.sh (make manifests)"
    )


def manifest_files(helpers):
    return sorted((helpers.repo_root / "manifests").glob("*.yaml"))


def test_every_manifest_opens_with_what_and_prerequisites(helpers):
    files = manifest_files(helpers)
    assert {path.name for path in files} >= {*RENDERED, "otel-collector.yaml"}
    for path in files:
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
        text = "\n".join(header)
        assert text.startswith("# This example "), (
            f"{path.name}: first line should say what the file shows"
        )
        assert "Prerequisites:" in text, f"{path.name}: header lacks prerequisites"


def test_manifests_validate_against_kubernetes_schemas(
    helpers, kube_schemas, crd_validators, kserve_strict
):
    for path in manifest_files(helpers):
        for obj in (doc for doc in yaml.safe_load_all(path.read_text()) if doc):
            validator = kube_schemas.validator(
                helpers.kube_versions[-1], obj["apiVersion"], obj["kind"]
            )
            if validator is not None:
                errors = list(validator.iter_errors(obj))
            elif obj["kind"] == "InferenceService":
                kserve_strict(obj, "V1beta1InferenceService")
                errors = []
            else:
                errors = list(crd_validators[(obj["apiVersion"], obj["kind"])].iter_errors(obj))
            assert not errors, (
                f"{path.name} {obj['kind']}/{obj['metadata']['name']}: {errors[0].message}"
            )


def test_plain_manifests_leave_out_the_helm_test_hook(helpers):
    for name in RENDERED:
        for obj in yaml.safe_load_all((helpers.repo_root / "manifests" / name).read_text()):
            if obj:
                assert "helm.sh/hook" not in obj["metadata"].get("annotations", {}), name


def test_otel_collector_example(helpers):
    objects = [
        doc
        for doc in yaml.safe_load_all(
            (helpers.repo_root / "manifests" / "otel-collector.yaml").read_text()
        )
        if doc
    ]
    by_kind = {obj["kind"]: obj for obj in objects}
    assert {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
    } <= set(by_kind)
    config = yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yaml"])

    # OTLP in, on the ports the chart's otel.endpoint and the Service use.
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    service_ports = {port["port"] for port in by_kind["Service"]["spec"]["ports"]}
    assert service_ports == {4317, 4318}

    # k8sattributes enriches spans with pod metadata, including the track label.
    k8s = config["processors"]["k8sattributes"]
    assert "k8s.pod.name" in k8s["extract"]["metadata"]
    assert {"tag_name": "recsys.track", "key": "track", "from": "pod"} in k8s["extract"]["labels"]

    # OTLP out to the tracing backend.
    assert "otlp" in config["exporters"]
    assert config["exporters"]["otlp"]["endpoint"]

    # Every pipeline component is defined; k8sattributes runs before batch (it needs the peer IP).
    traces = config["service"]["pipelines"]["traces"]
    for section, names in (
        ("receivers", traces["receivers"]),
        ("processors", traces["processors"]),
        ("exporters", traces["exporters"]),
    ):
        for name in names:
            assert name in config[section], f"{section}.{name} used but not defined"
    assert traces["processors"].index("k8sattributes") < traces["processors"].index("batch")
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]

    # RBAC covers what k8sattributes watches.
    rules = by_kind["ClusterRole"]["rules"]
    granted = {
        (group, resource)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert {("", "pods"), ("", "namespaces"), ("apps", "replicasets")} <= granted
    binding = by_kind["ClusterRoleBinding"]
    assert binding["subjects"][0]["name"] == by_kind["ServiceAccount"]["metadata"]["name"]
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"]
    assert (
        by_kind["Deployment"]["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
        == by_kind["ConfigMap"]["metadata"]["name"]
    )


def test_scripts_parse(helpers):
    for script in (
        "install-helm.sh",
        "install-prometheus.sh",
        "render-manifests.sh",
        "e2e-kind.sh",
    ):
        path = helpers.repo_root / "scripts" / script
        assert path.is_file(), script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        result = subprocess.run(
            ["bash", "-n", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr


def test_install_helm_is_idempotent_when_helm_exists(helm_bin, helpers):
    result = subprocess.run(
        ["bash", str(helpers.repo_root / "scripts" / "install-helm.sh")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip()
    assert os.access(path, os.X_OK)
    version = subprocess.run(
        [path, "version", "--short"], capture_output=True, text=True, check=False
    )
    assert version.stdout.startswith(("v3.", "v4."))
