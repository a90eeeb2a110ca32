"""Preflight: candidate vs stable NDCG@10 on the latest window, from stored models."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from recsys.rollout.cli import rollout_app
from recsys.rollout.errors import RolloutError
from recsys.rollout.preflight import PairScore, compare_ndcg, linked_retrieval, run_preflight


def test_tolerance_is_relative():
    passed, floor, reason = compare_ndcg(0.200, 0.197, 0.02)
    assert passed and floor == pytest.approx(0.196)
    assert "-1.5%" in reason
    passed, _, reason = compare_ndcg(0.200, 0.190, 0.02)
    assert not passed
    assert "5.0% below stable 0.2000" in reason and "needs >= 0.1960" in reason
    assert compare_ndcg(0.200, 0.250, 0.0)[0]
    with pytest.raises(RolloutError):
        compare_ndcg(0.2, 0.2, 1.5)


@pytest.fixture(scope="module")
def data_dir(tiny_data, tmp_path_factory):
    from recsys.model.data.loaders import save_dataset

    return save_dataset(
        tiny_data.interactions, tiny_data.catalog, tmp_path_factory.mktemp("preflight-data")
    )


@pytest.fixture(scope="module")
def two_versions(tiny_result):
    """The same trained pair stored twice: two versions with identical quality."""
    from recsys.model.artifacts import save_models

    return save_models(tiny_result), save_models(tiny_result)


@pytest.mark.integration
def test_equal_models_pass_on_the_same_window(data_dir, two_versions):
    stable, candidate = two_versions
    assert linked_retrieval(candidate["ranking"]) == candidate["retrieval"]
    result = run_preflight(data_dir, stable["ranking"], candidate["ranking"], tolerance=0.02)
    assert result.passed and result.exit_code == 0
    assert result.stable.ndcg == pytest.approx(result.candidate.ndcg)
    assert result.candidate.retrieval_tag == candidate["retrieval"]
    assert result.stable.users == result.candidate.users > 0
    # Same split as training: the evaluation reproduces the stored training-time number.
    assert result.stable.ndcg == pytest.approx(result.stable.trained_ndcg, rel=1e-6)
    assert result.window["split"] == "chronological"


@pytest.mark.integration
def test_cli_refuses_a_worse_candidate(data_dir, two_versions, monkeypatch, tmp_path):
    import recsys.rollout.preflight as preflight

    stable, candidate = two_versions
    real_score = preflight._score

    def worse_candidate(retrieval_tag, ranking_tag, *args):
        score = real_score(retrieval_tag, ranking_tag, *args)
        if ranking_tag == candidate["ranking"]:
            return PairScore(**{**score.__dict__, "ndcg": score.ndcg * 0.9})
        return score

    monkeypatch.setattr(preflight, "_score", worse_candidate)
    out = tmp_path / "preflight.json"
    result = CliRunner().invoke(
        rollout_app,
        [
            "preflight",
            "--data",
            str(data_dir),
            "--stable-ranking",
            stable["ranking"],
            "--candidate-ranking",
            candidate["ranking"],
            "--tolerance",
            "0.05",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "REFUSED" in result.output
    saved = json.loads(out.read_text())
    assert saved["passed"] is False and saved["tolerance"] == 0.05
    assert saved["candidate"]["ndcg"] == pytest.approx(saved["stable"]["ndcg"] * 0.9)
