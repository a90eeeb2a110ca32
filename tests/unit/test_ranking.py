import numpy as np

from recsys.ranking import Ranker


def test_ranker_round_trip_and_unknown_items(tiny_result, tmp_path):
    ranker, retrieval = tiny_result.ranker, tiny_result.retrieval
    ranker.save(tmp_path / "r")
    loaded = Ranker.load(tmp_path / "r")
    ids = retrieval.items.ids[retrieval.popular_idx[:20]].tolist()
    scores = [0.1] * 20
    expected = ranker.score("u1", ids, scores, [True] * 20)
    np.testing.assert_allclose(loaded.score("u1", ids, scores, [True] * 20), expected, rtol=1e-6)
    mixed = loaded.score("u1", [*ids[:3], "unknown-item"], scores[:4], [True] * 4)
    assert np.isneginf(mixed[3]) and np.isfinite(mixed[:3]).all()


def test_ranker_uses_early_stopping(tiny_result):
    info = tiny_result.ranker.info
    assert 0 <= info["best_iteration"] < tiny_result.config.ranker.n_estimators
    assert info["training_queries"] > 0 and info["valid_ndcg_at_10"] > 0
