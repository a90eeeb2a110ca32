"""Which order the ranking stage serves: the ranker's, or one candidate source's.

A second stage must earn its place. After the ranker is trained, its order of held-out users'
candidate lists is compared with the merged retrieval order and each source's own order of the
same lists (paired bootstrap over users of the NDCG@10 difference); the winner is served. A
source order needs no model: it reads the source's rank signal that every candidate carries,
so training, offline evaluation and the Ranking service order lists with the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.model.features import FEATURE_NAMES

RANKER = "ranker"
# Order name -> the feature column holding each candidate's rank in that order (0 = first).
RANK_COLUMNS: dict[str, str] = {
    "retrieval": "retrieval_rank",
    "ann": "ann_rank",
    "item": "item_rank",
    "popular": "popular_rank",
}
ORDERS: tuple[str, ...] = (RANKER, *RANK_COLUMNS)
SINGLE_SOURCES: tuple[str, ...] = ("ann", "item", "popular")
ORDER_LABELS: dict[str, str] = {
    RANKER: "XGBoost ranker",
    "retrieval": "merged retrieval order, ranker off",
    "ann": "ALS order, ranker off",
    "item": "item-item order, ranker off",
    "popular": "popularity order, ranker off",
}
# Below every real rank: a candidate its source did not propose (or whose signal a caller left
# out) comes after the ones it did, in arrival (merged) order.
_ABSENT = 1e9


def order_scores(order: str, features: np.ndarray) -> np.ndarray:
    """Scores (higher first) that sort candidate rows of `features` (FEATURE_NAMES columns) in
    the source order `order`; ties keep arrival order under a stable sort."""
    ranks = features[:, FEATURE_NAMES.index(RANK_COLUMNS[order])].astype(np.float64)
    return -np.where(np.isfinite(ranks), ranks, _ABSENT)


def list_ndcg(scores: np.ndarray, labels: np.ndarray, query: np.ndarray, k: int = 10):
    """NDCG@k of every query's list ordered by `scores` (stable), ideal DCG from the list's own
    labels: the same denominator for every order of one list, so orders compare fairly."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    boundaries = np.flatnonzero(np.diff(query)) + 1
    out = []
    for rows in np.split(np.arange(len(query)), boundaries):
        gains = labels[rows][np.argsort(-scores[rows], kind="stable")][:k]
        ideal = np.sort(labels[rows])[::-1][:k]
        best = float(ideal @ discounts[: len(ideal)])
        out.append(float(gains @ discounts[: len(gains)]) / best if best > 0 else 0.0)
    return np.asarray(out)


def source_orders_ndcg(
    features: np.ndarray, labels: np.ndarray, query: np.ndarray
) -> dict[str, np.ndarray]:
    """Each source order's NDCG@10 of every list (rows grouped by `query`)."""
    return {name: list_ndcg(order_scores(name, features), labels, query) for name in RANK_COLUMNS}


@dataclass
class OrderChoice:
    """Each order's mean NDCG@10 on the selection lists, the chosen one and its evidence."""

    served: str
    ndcg: dict[str, float]
    versus_ranker: dict[str, dict[str, float]]
    users: int
    lists: int

    @property
    def best_single_source(self) -> str:
        return max(SINGLE_SOURCES, key=lambda name: self.ndcg[name])

    def to_dict(self) -> dict:
        return {
            "served": self.served,
            "served_label": ORDER_LABELS[self.served],
            "ndcg@10": self.ndcg,
            "best_single_source": self.best_single_source,
            "difference_vs_ranker": self.versus_ranker,
            "users": self.users,
            "lists": self.lists,
        }


def choose_order(
    per_list: dict[str, np.ndarray],
    list_users: np.ndarray,
    seed: int = 0,
    resamples: int = 1000,
) -> OrderChoice:
    """The order with the highest mean NDCG@10 over the selection lists (the ranker on a tie),
    with a 95% paired-bootstrap interval of each order's difference from the ranker.

    Users, not lists, are resampled: a user's lists from several label folds move together.
    """
    users, owner = np.unique(list_users, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(users), size=(resamples, len(users)))
    weights = np.stack([np.bincount(draw, minlength=len(users)) for draw in draws])[:, owner]
    means = {name: round(float(values.mean()), 5) for name, values in per_list.items()}
    versus: dict[str, dict[str, float]] = {}
    for name, values in per_list.items():
        if name == RANKER:
            continue
        difference = values - per_list[RANKER]
        boot = (weights @ difference) / weights.sum(axis=1)
        low, high = np.percentile(boot, [2.5, 97.5])
        versus[name] = {
            "mean": round(float(difference.mean()), 5),
            "ci95": [round(float(low), 5), round(float(high), 5)],
        }
    served = max(per_list, key=lambda name: (means[name], name == RANKER))
    return OrderChoice(served, means, versus, len(users), len(list_users))


def compare_orders(
    features: np.ndarray,
    labels: np.ndarray,
    query: np.ndarray,
    list_users: np.ndarray,
    ranker_scores: np.ndarray,
    forced: str = "auto",
    seed: int = 0,
) -> OrderChoice:
    """`choose_order` over labelled candidate lists (rows grouped by `query`, one user per list
    in `list_users`) scored by the ranker and by each source order; `forced` overrides the
    choice but not the comparison."""
    per_list = {
        RANKER: list_ndcg(ranker_scores, labels, query),
        **source_orders_ndcg(features, labels, query),
    }
    choice = choose_order(per_list, list_users, seed)
    if forced != "auto":
        choice.served = forced
    return choice
