"""values.yaml documents itself and values.schema.json rejects bad values with a clear message."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.helm

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_-]*):(?P<rest>.*)$")


def test_values_yaml_has_schema_modeline(helpers):
    first_line = (helpers.chart_dir / "values.yaml").read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=values.schema.json"


def test_every_values_key_is_commented(helpers):
    """Each key of values.yaml has a comment on the line above or at the end of its line.

    Keys inside example list items (ingress.hosts, networkPolicy.metricsFrom) are data.
    """
    lines = (helpers.chart_dir / "values.yaml").read_text().splitlines()
    undocumented = []
    list_item_indent = None
    for number, line in enumerate(lines):
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if stripped.startswith("- "):
            list_item_indent = indent
            continue
        if list_item_indent is not None and stripped and indent > list_item_indent:
            continue
        list_item_indent = None if stripped and not stripped.startswith("#") else list_item_indent
        match = KEY_LINE.match(line)
        if not match:
            continue
        previous = lines[number - 1].strip() if number else ""
        if "#" in match.group("rest") or previous.startswith("#"):
            continue
        undocumented.append(f"line {number + 1}: {match.group('key')}")
    assert not undocumented, "keys without a comment: " + ", ".join(undocumented)


def test_schema_is_valid_and_accepts_shipped_values(helpers):
    schema = json.loads((helpers.chart_dir / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    defaults = yaml.safe_load((helpers.chart_dir / "values.yaml").read_text())
    assert not list(validator.iter_errors(defaults))
    for path in helpers.scenario_files:
        merged = _merge(defaults, yaml.safe_load(path.read_text()) or {})
        errors = [e.message for e in validator.iter_errors(merged)]
        assert not errors, f"{path.name}: {errors}"


def test_schema_closes_every_object(helpers):
    """additionalProperties: false on every object with declared properties, so typos fail."""
    schema = json.loads((helpers.chart_dir / "values.schema.json").read_text())
    open_objects = []

    def visit(node, where):
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(where)
            for key, value in node.items():
                visit(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                visit(value, f"{where}/{i}")

    visit(schema, "#")
    # extraEnv items are Kubernetes EnvVar objects: only `name` is pinned down.
    assert [w for w in open_objects if "extraEnv" not in w] == []


def _merge(base, override):
    if isinstance(base, dict) and isinstance(override, dict):
        return {
            key: _merge(base.get(key), override[key]) if key in base else override[key]
            for key in override
        } | {key: value for key, value in base.items() if key not in override}
    return override


BAD_VALUES = [
    # (helm arguments, expected substring of helm's error)
    (["--set", "gateway.replicaCount=two"], "at '/gateway/replicaCount': got string, want integer"),
    (["--set", "image.tag=latest"], "at '/image/tag'"),
    (["--set", "retrieval.canary.image.tag=latest"], "at '/retrieval/canary/image/tag'"),
    (["--set", "gateway.replicaCont=3"], "additional properties 'replicaCont' not allowed"),
    (
        ["--set", "gateway.modelTag=recsys-gateway:v1"],
        "additional properties 'modelTag' not allowed",
    ),
    (["--set", "platform=docker"], "at '/platform': value must be one of 'kubernetes', 'kserve'"),
    (
        ["--set", "retrieval.canary.weight=150"],
        "at '/retrieval/canary/weight': maximum: got 150, want 100",
    ),
    (["--set", "ranking.canary.weight=-1"], "at '/ranking/canary/weight': minimum"),
    (
        ["--set-string", "gateway.autoscaling.enabled=yes"],
        "at '/gateway/autoscaling/enabled': got string, want boolean",
    ),
    (["--set", "retrieval.resources.requests.cpu=lots"], "at '/retrieval/resources/requests/cpu'"),
    (["--set", "otel.sampleRate=2"], "at '/otel/sampleRate'"),
    (["--set", "retrieval.canary.faults.errorRate=1.5"], "at '/retrieval/canary/faults/errorRate'"),
    (["--set", "settings.rankingTimeoutS=fast"], "at '/settings/rankingTimeoutS'"),
    (["--set", "image.digest=sha256:abc"], "at '/image/digest'"),
    (["--set", "retrieval.modelTag=not a tag"], "at '/retrieval/modelTag'"),
    (["--set", "ranking.workers=0"], "at '/ranking/workers'"),
    (["--set", "gateway.resources.limits=null"], "at '/gateway/resources'"),
    (["--set", "kserve.deploymentMode=ModelMesh"], "at '/kserve/deploymentMode'"),
    (
        ["--set-string", "ranking.separate=yes"],
        "at '/ranking/separate': got string, want boolean",
    ),
    (["--set", "retrieval.separate=true"], "additional properties 'separate' not allowed"),
    (
        ["--set", "gateway.canary.rankingModelTag=not a tag"],
        "at '/gateway/canary/rankingModelTag'",
    ),
    # Cross-field rules of templates/validate.yaml.
    (
        ["--set", "ranking.canary.enabled=true"],
        "ranking.canary.enabled needs ranking.separate=true",
    ),
    (
        ["--set", "ranking.separate=true,gateway.canary.rankingModelTag=recsys-ranking:v2"],
        "gateway.canary.rankingModelTag applies only when Ranking runs inside the gateway",
    ),
    (
        ["--set", "retrieval.canary.enabled=true,retrieval.canary.weight=100"],
        "retrieval.canary.weight=100 cannot be approximated by replicas",
    ),
    (
        ["--set", "gateway.autoscaling.minReplicas=5,gateway.autoscaling.maxReplicas=3"],
        "gateway.autoscaling.minReplicas (5) is above gateway.autoscaling.maxReplicas (3)",
    ),
    (["--set", "platform=kserve,ingress.enabled=true"], "apply to platform=kubernetes only"),
    (
        ["--set", "platform=kserve,serviceMonitor.enabled=true"],
        "serviceMonitor applies to platform=kubernetes only",
    ),
    (["--set", "gatewayAPI.enabled=true"], "gatewayAPI.enabled needs gatewayAPI.parentRefs"),
]


@pytest.mark.parametrize(
    ("arguments", "message"), BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES]
)
def test_bad_values_are_rejected_with_a_message(chart, helpers, arguments, message):
    result = chart.run("template", helpers.release, str(helpers.chart_dir), *arguments)
    assert result.returncode != 0, f"helm accepted {arguments}"
    assert message in result.stderr, result.stderr


def test_lint_rejects_bad_values_too(chart, helpers):
    result = chart.run(
        "lint", "--strict", str(helpers.chart_dir), "--set", "gateway.replicaCount=two"
    )
    assert result.returncode != 0
    assert "/gateway/replicaCount" in result.stdout + result.stderr
