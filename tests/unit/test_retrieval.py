import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.model.retrieval import (
    IndexConfig,
    RetrievalModel,
    build_index,
    index_kind,
    measure_recall,
)
from recsys.model.sources import (
    SIGNAL_NAMES,
    CatalogPositions,
    ItemItemConfig,
    PopularityDefinition,
    fit_item_item,
    merge_lists,
    popularity_scores,
    positions_in,
    top_items,
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


def test_warm_user_gets_fused_sources_without_seen_items(tiny_result):
    # Fixed shares: the tuned ones of the tiny data may leave a source out.
    trained = tiny_result.retrieval
    config = dataclasses.replace(trained.config, ann_share=0.4, item_share=0.4)
    model = dataclasses.replace(trained, config=config)
    user = _warm_user(model)
    found = model.retrieve_indices(user, 50)
    assert len(found) == 50 and len(set(found.item_idx.tolist())) == 50
    assert not np.isin(found.item_idx, model.seen_items(user)).any()
    assert (np.diff(found.scores) <= 1e-7).all()  # fused order
    assert {"ann", "item"} <= set(found.sources.tolist())
    signals = dict(zip(SIGNAL_NAMES, found.signals.T, strict=True))
    exact = model.item_factors[found.item_idx] @ model.user_factors[user]
    np.testing.assert_allclose(signals["ann_score"], exact, rtol=1e-5)
    # Provenance says which list proposed it: that source ranks it within the list.
    for source, rank in (("ann", "ann_rank"), ("item", "item_rank"), ("popular", "popular_rank")):
        picked = found.sources == source
        assert (signals[rank][picked] < 50).all()
    lists = model.source_lists(user, 50, model.seen_items(user)).lists
    ann_list = lists["ann"].tolist()
    for item, rank in zip(found.item_idx.tolist(), signals["ann_rank"].tolist(), strict=True):
        assert rank == (ann_list.index(item) if item in ann_list else 50)


def test_merge_takes_each_share_then_orders_by_reciprocal_rank():
    lists = {"ann": np.array([1, 2, 3]), "item": np.array([3, 4, 6]), "popular": np.array([5, 1])}
    weights = {"ann": 1.0, "item": 2.0, "popular": 0.5}
    shares = {"ann": 0.4, "item": 0.2}
    items, scores, provenance = merge_lists(lists, shares, weights, k=5, rrf_k=0.0)
    # ALS gives 2 (1, 2), item-item 1 (3), popularity fills (5), then the rest (4).
    assert set(items.tolist()) == {1, 2, 3, 5, 4}
    expected = {1: 1.0 + 0.5 / 2, 2: 0.5, 3: 1 / 3 + 2.0, 4: 1.0, 5: 0.5}
    assert items.tolist() == sorted(expected, key=lambda i: -expected[i])
    np.testing.assert_allclose(scores, [expected[i] for i in items.tolist()])
    origin = dict(zip(items.tolist(), provenance.tolist(), strict=True))
    assert origin == {1: "ann", 2: "ann", 3: "item", 5: "popular", 4: "item"}
    # A source with nothing for the user leaves its share to the next one.
    cold = merge_lists({"popular": np.array([5, 1, 7])}, shares, weights, k=2, rrf_k=0.0)
    assert cold[0].tolist() == [5, 1] and cold[2].tolist() == ["popular", "popular"]


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
    window = trending_window_days(np.array(ages), 14.0, 0.1)
    assert window == pytest.approx(np.quantile(ages, 0.1)) and window > 14.0
    trending = popularity_scores(history, items, as_of, PopularityDefinition())
    assert trending[items.index_of("other")] == 0.0
    assert trending[items.index_of("old-hit")] > 0 and trending.sum() == pytest.approx(1.0)
    fixed = popularity_scores(history, items, as_of, PopularityDefinition(min_share=0.0))
    assert fixed.tolist() == [0.0, 0.0, 1.0]  # the fixed window: the lone event is all
    all_time = popularity_scores(history, items, as_of, PopularityDefinition(all_time_weight=1))
    np.testing.assert_allclose(all_time, [45 / 101, 55 / 101, 1 / 101])
    blend = popularity_scores(history, items, as_of, PopularityDefinition(all_time_weight=0.5))
    np.testing.assert_allclose(blend, 0.5 * trending + 0.5 * all_time)


def test_trending_window_keeps_the_configured_days_on_a_dense_log():
    assert trending_window_days(np.linspace(0.0, 60.0, 600), 14.0, 0.1) == 14.0


def test_item_item_ease_and_knn_recover_co_occurrence():
    # Two blocks of items that are always met together.
    rows, cols = [], []
    for user in range(40):
        block = range(0, 5) if user % 2 else range(5, 10)
        rows += [user] * 5
        cols += list(block)
    matrix = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(40, 12))
    for method in ("ease", "knn"):
        model = fit_item_item(matrix, ItemItemConfig(method=method, min_support=1, neighbours=4))
        assert model.method == method and model.active.tolist() == list(range(10))
        scores = model.scores(np.array([0, 1]), np.ones(2))
        others = [i for i in np.argsort(-scores, kind="stable").tolist() if i not in (0, 1)]
        assert set(others[:3]) == {2, 3, 4} and min(scores[2:5]) > max(scores[5:10])
        assert scores[10:].tolist() == [0.0, 0.0]  # never met: not in the model


def test_active_scores_read_like_the_catalog_wide_vector():
    rng = np.random.default_rng(4)
    matrix = sp.random(300, 80, density=0.08, format="lil", random_state=5)
    matrix[2:, 60:] = 0  # items 60.. met by two users at most: left out of the model
    matrix = matrix.tocsr()
    for method in ("ease", "knn"):
        model = fit_item_item(matrix, ItemItemConfig(method=method, min_support=3, neighbours=6))
        assert 0 < len(model.active) < 80  # some items inactive: the mapping is exercised
        for _ in range(20):
            profile = rng.choice(80, size=int(rng.integers(1, 12)), replace=False)
            weights = rng.random(len(profile)).astype(np.float32)
            catalog = model.scores(profile, weights)
            active = model.active_scores(profile, weights)
            everything = np.arange(80)
            assert np.array_equal(active.at(everything), catalog)
            blocked = np.zeros(80, dtype=bool)
            blocked[rng.choice(80, size=10, replace=False)] = True
            for k in (1, 5, 80):
                assert np.array_equal(active.top(blocked, k), top_items(catalog, blocked, k))


def test_catalog_positions_match_sorting_and_searching():
    rng = np.random.default_rng(6)
    positions = CatalogPositions(1000)
    for size in (0, 1, 7, 200):
        ranked = rng.choice(1000, size=size, replace=False)
        items = rng.choice(1000, size=150, replace=True)
        items[: size // 2] = ranked[: size // 2]  # some hits
        assert np.array_equal(positions(items, ranked), positions_in(items, ranked))
    assert positions(np.array([3, 9]), None).tolist() == [-1, -1]
    # An item listed twice keeps its first position, and the scratch array is left clean.
    assert positions(np.array([5, 2]), np.array([5, 2, 5])).tolist() == [0, 1]
    assert positions(np.array([5, 2]), np.array([4])).tolist() == [-1, -1]


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


def test_unknown_and_cold_users_get_popular_items(tiny_result):
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


def test_a_model_saved_by_other_code_is_refused_with_a_reason(tiny_result, tmp_path):
    tiny_result.retrieval.save(tmp_path / "old")
    meta_path = tmp_path / "old" / "retrieval.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["popular_share"] = 0.2  # a setting of the previous release
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"another version of recsys .*popular_share.*retrain"):
        RetrievalModel.load(tmp_path / "old")
