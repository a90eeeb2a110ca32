"""The whole pipeline on tiny data, and the CLI around it."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from recsys.model.data import schema
from recsys.model.evaluate import MODELS
from recsys.model.pipeline import make_split, train_pipeline
from recsys.model.report import write_report
from recsys.model.tuning import ALS_GRID, TuningConfig
from tests.conftest import tiny_train_config

pytestmark = pytest.mark.integration


def test_pipeline_produces_all_models_and_slices(tiny_result):
    metrics = tiny_result.metrics
    assert set(metrics["models"]) == set(MODELS)
    for values in metrics["models"].values():
        for name in ("ndcg", "recall", "precision", "map", "mrr", "hit_rate", "coverage"):
            for k in (5, 10, 20):
                assert 0.0 <= values[f"{name}@{k}"] <= 1.0
    assert {"cold", "warm", "light", "heavy"} <= set(metrics["slices"])
    assert metrics["candidate_recall@100"] >= metrics["models"]["retrieval"]["recall@20"]
    by_source = metrics["candidate_recall_by_source"]
    assert by_source["retrieval"] == metrics["candidate_recall@100"]
    assert by_source["retrieval"] >= max(by_source["ann"], by_source["popularity"]) - 0.02
    assert [trial["stage"] for trial in metrics["tuning"]["trials"]] == ["ranker"]  # tuning off
    assert set(tiny_result.timings) >= {"validate", "ranker", "evaluate"}


def test_tuning_searches_every_stage_on_validation_only(tiny_data):
    config = tiny_train_config(tuning=TuningConfig(enabled=True, max_users=500))
    result = train_pipeline(tiny_data.interactions, tiny_data.catalog, config)
    tuning = result.metrics["tuning"]
    stages = [trial["stage"] for trial in tuning["trials"]]
    assert {"popularity", "item-item", "item-item profile", "als", "merge", "order"} <= set(stages)
    assert stages[-1] == "ranker" and tuning["users"] <= 500
    assert tuning["capped"] == [] and stages.count("als") == len(ALS_GRID)  # the whole grid
    for stage in set(stages):  # one choice per stage, and the trained models use it
        assert sum(t["chosen"] for t in tuning["trials"] if t["stage"] == stage) == 1
    merge = next(t for t in tuning["trials"] if t["stage"] == "merge" and t["chosen"])
    assert result.retrieval.config.ann_share == merge["params"]["ann_share"]
    assert result.config.retrieval == result.retrieval.config
    # The held-out test window is not an input of the search: its rows are not in train or
    # validation, and the search users are validation users.
    split = make_split(tiny_data.interactions, config)
    assert split.test[schema.TIMESTAMP].min() >= split.test_start
    assert tuning["chosen"]["retrieval"] == dataclasses.asdict(result.config.retrieval)


def test_ranker_improves_on_retrieval_and_gate_is_consistent(tiny_result):
    # On tiny data popularity is hard to beat; the default-size comparison is a reported figure.
    models = tiny_result.metrics["models"]
    assert models["two_stage"]["ndcg@10"] > models["retrieval"]["ndcg@10"]
    served = models["served"]["ndcg@10"]
    selection = tiny_result.metrics["selection"]
    passes = (
        served > models["popularity"]["ndcg@10"]
        and served >= models["retrieval"]["ndcg@10"]
        and selection["ndcg@10"][selection["served"]]
        >= selection["ndcg@10"][selection["best_single_source"]]
    )
    assert tiny_result.promotable == passes
    assert bool(tiny_result.promotion_reasons) != passes


def test_the_served_order_is_the_validation_winner_and_is_what_evaluation_measures(tiny_result):
    selection = tiny_result.metrics["selection"]
    ndcg = selection["ndcg@10"]
    assert set(ndcg) == {"ranker", "retrieval", "ann", "item", "popular"}
    assert selection["served"] == max(ndcg, key=lambda name: (ndcg[name], name == "ranker"))
    assert tiny_result.ranker.serving_order == selection["served"]
    assert selection["users"] > 0 and selection["lists"] >= selection["users"]
    models = tiny_result.metrics["models"]
    if selection["served"] == "ranker":
        assert models["served"] == models["two_stage"]
    elif selection["served"] == "retrieval":
        assert models["served"] == models["retrieval"]


def test_a_forced_order_is_served_and_judged(tiny_data):
    config = tiny_train_config()
    config = dataclasses.replace(
        config, ranker=dataclasses.replace(config.ranker, serving_order="retrieval")
    )
    result = train_pipeline(tiny_data.interactions, tiny_data.catalog, config)
    assert result.ranker.serving_order == "retrieval"
    assert result.metrics["models"]["served"] == result.metrics["models"]["retrieval"]
    selection = result.metrics["selection"]
    below = (
        selection["ndcg@10"]["retrieval"] < selection["ndcg@10"][selection["best_single_source"]]
    )
    assert any("best single source" in reason for reason in result.promotion_reasons) == below


def test_same_seed_same_metrics(tiny_data, tiny_result):
    again = train_pipeline(tiny_data.interactions, tiny_data.catalog, tiny_train_config())
    assert json.dumps(again.metrics["models"], sort_keys=True) == json.dumps(
        tiny_result.metrics["models"], sort_keys=True
    )
    assert again.data_hash == tiny_result.data_hash


def test_random_split_runs(tiny_data):
    result = train_pipeline(
        tiny_data.interactions, tiny_data.catalog, tiny_train_config(split="random")
    )
    assert result.split["kind"] == "random"
    assert result.metrics["users"] > 100


def test_temporal_split_runs(tiny_data):
    config = tiny_train_config(split="temporal")
    config = dataclasses.replace(config, ranker=dataclasses.replace(config.ranker, label_folds=2))
    result = train_pipeline(tiny_data.interactions, tiny_data.catalog, config)
    assert result.split["kind"] == "temporal"
    assert result.metrics["ranker"]["label_folds"] == 2
    assert result.metrics["users"] > 100


def test_report_files(tiny_result, tmp_path):
    summary = {
        "metrics": tiny_result.metrics,
        "validation_summary": tiny_result.validation.summary_lines(),
        "split": tiny_result.split,
        "data_hash": tiny_result.data_hash,
        "config": tiny_result.config.to_dict(),
        "timings": tiny_result.timings,
        "promotable": False,
        "promotion_reasons": ["two-stage ndcg@10 0.1 does not beat popularity 0.2"],
    }
    paths = write_report(summary, tmp_path)
    report = paths["report"].read_text()
    assert "NOT PROMOTABLE" in report and "does not beat popularity" in report
    assert paths["plot_metric_at_k"].read_bytes()[:4] == b"\x89PNG"
    assert paths["plot_slices"].stat().st_size > 1000
    card = paths["model_card"].read_text()
    assert tiny_result.data_hash in card and "Known limitations" in card
    assert json.loads(paths["metrics"].read_text())["data_hash"] == tiny_result.data_hash


def _recsys(*args, cwd, env):
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_end_to_end(tmp_path, bentoml_home):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "store")}
    synth = _recsys(
        "data",
        "synth",
        "--out",
        "d",
        "--users",
        "500",
        "--items",
        "1200",
        "--events",
        "20000",
        "--days",
        "50",
        cwd=tmp_path,
        env=env,
    )
    assert synth.returncode == 0, synth.stderr
    validate = _recsys("data", "validate", "--data", "d", cwd=tmp_path, env=env)
    assert validate.returncode == 0 and "20000/20000 rows kept" in validate.stdout
    train = _recsys(
        "train",
        "--data",
        "d",
        "--out",
        "rep",
        "--validation-days",
        "8",
        "--test-days",
        "8",
        "--factors",
        "16",
        "--iterations",
        "5",
        cwd=tmp_path,
        env=env,
    )
    assert train.returncode == 0, train.stderr
    assert "report: rep/report.md" in train.stdout.replace("\n", " ")
    listing = _recsys("models", "list", "--json", cwd=tmp_path, env=env)
    rows = json.loads(listing.stdout)
    assert {r["stage"] for r in rows} == {"retrieval", "ranking"}
    evaluate = _recsys("evaluate", "--data", "d", "--out", "ev", cwd=tmp_path, env=env)
    assert evaluate.returncode == 0, evaluate.stderr
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert again["metrics"]["models"] == saved["metrics"]["models"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--data", "missing-dir"), "data directory not found"),
        (("train", "--split", "sideways"), "--split must be chronological, random or temporal"),
        (
            ("evaluate", "--retrieval-tag", "recsys-retrieval:nope"),
            "not in the BentoML model store",
        ),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "empty-store")}
    result = _recsys(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
