"""The shared model store in the chart: serving pods import their model tags at start.

Rendered with the real helm binary for every ci/*-values.yaml scenario plus `modelStore`, and
validated against the upstream (strict) Kubernetes schemas. The init container itself runs, from
the built image, in tests/containers/test_pods_model_store.py.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.helm

STORE = ("modelStore.url=/model-store", "modelStore.claimName=recsys-models")
# The env var naming each model a container loads, and the model it names.
TAG_ENV = {
    "RECSYS_RETRIEVAL_MODEL_TAG": "recsys-retrieval",
    "RECSYS_RANKING_MODEL_TAG": "recsys-ranking",
}


def _workloads(helpers, objects) -> dict[str, dict]:
    return {
        obj["metadata"]["name"]: helpers.pod_spec(obj)
        for kind in ("Deployment", "InferenceService")
        for obj in helpers.objects_of(objects, kind)
    }


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _full(tag: str, model: str) -> str:
    return tag if ":" in tag else f"{model}:{tag}"


def test_no_store_no_init_container(chart, helpers, scenario):
    for name, pod in _workloads(helpers, chart.render((scenario,), ())).items():
        assert "initContainers" not in pod, name
        assert "RECSYS_MODEL_DIR" not in _env(pod["containers"][0]), name


def test_each_pod_imports_exactly_the_tags_it_loads(chart, helpers, kube_schemas, scenario):
    objects = chart.render((scenario,), STORE)
    for version in helpers.kube_versions:
        for obj in objects:
            validator = kube_schemas.validator(version, obj["apiVersion"], obj["kind"])
            if validator is not None:
                errors = list(validator.iter_errors(obj))
                assert not errors, f"{version} {obj['kind']}: {errors[0].message}"
    importing = 0
    for name, pod in _workloads(helpers, objects).items():
        (serving,) = pod["containers"]
        env = _env(serving)
        loads = {
            _full(env[key], model)
            for key, model in TAG_ENV.items()
            if env.get(key) and not env[key].endswith("latest")
        }
        if not loads:
            assert "initContainers" not in pod and "RECSYS_MODEL_DIR" not in env, name
            continue
        importing += 1
        (init,) = pod["initContainers"]
        assert init["image"] == serving["image"], name
        assert init["command"] == ["python", "-m", "recsys", "models", "import"]
        args = init["args"]
        tags = set(args[: args.index("--from")])
        assert tags == loads, f"{name} imports {tags}, loads {loads}"
        assert args[args.index("--from") + 1] == "/model-store"
        assert args[args.index("--into") + 1] == "/models"
        assert env["RECSYS_MODEL_DIR"] == "/models"
        assert init["securityContext"] == serving["securityContext"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["models"]
        assert volumes["model-store"]["persistentVolumeClaim"] == {
            "claimName": "recsys-models",
            "readOnly": True,
        }
        mounts = {m["name"]: m for m in init["volumeMounts"]}
        assert mounts["model-store"]["readOnly"] and not mounts["models"].get("readOnly")
        served = {m["name"]: m for m in serving["volumeMounts"]}
        assert served["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
        assert "model-store" not in served  # the serving container never sees the shared store
    pinned = {"canary", "gateway-api", "kserve", "ranking-separate"}
    if scenario.name.removesuffix("-values.yaml") in pinned:
        assert importing, "a scenario with model tags renders no import"


def test_training_job_exports_where_the_pods_import(chart, helpers):
    sets = (*STORE, "training.enabled=true", "ranking.modelTag=recsys-ranking:v1")
    objects = chart.render((), sets)
    (cron,) = helpers.objects_of(objects, "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (job,) = pod["containers"]
    assert _env(job)["RECSYS_MODEL_STORE"] == "/model-store"
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims["model-store"] == "recsys-models"
    mount = next(m for m in job["volumeMounts"] if m["name"] == "model-store")
    assert mount["mountPath"] == "/model-store" and not mount.get("readOnly")
    gateway = _workloads(helpers, objects)["recsys-gateway"]
    assert gateway["initContainers"][0]["args"][:1] == ["recsys-ranking:v1"]


def test_bare_versions_get_the_model_name_and_latest_is_the_images(chart, helpers):
    objects = chart.render((), (*STORE, "retrieval.modelTag=abc", "ranking.modelTag=latest"))
    pods = _workloads(helpers, objects)
    retrieval = pods["recsys-retrieval"]
    assert retrieval["initContainers"][0]["args"][0] == "recsys-retrieval:abc"
    gateway = pods["recsys-gateway"]
    # the gateway's ranker is the image's; its fallback list comes with retrieval abc
    args = gateway["initContainers"][0]["args"]
    assert args[: args.index("--from")] == ["recsys-retrieval:abc"]
