"""The stage token in the chart: a Secret (made by the chart or named by the user) whose token
every recsys container gets as RECSYS_STAGE_TOKEN through a secretKeyRef (the gateway sends it;
retrieval, and ranking when separate, require it), in every scenario and both platforms; the
raw manifests reference a user-made Secret and carry no token."""

from __future__ import annotations

import base64
import re

import pytest
import yaml

pytestmark = pytest.mark.helm

SECRET = "recsys-stage-token"  # "<fullname>-stage-token" for release "recsys"


def recsys_containers(objects, helpers):
    for obj in objects:
        spec = helpers.pod_spec(obj)
        if spec is None or obj["kind"] in {"Job", "Pod"}:  # load test and helm test: clients
            continue
        yield from ((obj, container) for container in spec["containers"])


def env_refs(container) -> dict[str, dict]:
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def test_every_component_gets_the_token_from_the_secret(chart, scenario, helpers):
    objects = chart.render((scenario,))
    seen = set()
    for obj, container in recsys_containers(objects, helpers):
        refs = env_refs(container)
        assert refs["RECSYS_STAGE_TOKEN"] == {"name": SECRET, "key": "token"}, obj["metadata"]
        assert refs["RECSYS_STAGE_TOKEN_PREVIOUS"] == {
            "name": SECRET,
            "key": "previous",
            "optional": True,
        }
        values = {item["name"]: item.get("value") for item in container.get("env", [])}
        assert values.get("RECSYS_STAGE_TOKEN") is None  # never a literal value in the pod spec
        seen.add(obj["metadata"]["labels"]["app.kubernetes.io/component"])
    assert seen == set(helpers.components_of(scenario))


def test_chart_makes_a_random_token_secret_kept_on_uninstall(chart, helpers):
    secrets = [
        obj
        for obj in helpers.objects_of(chart.render(), "Secret")
        if obj["metadata"]["name"] == SECRET
    ]
    assert len(secrets) == 1
    secret = secrets[0]
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", token)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # helm template cannot read the cluster: each render makes a new one (an upgrade keeps it).
    fresh = chart.run(*chart.template_args((), ("stageAuth.secretKey=token",)))
    assert fresh.returncode == 0 and token not in fresh.stdout


def test_an_existing_secret_is_referenced_not_made(chart, helpers):
    sets = ("stageAuth.existingSecret=team-token", "stageAuth.secretKey=value")
    objects = chart.render((), sets)
    assert not helpers.objects_of(objects, "Secret")
    for _, container in recsys_containers(objects, helpers):
        assert env_refs(container)["RECSYS_STAGE_TOKEN"] == {"name": "team-token", "key": "value"}


def test_bad_stage_auth_values_are_refused(chart):
    assert "stageAuth" in chart.render_error((), ("stageAuth.secretKey=",))
    assert "stageAuth" in chart.render_error((), ("stageAuth.existingSecret=Not_A_Name",))


def test_raw_manifests_reference_a_user_made_secret(helpers):
    for name in ("recsys.yaml", "recsys-kserve.yaml"):
        text = (helpers.repo_root / "manifests" / name).read_text()
        assert f"kubectl create secret generic {SECRET}" in text  # the header says how
        objects = [doc for doc in yaml.safe_load_all(text) if doc]
        assert not [obj for obj in objects if obj["kind"] == "Secret"], name
        for obj in objects:
            spec = helpers.pod_spec(obj)
            for container in (spec or {}).get("containers", []):
                assert env_refs(container)["RECSYS_STAGE_TOKEN"]["name"] == SECRET
