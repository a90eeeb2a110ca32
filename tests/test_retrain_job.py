"""`recsys retrain` end to end on the tiny synthetic log plus a new day, and broken new days.

Real parts only: the BentoML store of the test session, the real helm binary for the dry-run
canary (`--values-from` the chart's values: no cluster), Prometheus' own text parser for the
metrics file. No cluster here: Events are posted to a fake API server on 127.0.0.1 (the only
mock, in one test), and skipped elsewhere, as outside a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsys.errors import ModelMissingError
from recsys.model.pipeline import TINY_TRAINING
from recsys.ops.stack import REPO_ROOT
from recsys.ops.training_job import RetrainConfig, run_retrain

helm_missing = not (REPO_ROOT / ".tools" / "bin" / "helm").exists() and not any(
    (Path(p) / "helm").exists() for p in os.environ.get("PATH", "").split(os.pathsep)
)


def _metrics(path: Path) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _store_tags() -> list[str]:
    from recsys.model.artifacts import list_models

    return sorted(row["tag"] for row in list_models())


@pytest.fixture(scope="module")
def days(tiny_data):
    log = tiny_data.interactions
    cut = log["timestamp"].max() - pd.Timedelta(days=1)
    return log[log["timestamp"] <= cut], log[log["timestamp"] > cut], tiny_data.catalog


@pytest.fixture(scope="module")
def source(tmp_path_factory, days) -> Path:
    history, _, catalog = days
    root = tmp_path_factory.mktemp("source")
    (root / "interactions").mkdir()
    catalog.to_parquet(root / "items.parquet", index=False)
    history.to_parquet(root / "interactions" / "0000-history.parquet", index=False)
    return root


def _run(source: Path, out: Path, lines: list[str], **extra):
    config = RetrainConfig(
        source=str(source),
        out=out,
        metrics_file=out / "retrain.prom",
        train_overrides=TINY_TRAINING,
        **extra,
    )
    return run_retrain(config, echo=lines.append)


@pytest.fixture(scope="module")
def loop(source, days, tmp_path_factory):
    """Yesterday's model, then the new day: retrain, gate, preflight, publish, dry-run canary."""
    _, new_day, _ = days
    work = tmp_path_factory.mktemp("runs")
    first_lines: list[str] = []
    first = _run(source, work / "first", first_lines)
    assert first.outcome == "recorded", first.reason
    new_day.to_parquet(source / "interactions" / "9999-new-day.parquet", index=False)
    lines: list[str] = []
    second = _run(
        source,
        work / "second",
        lines,
        stable_ranking=first.candidate["ranking"],
        # The tiny log's NDCG@10 moves by a few percent from one day to the next (600 users):
        # the default 2% would refuse about every other candidate here.
        tolerance=0.05,
        model_store=str(work / "model-store"),
        canary="start",
        image_tag="v2",
        dry_run=True,
        rollout_args=["--values-from", str(REPO_ROOT / "helm" / "recsys" / "values.yaml")],
    )
    return {"first": first, "second": second, "lines": lines, "work": work}


@pytest.mark.skipif(helm_missing, reason="helm not installed (scripts/install-helm.sh)")
def test_new_day_gives_a_promotable_candidate_and_a_canary(loop):
    second, work = loop["second"], loop["work"]
    assert second.outcome == "canary_started", second.reason
    assert [s.name for s in second.steps] == [
        "load", "check", "train", "gate", "store", "preflight", "publish", "canary",
    ]  # fmt: skip
    assert all(s.outcome == "ok" for s in second.steps)
    # A daily retrain trains with the stable model's (tuned) settings, not a new search.
    train = next(s for s in second.steps if s.name == "train")
    assert f"the settings of {loop['first'].candidate['ranking']}" in train.detail
    preflight = json.loads((work / "second" / "preflight.json").read_text())
    assert preflight["passed"] is True
    assert preflight["candidate"]["ranking_tag"] == second.candidate["ranking"]
    assert preflight["stable"]["ranking_tag"] == loop["first"].candidate["ranking"]
    rollout = (work / "second" / "rollout.log").read_text()
    assert "helm upgrade recsys" in rollout
    # Ranking runs inside the gateway (the default topology): its canary is a gateway canary.
    assert f"gateway.canary.rankingModelTag={second.candidate['ranking']}" in rollout
    assert "gateway.canary.image.tag=v2" in rollout
    run_id = second.run_id
    step_lines = [line for line in loop["lines"] if " step=" in line]
    assert len(step_lines) == 8 and all(f"run={run_id}" in line for line in step_lines)


def test_run_metrics_are_valid_prometheus_text(loop):
    metrics = _metrics(loop["work"] / "second" / "retrain.prom")
    assert metrics[("recsys_retrain_run_success", ())] == 1
    assert ("recsys_retrain_last_success_timestamp_seconds", ()) in metrics
    for step in ("load", "check", "train", "preflight", "canary"):
        assert metrics[("recsys_retrain_step_success", (("step", step),))] == 1
    assert metrics[("recsys_retrain_step_duration_seconds", (("step", "train"),))] > 0


def test_models_are_published_and_import_back(loop, tmp_path):
    import bentoml

    from recsys.model.artifacts import load_ranker

    store = loop["work"] / "model-store"
    tag = loop["second"].candidate["ranking"]
    assert sorted(p.name for p in store.iterdir()) == sorted(
        t.replace(":", "-") + ".bentomodel" for t in loop["second"].candidate.values()
    )
    # a serving pod's store without the model: `recsys models import` brings it from the store
    bentoml.models.delete(tag)
    done = subprocess.run(
        [sys.executable, "-m", "recsys", "models", "import", tag, "--from", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    ranker, full = load_ranker(tag)  # the manifest checksums pass
    assert full == tag and len(ranker.items) > 0


def test_import_into_a_pod_model_dir_and_load_from_it(loop, tmp_path):
    """What the chart's init container does: both models of the candidate imported into an
    empty model directory, then loaded from it in place of the default store's."""
    import bentoml

    from recsys.model.artifacts import load_ranker, load_retrieval, stored_model

    store, model_dir = loop["work"] / "model-store", tmp_path / "pod-models"
    tags = loop["second"].candidate
    done = subprocess.run(
        [sys.executable, "-m", "recsys", "models", "import", *tags.values(), "--from", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RECSYS_MODEL_DIR": str(model_dir)},
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == ["recsys-ranking", "recsys-retrieval"]
    ranker, ranking_tag = load_ranker(tags["ranking"], model_dir)
    model, retrieval_tag = load_retrieval(tags["retrieval"], model_dir)
    assert (ranking_tag, retrieval_tag) == (tags["ranking"], tags["retrieval"])
    assert stored_model(tags["ranking"], "recsys-ranking", store_dir=model_dir).path.is_relative_to(
        model_dir.resolve()
    )
    assert len(ranker.items) > 0 and len(model.items) > 0
    # a tag the directory lacks comes from the default store; one in neither is a clear error
    first = loop["first"].candidate["ranking"]
    assert bentoml.models.get(first)  # still in the default store
    assert load_ranker(first, model_dir)[1] == first
    with pytest.raises(ModelMissingError, match="nor in the BentoML model store"):
        load_ranker("recsys-ranking:doesnotexist", model_dir)
    # a tag that is nowhere: one line naming it and the store, no traceback
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys",
            "models",
            "import",
            "recsys-ranking:nope",
            "--from",
            str(store),
            "--into",
            str(model_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "recsys-ranking:nope" in done.stderr and "Traceback" not in done.stderr


def _broken(source: Path, frame: pd.DataFrame, tmp_path: Path, lines: list[str]):
    path = source / "interactions" / "9999-zz-broken.parquet"
    frame.to_parquet(path, index=False)
    try:
        return _run(source, tmp_path / "run", lines)
    finally:
        path.unlink()


@pytest.mark.parametrize(
    ("case", "step", "message"),
    [
        ("dropped required column", "load", "missing column(s) event"),
        ("dropped weight column", "check", "lacks column(s) weight"),
        ("10x duplicates", "check", "rows are rejected (duplicate="),
    ],
)
def test_broken_new_day_is_refused_and_nothing_changes(
    loop, source, days, tmp_path, case, step, message
):
    _, new_day, _ = days
    later = new_day.assign(timestamp=new_day["timestamp"] + pd.Timedelta(days=1))
    frame = {
        "dropped required column": later.drop(columns=["event"]),
        "dropped weight column": later.drop(columns=["weight"]),
        "10x duplicates": pd.concat([later] * 10, ignore_index=True),
    }[case]
    store = loop["work"] / "model-store"
    published = sorted(p.name for p in store.iterdir())
    tags = _store_tags()
    lines: list[str] = []
    result = _broken(source, frame, tmp_path, lines)
    assert result.outcome == "refused" and result.exit_code == 1
    assert message in result.reason
    assert result.steps[-1].name == step and result.steps[-1].outcome == "refused"
    assert lines[-1].startswith(f"retrain run={result.run_id} outcome=refused reason=")
    assert _store_tags() == tags
    assert sorted(p.name for p in store.iterdir()) == published
    metrics = _metrics(tmp_path / "run" / "retrain.prom")
    assert metrics[("recsys_retrain_run_success", ())] == 0
    assert metrics[("recsys_retrain_step_success", (("step", step),))] == 0
    assert ("recsys_retrain_last_success_timestamp_seconds", ()) not in metrics


def test_cli_refuses_a_broken_day_in_one_line(source, days, tmp_path):
    _, new_day, _ = days
    path = source / "interactions" / "9999-zz-broken.parquet"
    pd.concat([new_day] * 10, ignore_index=True).to_parquet(path, index=False)
    try:
        validate = subprocess.run(
            [sys.executable, "-m", "recsys", "data", "validate", "--data", str(source)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        retrain = subprocess.run(
            [sys.executable, "-m", "recsys", "retrain", "--source", str(source)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
    finally:
        path.unlink()
    assert validate.returncode == 2, validate.stdout
    assert "Traceback" not in validate.stderr
    error = [line for line in validate.stderr.splitlines() if line.strip()]
    assert error[0].startswith("error: refusing to train on 9999-zz-broken.parquet")
    assert retrain.returncode == 1 and "Traceback" not in retrain.stdout + retrain.stderr
    assert "outcome=refused reason=refusing to train" in retrain.stdout.splitlines()[-1]


def test_a_worse_candidate_never_reaches_the_store(loop, source, tmp_path):
    """A crippled model (2 factors, 1 iteration, 2 trees) is refused by the gate or the
    preflight; a refused candidate is deleted from the store again."""
    tags = _store_tags()
    config = RetrainConfig(
        source=str(source),
        out=tmp_path / "run",
        stable_ranking=loop["second"].candidate["ranking"],
        train_overrides={
            **TINY_TRAINING,
            "embedding": {"factors": 2, "iterations": 1},
            "ranker": {"n_estimators": 2, "max_training_users": 100},
        },
    )
    result = run_retrain(config, echo=lambda line: None)
    assert result.outcome == "refused", result.reason
    assert result.steps[-1].name in ("gate", "preflight")
    assert _store_tags() == tags


def test_a_named_stable_model_that_does_not_exist_is_refused(loop, source, tmp_path):
    tags = _store_tags()
    result = _run(
        source,
        tmp_path / "run",
        [],
        stable_ranking="recsys-ranking:doesnotexist",
        model_store=str(loop["work"] / "model-store"),
    )
    assert result.outcome == "refused" and result.steps[-1].name == "load"
    assert "recsys-ranking:doesnotexist" in result.reason
    assert _store_tags() == tags


class _FakeKubeAPI(BaseHTTPRequestHandler):
    """A stand-in for the Kubernetes API server (the one mock here): records posted Events."""

    posted: ClassVar[list[tuple[str, dict]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).posted.append((self.path, body))
        self.send_response(201)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args) -> None:
        pass


def test_each_step_posts_a_kubernetes_event(source, days, tmp_path, monkeypatch):
    """Against a fake API server on 127.0.0.1 (no cluster here): one Event per step, on the
    job's pod, Warning for the refusal."""
    from kubernetes import client

    from recsys.ops.training_job import KubeEvents

    _, new_day, _ = days
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKubeAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("POD_NAME", "recsys-training-123-abc")
    monkeypatch.setenv("POD_NAMESPACE", "recsys")
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_port}")
    events = KubeEvents(client.ApiClient(configuration))
    path = source / "interactions" / "9999-zz-broken.parquet"
    pd.concat([new_day] * 10, ignore_index=True).to_parquet(path, index=False)
    try:
        result = run_retrain(
            RetrainConfig(source=str(source), out=tmp_path / "run"), lambda line: None, events
        )
    finally:
        path.unlink()
        server.shutdown()
    assert result.outcome == "refused"
    posted = _FakeKubeAPI.posted
    assert [p for p, _ in posted] == ["/api/v1/namespaces/recsys/events"] * 2
    (_, load), (_, check) = posted
    assert load["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "recsys-training-123-abc",
        "namespace": "recsys",
    }
    assert (load["reason"], load["type"]) == ("RetrainLoadOk", "Normal")
    assert (check["reason"], check["type"]) == ("RetrainCheckRefused", "Warning")
    assert check["message"].startswith(f"run {result.run_id}: check refused: refusing to train")
