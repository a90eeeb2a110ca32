from pathlib import Path

import pytest

from recsys.errors import ModelCorruptError, ModelMissingError
from recsys.model.artifacts import (
    list_models,
    load_ranker,
    load_retrieval,
    resolve_tag,
    save_models,
)


@pytest.fixture(scope="module")
def saved(tiny_result):
    return save_models(tiny_result)


def test_saved_models_load_back(saved, tiny_result):
    retrieval, tag = load_retrieval(saved["retrieval"])
    assert tag == saved["retrieval"]
    user = tiny_result.retrieval.users.ids[5]
    assert retrieval.retrieve(user, 10) == tiny_result.retrieval.retrieve(user, 10)
    ranker, _ = load_ranker("latest")
    assert ranker.info == tiny_result.ranker.info
    assert resolve_tag("latest", "recsys-ranking") == saved["ranking"]


def test_metadata_and_listing(saved, tiny_result):
    import bentoml

    info = bentoml.models.get(saved["ranking"]).info
    assert info.labels["data_hash"] == tiny_result.data_hash
    assert info.labels["retrieval_tag"] == saved["retrieval"]
    assert info.metadata["metrics"]["two_stage"]["ndcg@10"] == pytest.approx(
        tiny_result.metrics["models"]["two_stage"]["ndcg@10"]
    )
    assert info.metadata["code_revision"]
    tags = {row["tag"] for row in list_models()}
    assert set(saved.values()) <= tags


def test_missing_model_is_a_clear_error():
    with pytest.raises(ModelMissingError, match="not in the BentoML model store"):
        load_retrieval("recsys-retrieval:doesnotexist")


def test_corrupt_artifact_is_detected(saved):
    import bentoml

    path = Path(bentoml.models.get(saved["ranking"]).path)
    booster = path / "booster.ubj"
    original = booster.read_bytes()
    try:
        booster.write_bytes(original[: len(original) // 2])
        with pytest.raises(ModelCorruptError, match=r"booster\.ubj does not match its checksum"):
            load_ranker(saved["ranking"])
        booster.unlink()
        with pytest.raises(ModelCorruptError, match=r"booster\.ubj is missing"):
            load_ranker(saved["ranking"])
    finally:
        booster.write_bytes(original)
    load_ranker(saved["ranking"])
