"""Continuous training as the chart runs it, from the built image: the training CronJob's pod
retrains on a data volume and exports its candidate to the shared model store; serving pods
whose model tags name that candidate import it at start (init container) and serve it.

The PersistentVolumeClaims (data, model store) are host directories; everything else is the
rendered pod spec (pod_runner.py). No Kubernetes API exists here: the job's Events are skipped
with a log line, as where the API is unreachable, and its canary step only records.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import SCENARIOS, running_stack
from pod_runner import Client

from recsys.model.pipeline import TINY_TRAINING

pytestmark = [pytest.mark.containers]

CRONJOB, GATEWAY, RETRIEVAL = "recsys-training", "recsys-gateway", "recsys-retrieval"


def _world_writable(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)  # the pods run as uid 1034, as on a volume with fsGroup
    return path


def _stored_tags(store: Path) -> set[str]:
    """Tags of the archives in the store (`<name>-<version>.bentomodel`)."""
    tags = set()
    for archive in store.glob("*.bentomodel"):
        name, _, version = archive.name.removesuffix(".bentomodel").rpartition("-")
        tags.add(f"{name}:{version}")
    return tags


@pytest.fixture(scope="module")
def volumes(tmp_path_factory, tiny_data):
    """The data volume (yesterday's log and the catalog; the new day held back) and an empty
    model store."""
    root = tmp_path_factory.mktemp("volumes")
    root.chmod(0o755)
    data, store = _world_writable(root / "data"), _world_writable(root / "model-store")
    log = tiny_data.interactions
    cut = log["timestamp"].max() - pd.Timedelta(days=1)
    _world_writable(data / "interactions")
    tiny_data.catalog.to_parquet(data / "items.parquet", index=False)
    log[log["timestamp"] <= cut].to_parquet(data / "interactions" / "0000-history.parquet")
    new_day = log[log["timestamp"] > cut]
    for path in data.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o644)
    return {"data": data, "store": store, "new_day": new_day}


def _values(tmp_path: Path, **training) -> Path:
    values = {
        "modelStore": {"url": "/model-store", "claimName": "recsys-models"},
        "training": {
            "enabled": True,
            "canary": "record",
            "dataVolume": {"claimName": "recsys-data"},
            "env": [{"name": "RECSYS_TRAIN_CONFIG", "value": json.dumps(TINY_TRAINING)}],
            # The tiny log's NDCG@10 moves by a few percent from one day to the next.
            "tolerance": 0.05,
            **training,
        },
    }
    path = tmp_path / "store-values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _claims(volumes) -> dict[str, str]:
    return {"recsys-data": str(volumes["data"]), "recsys-models": str(volumes["store"])}


@pytest.fixture(scope="module")
def retrained(chart_render, docker_bin, built_image, volumes, tmp_path_factory, figures):
    """Two runs of the CronJob's pod: yesterday's model (no stable yet), then the new day with
    that model as the stable one the preflight compares with (imported from the store)."""
    tmp = tmp_path_factory.mktemp("values")
    runs = {}

    def run_job(name: str, sets: list[str]) -> None:
        objects = chart_render([SCENARIOS / "default-values.yaml", _values(tmp)], sets)
        claims = _claims(volumes)
        with running_stack(name, objects, docker_bin, built_image, only=[], claims=claims) as stack:
            started = time.monotonic()
            code, log = stack.run_job(CRONJOB)
        runs[name] = {"code": code, "log": log, "seconds": round(time.monotonic() - started, 1)}
        assert code == 0, f"training run {name} failed:\n{log[-4000:]}"

    run_job("first", [])
    first = _stored_tags(volumes["store"])
    (stable_ranking,) = [t for t in first if t.startswith("recsys-ranking:")]

    new_day = volumes["new_day"]
    path = volumes["data"] / "interactions" / f"{new_day['timestamp'].min():%Y-%m-%d}.parquet"
    new_day.to_parquet(path)
    path.chmod(0o644)
    run_job("second", [f"ranking.modelTag={stable_ranking}"])
    second = _stored_tags(volumes["store"]) - first
    figures["training_job"] = {name: run["seconds"] for name, run in runs.items()}
    return {"first": first, "second": second, "stable": stable_ranking, "runs": runs}


def test_the_cronjob_pod_retrains_and_exports_a_candidate(retrained):
    assert len(retrained["first"]) == 2 and len(retrained["second"]) == 2
    second_log = retrained["runs"]["second"]["log"]
    # the stable model came from the store; the candidate passed the gate and the preflight
    assert retrained["stable"] in second_log
    for step in ("check", "train", "preflight", "publish"):
        assert f"step={step}" in second_log and "outcome=" in second_log, step
    assert "Traceback" not in second_log


def test_serving_pods_import_the_candidate_and_serve_it(
    retrained, chart_render, docker_bin, built_image, volumes
):
    tags = {t.split(":")[0].removeprefix("recsys-"): t for t in retrained["second"]}
    assert tags.keys() == {"retrieval", "ranking"}
    assert set(built_image.model_tags.values()).isdisjoint(tags.values())  # not in the image
    objects = chart_render(
        [SCENARIOS / "default-values.yaml"],
        [
            "modelStore.url=/model-store",
            "modelStore.claimName=recsys-models",
            f"retrieval.modelTag={tags['retrieval']}",
            f"ranking.modelTag={tags['ranking']}",
        ],
    )
    with running_stack("store", objects, docker_bin, built_image, claims=_claims(volumes)) as stack:
        readiness = stack.wait_all_ready()
        problems = {d: r.detail for d, r in readiness.items() if not r.ready}
        assert not problems, {d: stack.docker.logs(stack.names[d], 40) for d in problems}
        for pod in (GATEWAY, RETRIEVAL):
            assert "imported recsys-" in stack.logs[f"{pod}-import-models"], pod
        client = Client(stack.container(GATEWAY).host_port)
        users = [str(u) for u in volumes["new_day"]["user_id"].unique()[:20]]
        for user in users:
            status, answer = client.recommend(user)
            assert status == 200, answer
            assert answer["degraded"] is False, answer
            assert answer["model_versions"] == tags, answer
        client.close()
        metrics = urllib.request.urlopen(f"{stack.container(GATEWAY).url}/metrics", timeout=5)
        text = metrics.read().decode()
        assert (
            f'recsys_model_age_seconds{{component="Ranking",model_version="{tags["ranking"]}"'
            in text
        )


def test_a_tag_missing_from_the_store_stops_the_pod_at_its_init_container(
    chart_render, docker_bin, built_image, volumes
):
    objects = chart_render(
        [SCENARIOS / "default-values.yaml"],
        [
            "modelStore.url=/model-store",
            "modelStore.claimName=recsys-models",
            "retrieval.modelTag=recsys-retrieval:notinthestore",
        ],
    )
    with (
        running_stack(
            "store-missing", objects, docker_bin, built_image, only=[], claims=_claims(volumes)
        ) as stack,
        pytest.raises(RuntimeError) as failure,
    ):
        stack.start(RETRIEVAL)
    message = str(failure.value)
    assert "init container import-models exited" in message
    assert "recsys-retrieval:notinthestore" in message and "Traceback" not in message
    assert RETRIEVAL not in stack.names  # the serving container never started
