"""Each metric against an independent reference (scikit-learn where it has one)."""

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    label_ranking_average_precision_score,
    ndcg_score,
    precision_score,
    recall_score,
)

from recsys.model.metrics import (
    METRICS,
    average_precision_at_k,
    catalog_coverage,
    evaluate_lists,
    hit_rate_at_k,
    mean_recall,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank_at_k,
)

CASES = [(seed, n, k) for seed in range(25) for n, k in ((30, 5), (50, 10), (200, 20))]


def _case(seed: int, n: int):
    rng = np.random.default_rng(seed)
    relevance = (rng.random(n) < rng.uniform(0.03, 0.3)).astype(int)
    if relevance.sum() == 0:
        relevance[rng.integers(n)] = 1
    scores = rng.random(n)  # continuous: no ties
    ranked = list(np.argsort(-scores))
    relevant = set(np.flatnonzero(relevance).tolist())
    return relevance, scores, ranked, relevant


@pytest.mark.parametrize(("seed", "n", "k"), CASES)
def test_ndcg_matches_sklearn(seed, n, k):
    relevance, scores, ranked, relevant = _case(seed, n)
    expected = ndcg_score([relevance], [scores], k=k)
    assert ndcg_at_k(ranked, relevant, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("seed", "n", "k"), CASES)
def test_precision_and_recall_match_sklearn(seed, n, k):
    relevance, _, ranked, relevant = _case(seed, n)
    predicted = np.zeros(n, dtype=int)
    predicted[ranked[:k]] = 1
    assert precision_at_k(ranked, relevant, k) == pytest.approx(
        precision_score(relevance, predicted)
    )
    assert recall_at_k(ranked, relevant, k) == pytest.approx(recall_score(relevance, predicted))
    assert hit_rate_at_k(ranked, relevant, k) == float(relevance[ranked[:k]].any())


@pytest.mark.parametrize(("seed", "n", "k"), CASES)
def test_average_precision_over_full_list_matches_sklearn(seed, n, k):
    relevance, scores, ranked, relevant = _case(seed, n)
    expected = average_precision_score(relevance, scores)
    assert average_precision_at_k(ranked, relevant, n) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_mrr_matches_label_ranking_average_precision_with_one_relevant_item(seed):
    rng = np.random.default_rng(seed)
    n = 40
    relevance = np.zeros(n, dtype=int)
    relevance[rng.integers(n)] = 1
    scores = rng.random(n)
    ranked = list(np.argsort(-scores))
    expected = label_ranking_average_precision_score([relevance], [scores])
    assert reciprocal_rank_at_k(ranked, set(np.flatnonzero(relevance)), n) == pytest.approx(
        expected
    )


def test_hand_computed_case():
    ranked, relevant = ["a", "b", "c", "d"], {"b", "d", "z"}
    assert precision_at_k(ranked, relevant, 4) == 0.5
    assert recall_at_k(ranked, relevant, 4) == pytest.approx(2 / 3)
    assert reciprocal_rank_at_k(ranked, relevant, 4) == 0.5
    assert average_precision_at_k(ranked, relevant, 4) == pytest.approx((1 / 2 + 2 / 4) / 3)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert ndcg_at_k(ranked, relevant, 4) == pytest.approx(dcg / idcg)
    assert reciprocal_rank_at_k(ranked, relevant, 1) == 0.0


def test_empty_relevant_and_coverage():
    assert ndcg_at_k([1, 2], set(), 2) == 0.0
    assert recall_at_k([1, 2], set(), 2) == 0.0
    assert catalog_coverage([[1, 2, 3], [3, 4, 5]], catalog_size=10, k=2) == pytest.approx(0.4)


def test_evaluate_lists_averages_users():
    out = evaluate_lists([[1, 2], [3, 4]], [{1}, {9}], ks=[1, 2], catalog_size=4)
    assert out["hit_rate@1"] == 0.5 and out["precision@2"] == 0.25 and out["coverage@2"] == 1.0
    with pytest.raises(ValueError, match="one relevant set"):
        evaluate_lists([[1]], [], ks=[1], catalog_size=1)


def test_evaluate_lists_equals_the_per_user_definitions():
    """The vectorised means equal the means of the per-user functions, short lists and users
    without relevant items included."""
    rng = np.random.default_rng(3)
    lists = [rng.permutation(40)[: rng.integers(0, 25)].tolist() for _ in range(300)]
    relevant = [set(rng.choice(40, size=rng.integers(0, 8), replace=False).tolist()) for _ in lists]
    out = evaluate_lists(lists, relevant, ks=[1, 5, 10, 20], catalog_size=40)
    for k in (1, 5, 10, 20):
        for name, metric in METRICS.items():
            expected = np.mean([metric(x, r, k) for x, r in zip(lists, relevant, strict=True)])
            assert out[f"{name}@{k}"] == pytest.approx(expected, abs=1e-12), (name, k)
    pools = [np.array(x, dtype=np.int64) for x in lists]
    expected = np.mean([recall_at_k(x, r, 25) for x, r in zip(lists, relevant, strict=True)])
    assert mean_recall(pools, relevant) == pytest.approx(expected)
