import numpy as np
import pytest
import scipy.sparse as sp

from recsys.model.retrieval import (
    IndexConfig,
    RetrievalModel,
    build_index,
    index_kind,
    measure_recall,
)
from recsys.model.sources import SIGNAL_NAMES, ItemItemConfig, fit_item_item, fuse_lists


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
    model = tiny_result.retrieval
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


def test_fusion_is_weighted_reciprocal_rank():
    lists = {"ann": np.array([1, 2, 3]), "item": np.array([3, 4]), "popular": np.array([5])}
    weights = {"ann": 1.0, "item": 2.0, "popular": 0.5}
    items, scores, provenance = fuse_lists(lists, weights, k=10, rrf_k=0.0)
    expected = {1: 1.0, 2: 0.5, 3: 1 / 3 + 2.0, 4: 1.0, 5: 0.5}
    assert items.tolist() == [3, 1, 4, 2, 5]
    np.testing.assert_allclose(scores, [expected[i] for i in items.tolist()])
    assert provenance.tolist() == ["item", "ann", "item", "ann", "popular"]


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
