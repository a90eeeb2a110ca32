import numpy as np
import pandas as pd
import pytest

from recsys.model.retrieval import (
    IndexConfig,
    RetrievalConfig,
    RetrievalModel,
    build_index,
    index_kind,
    measure_recall,
    trending_items,
    trending_window_days,
)
from recsys.model.vocab import Vocabulary


def test_index_kind_follows_catalog_size():
    config = IndexConfig(brute_force_below=1000)
    assert index_kind(999, config) == "brute_force"
    assert index_kind(1000, config) == "tree_ah_reorder"


def test_tree_index_recall_against_exact_search():
    # Clustered like trained embeddings (isotropic noise is ScaNN's worst case, not ours).
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    vectors = centres[rng.integers(40, size=5000)] + 0.3 * rng.normal(size=(5000, 32))
    vectors = vectors.astype(np.float32)
    queries = centres[rng.integers(40, size=200)] + 0.3 * rng.normal(size=(200, 32))
    queries = queries.astype(np.float32)
    searcher = build_index(vectors, IndexConfig(brute_force_below=1000))
    recall, ann_qps, exact_qps = measure_recall(searcher, vectors, queries, k=10)
    assert recall >= 0.9
    assert ann_qps > 0 and exact_qps > 0
    brute = build_index(vectors, IndexConfig(brute_force_below=10_000))
    assert measure_recall(brute, vectors, queries, k=10)[0] == pytest.approx(1.0)


def test_build_stats_are_recorded(tiny_result):
    stats = tiny_result.retrieval.stats
    assert stats["index"] == "brute_force" and stats["items"] == 1500
    assert stats["recall_at_10_vs_exact"] == pytest.approx(1.0)


def _warm_user(model: RetrievalModel) -> int:
    return next(u for u in range(len(model.users)) if not model.is_cold(u))


def test_warm_user_gets_ann_then_popular_without_seen_items(tiny_result):
    model = tiny_result.retrieval
    user = _warm_user(model)
    found = model.retrieve_indices(user, 50)
    assert len(found) == 50 and len(set(found.item_idx.tolist())) == 50
    assert not np.isin(found.item_idx, model.seen_items(user)).any()
    n_popular = round(50 * model.config.popular_share)
    assert found.from_popular.sum() == n_popular
    assert not found.from_popular[: 50 - n_popular].any()  # ANN results come first
    ann_scores = found.scores[: 50 - n_popular]
    assert (np.diff(ann_scores) <= 1e-5).all()
    exact = model.item_factors @ model.user_factors[user]
    np.testing.assert_allclose(ann_scores, exact[found.item_idx[: 50 - n_popular]], rtol=1e-4)


def test_exclusions_and_seen_flag(tiny_result):
    model = tiny_result.retrieval
    user_id = model.users.ids[_warm_user(model)]
    first = model.retrieve(user_id, 20)
    excluded = [c["item_id"] for c in first[:5]]
    again = model.retrieve(user_id, 20, exclude_items=excluded)
    assert not set(excluded) & {c["item_id"] for c in again}
    with_seen = model.retrieve(user_id, 300, exclude_seen=False)
    seen = set(model.items.ids[model.seen_items(model.users.index_of(user_id))])
    assert seen & {c["item_id"] for c in with_seen}


def test_unknown_and_cold_users_get_trending_items(tiny_result):
    model = tiny_result.retrieval
    found = model.retrieve("nobody-knows-me", 10)
    assert [c["source"] for c in found] == ["popular"] * 10
    assert [c["item_id"] for c in found] == model.items.ids[model.popular_idx[:10]].tolist()


def test_similar_items(tiny_result):
    model = tiny_result.retrieval
    item = model.items.ids[model.popular_idx[0]]
    similar = model.similar_items(item, 10)
    assert len(similar) == 10 and item not in {s["item_id"] for s in similar}
    scores = [s["score"] for s in similar]
    assert scores == sorted(scores, reverse=True) and max(scores) <= 1.0001
    assert model.similar_items("no-such-item", 5) is None


def test_save_load_round_trip_after_moving(tiny_result, tmp_path):
    model = tiny_result.retrieval
    model.save(tmp_path / "a")
    (tmp_path / "a").rename(tmp_path / "moved")  # artifacts are copied into Bentos and images
    loaded = RetrievalModel.load(tmp_path / "moved")
    user_id = model.users.ids[_warm_user(model)]
    assert loaded.retrieve(user_id, 30) == model.retrieve(user_id, 30)
    item = model.items.ids[3]
    assert loaded.similar_items(item, 5) == model.similar_items(item, 5)


def _log(ages_days: list[float], item_ids: list[str], as_of: pd.Timestamp) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(len(ages_days))],
            "item_id": item_ids,
            "timestamp": [as_of - pd.Timedelta(days=age) for age in ages_days],
            "event": "view",
            "weight": 1.0,
        }
    )


def test_trending_window_widens_on_a_sparse_log():
    """A log with one event in the last 14 days (MovieLens over 22 years) still builds the
    popular list from a tenth of its events, not from that single event."""
    as_of = pd.Timestamp("2026-01-01", tz="UTC")
    items = Vocabulary(["old-hit", "other", "lone-recent"])
    ages = [1.0] + [300.0 + i for i in range(60)] + [900.0 + i for i in range(40)]
    ids = ["lone-recent"] + ["old-hit"] * 45 + ["other"] * 15 + ["other"] * 40
    history = _log(ages, ids, as_of)
    config = RetrievalConfig()
    age_days = np.array(ages)
    assert trending_window_days(age_days, config) == pytest.approx(np.quantile(ages, 0.1))
    assert trending_window_days(age_days, config) > config.trending_days
    order, scores = trending_items(history, items, as_of, config)
    assert set(items.ids[order].tolist()) == {"lone-recent", "old-hit"}
    assert scores[0] == pytest.approx(1.0) and (np.diff(scores) <= 0).all()
    # With the old fixed window the lone recent event would have been the whole list.
    fixed = RetrievalConfig(trending_min_share=0.0)
    assert items.ids[trending_items(history, items, as_of, fixed)[0]].tolist() == ["lone-recent"]


def test_trending_window_keeps_the_configured_days_on_a_dense_log():
    ages = np.linspace(0.0, 60.0, 600)
    assert trending_window_days(ages, RetrievalConfig()) == 14.0
