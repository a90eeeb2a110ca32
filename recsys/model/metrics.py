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


def evaluate_lists(
    recommendations: Sequence[Sequence],
    relevant: Sequence[Collection],
    ks: Sequence[int],
    catalog_size: int,
) -> dict[str, float]:
    """Mean of every metric at every K over users, plus catalog coverage at every K."""
    if len(recommendations) != len(relevant):
        raise ValueError("one relevant set per recommendation list is required")
    out: dict[str, float] = {}
    for k in ks:
        for name, metric in METRICS.items():
            values = [metric(r, rel, k) for r, rel in zip(recommendations, relevant, strict=True)]
            out[f"{name}@{k}"] = float(np.mean(values)) if values else 0.0
        out[f"coverage@{k}"] = catalog_coverage(recommendations, catalog_size, k)
    out["users"] = float(len(recommendations))
    return out
