"""Top-K ranking metrics with binary relevance.

Every function takes one user's ranked recommendations and the set of relevant items. Averages
over users are taken by the caller. Definitions follow the usual IR conventions:

- NDCG@K: DCG with gain 1 and discount 1/log2(rank + 1), over the ideal DCG of min(|rel|, K) hits.
- Recall@K: hits in the top K over |rel|.  Precision@K: hits over K.
- AP@K: sum of precision at each hit rank, over min(|rel|, K).  MRR@K: 1 / rank of the first hit.
- Hit rate@K: 1 when any relevant item is in the top K.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np

_DISCOUNTS = 1.0 / np.log2(np.arange(2, 2050))


def _hits(ranked: Sequence, relevant: Collection, k: int) -> np.ndarray:
    return np.fromiter((item in relevant for item in ranked[:k]), dtype=bool)


def _discounts(n: int) -> np.ndarray:
    return _DISCOUNTS[:n] if n <= len(_DISCOUNTS) else 1.0 / np.log2(np.arange(2, n + 2))


def ndcg_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    if not relevant:
        return 0.0
    hits = _hits(ranked, relevant, k)
    dcg = float(_discounts(len(hits))[hits].sum())
    ideal = float(_discounts(min(len(relevant), k)).sum())
    return dcg / ideal


def recall_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    if not relevant:
        return 0.0
    return float(_hits(ranked, relevant, k).sum()) / len(relevant)


def precision_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    return float(_hits(ranked, relevant, k).sum()) / k


def average_precision_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    if not relevant:
        return 0.0
    hits = _hits(ranked, relevant, k)
    if not hits.any():
        return 0.0
    precision_at_hits = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hits.sum()) / min(len(relevant), k)


def reciprocal_rank_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    hits = np.flatnonzero(_hits(ranked, relevant, k))
    return 1.0 / (hits[0] + 1) if len(hits) else 0.0


def hit_rate_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    return float(_hits(ranked, relevant, k).any())


METRICS = {
    "ndcg": ndcg_at_k,
    "recall": recall_at_k,
    "precision": precision_at_k,
    "map": average_precision_at_k,
    "mrr": reciprocal_rank_at_k,
    "hit_rate": hit_rate_at_k,
}


def catalog_coverage(recommendation_lists: Iterable[Sequence], catalog_size: int, k: int) -> float:
    """Share of the catalog that appears in at least one top-K list."""
    shown: set = set()
    for ranked in recommendation_lists:
        shown.update(ranked[:k])
    return len(shown) / catalog_size if catalog_size else 0.0


def hit_matrix(recommendations: Sequence[Sequence], relevant: Sequence[Collection], k: int):
    """Users x k booleans (is the item at each rank relevant; short lists padded with False)."""
    hits = np.zeros((len(recommendations), k), dtype=bool)
    for row, (ranked, rel) in enumerate(zip(recommendations, relevant, strict=True)):
        top = ranked[:k]
        if len(top) and rel:
            hits[row, : len(top)] = [item in rel for item in top]
    return hits


def evaluate_lists(
    recommendations: Sequence[Sequence],
    relevant: Sequence[Collection],
    ks: Sequence[int],
    catalog_size: int,
) -> dict[str, float]:
    """Mean of every metric at every K over users, plus catalog coverage at every K.

    The same definitions as the per-user functions above, computed at once from one hit
    matrix (what evaluation of ten thousand users times several models needs).
    """
    if len(recommendations) != len(relevant):
        raise ValueError("one relevant set per recommendation list is required")
    out: dict[str, float] = {}
    if not len(recommendations):
        for k in ks:
            out |= {f"{name}@{k}": 0.0 for name in METRICS} | {f"coverage@{k}": 0.0}
        return out | {"users": 0.0}
    hits = hit_matrix(recommendations, relevant, max(ks))
    n_relevant = np.array([len(rel) for rel in relevant], dtype=np.float64)
    has_relevant = n_relevant > 0
    safe_relevant = np.maximum(n_relevant, 1.0)
    discounts = _discounts(hits.shape[1])
    cumulative = np.cumsum(hits, axis=1)
    ranks = np.arange(1, hits.shape[1] + 1)
    for k in ks:
        top = hits[:, :k]
        found = top.sum(axis=1)
        ideal = np.cumsum(discounts)[np.minimum(n_relevant, k).astype(int) - 1]
        dcg = top @ discounts[:k]
        first = np.where(top.any(axis=1), top.argmax(axis=1) + 1, np.inf)
        precision_sum = (top * (cumulative[:, :k] / ranks[:k])).sum(axis=1)
        values = {
            "ndcg": np.where(has_relevant, dcg / np.where(has_relevant, ideal, 1.0), 0.0),
            "recall": np.where(has_relevant, found / safe_relevant, 0.0),
            "precision": found / k,
            "map": np.where(has_relevant, precision_sum / np.minimum(safe_relevant, k), 0.0),
            "mrr": 1.0 / first,
            "hit_rate": (found > 0).astype(float),
        }
        for name in METRICS:
            out[f"{name}@{k}"] = float(values[name].mean())
        out[f"coverage@{k}"] = catalog_coverage(recommendations, catalog_size, k)
    out["users"] = float(len(recommendations))
    return out


def mean_recall(pools: Sequence[np.ndarray], relevant: Sequence[Collection]) -> float:
    """Mean recall of whole candidate pools (every item counts, whatever the pool's size)."""
    recalls = [
        float(np.isin(pool, list(rel)).sum()) / len(rel) if rel else 0.0
        for pool, rel in zip(pools, relevant, strict=True)
    ]
    return float(np.mean(recalls)) if recalls else 0.0
