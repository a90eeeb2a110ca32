"""Candidate sources beside the ALS index: item-item (EASE or item-kNN) and popularity, and
the reciprocal-rank fusion that merges every source's list into one, with provenance.

Pure NumPy/SciPy: training, evaluation and the Retrieval service call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.model.data import schema
from recsys.model.data.validate import to_epoch_seconds
from recsys.model.vocab import Vocabulary

SOURCE_ANN = "ann"
SOURCE_ITEM = "item"
SOURCE_POPULAR = "popular"
SOURCES: tuple[str, ...] = (SOURCE_ANN, SOURCE_ITEM, SOURCE_POPULAR)
# Per-candidate signals every source gives, whichever source proposed the candidate: the
# ranker's source features, and the extra candidate columns the Retrieval service answers.
SIGNAL_NAMES: tuple[str, ...] = (
    "ann_score",
    "ann_rank",
    "item_score",
    "item_rank",
    "recent_item_score",
    "popular_score",
    "popular_rank",
)
SCORE_SIGNALS: tuple[str, ...] = ("ann_score", "item_score", "recent_item_score", "popular_score")
_DAY_S = 86_400.0


@dataclass(frozen=True)
class ItemItemConfig:
    """Item-item source: dense EASE when the catalog's active items fit, sparse item-kNN above.

    EASE inverts an (n x n) float64 Gram matrix: about 3 s at 4,000 items and 25 s at 9,000
    on 2 cores, and 50,000 items would need 20 GB; item-kNN keeps `neighbours` cosine
    neighbours per item in a sparse matrix.
    """

    method: Literal["auto", "ease", "knn"] = "auto"
    ease_lambda: float = 200.0
    ease_max_items: int = 6000
    min_support: int = 3
    neighbours: int = 200
    shrink: float = 10.0
    profile_half_life_days: float | None = None
    recent_items: int = 5


@dataclass
class ItemItemModel:
    """Item-to-item weights over the active items (those with `min_support` users or more)."""

    active: np.ndarray
    weights: np.ndarray | sp.csr_matrix
    method: str
    n_items: int

    def __post_init__(self) -> None:
        self.position = np.full(self.n_items, -1, dtype=np.int64)
        self.position[self.active] = np.arange(len(self.active))

    def scores(self, item_idx: np.ndarray, item_weights: np.ndarray) -> np.ndarray:
        """Score of every catalog item for a profile (items and their weights), float32."""
        out = np.zeros(self.n_items, dtype=np.float32)
        pos = self.position[np.asarray(item_idx, dtype=np.int64)]
        keep = pos >= 0
        if not keep.any():
            return out
        weights = np.asarray(item_weights, dtype=np.float32)[keep]
        rows = pos[keep]
        if not sp.issparse(self.weights):
            out[self.active] = weights @ self.weights[rows]
            return out
        # The rows' stored entries gathered straight from the CSR arrays: a request's few
        # hundred rows cost a fraction of scipy's row slicing.
        indptr = self.weights.indptr
        starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
        total = int(lengths.sum())
        if total:
            shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
            entries = shift + np.arange(total)
            out[self.active] = np.bincount(
                self.weights.indices[entries],
                weights=self.weights.data[entries] * np.repeat(weights, lengths),
                minlength=len(self.active),
            )
        return out

    @property
    def stored_values(self) -> int:
        return int(self.weights.nnz if sp.issparse(self.weights) else self.weights.size)

    def save(self, path: str | Path) -> None:
        arrays = {"active": self.active, "method": np.array(self.method), "n_items": self.n_items}
        if sp.issparse(self.weights):
            csr = self.weights.tocsr()
            arrays |= {"data": csr.data, "indices": csr.indices, "indptr": csr.indptr}
        else:
            arrays["dense"] = self.weights
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ItemItemModel:
        with np.load(path, allow_pickle=False) as arrays:
            active = arrays["active"]
            if "dense" in arrays:
                weights: np.ndarray | sp.csr_matrix = arrays["dense"]
            else:
                shape = (len(active), len(active))
                weights = sp.csr_matrix(
                    (arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape
                )
            return cls(active, weights, str(arrays["method"]), int(arrays["n_items"]))


def binary_matrix(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The same user x item pattern with every stored value set to 1."""
    binary = matrix.tocsr(copy=True)
    binary.sum_duplicates()
    binary.data = np.ones_like(binary.data, dtype=np.float32)
    return binary


def item_gram(user_items: sp.csr_matrix, min_support: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """Active items (at least `min_support` users) and their co-occurrence counts."""
    binary = binary_matrix(user_items)
    support = np.bincount(binary.indices, minlength=binary.shape[1])
    active = np.flatnonzero(support >= max(min_support, 1))
    restricted = binary.tocsc()[:, active].tocsr()
    return active, (restricted.T @ restricted).tocsr()


def ease_weights(gram: sp.csr_matrix, ease_lambda: float) -> np.ndarray:
    """EASE's closed form: B = I - P / diag(P) with P = (G + lambda I)^-1 and a zero diagonal."""
    dense = gram.toarray().astype(np.float64)
    dense[np.diag_indices_from(dense)] += ease_lambda
    inverse = np.linalg.inv(dense)
    weights = inverse / (-np.diag(inverse))
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32)


def knn_weights(gram: sp.csr_matrix, neighbours: int, shrink: float) -> sp.csr_matrix:
    """Shrunk cosine similarity, the `neighbours` strongest per item (row), no self-pairs."""
    gram = gram.tocsr()
    support = np.sqrt(gram.diagonal()).astype(np.float32)
    rows = np.repeat(np.arange(gram.shape[0]), np.diff(gram.indptr))
    cols = gram.indices
    values = gram.data.astype(np.float32) / (support[rows] * support[cols] + shrink)
    values[rows == cols] = 0.0
    lengths = np.diff(gram.indptr)
    for row in np.flatnonzero(lengths > neighbours):
        start, end = gram.indptr[row], gram.indptr[row + 1]
        segment = values[start:end]
        segment[np.argpartition(-segment, neighbours)[neighbours:]] = 0.0
    weights = sp.csr_matrix((values, cols.copy(), gram.indptr.copy()), shape=gram.shape)
    weights.eliminate_zeros()
    return weights


def choose_method(n_active: int, config: ItemItemConfig) -> str:
    if config.method != "auto":
        return config.method
    return "ease" if n_active <= config.ease_max_items else "knn"


def fit_item_item(
    user_items: sp.csr_matrix,
    config: ItemItemConfig,
    gram: tuple[np.ndarray, sp.csr_matrix] | None = None,
) -> ItemItemModel:
    """Fit the item-item source on a user x item matrix (values are read as 0/1).

    Args:
        user_items: the history, users x catalog items.
        config: method and its parameters.
        gram: `item_gram(user_items, config.min_support)` when the caller already has it.
    """
    active, counts = gram if gram is not None else item_gram(user_items, config.min_support)
    method = choose_method(len(active), config)
    if method == "ease":
        weights: np.ndarray | sp.csr_matrix = ease_weights(counts, config.ease_lambda)
    else:
        weights = knn_weights(counts, config.neighbours, config.shrink)
    return ItemItemModel(active, weights, method, user_items.shape[1])


def user_profiles(
    history: pd.DataFrame,
    users: Vocabulary,
    items: Vocabulary,
    as_of: pd.Timestamp,
    half_life_days: float | None,
) -> sp.csr_matrix:
    """Users x items profile the item-item source scores from: 1 per item met, or the
    recency decay 2^(-age / half-life) of the last meeting."""
    user_idx = users.lookup(history[schema.USER_ID])
    item_idx = items.lookup(history[schema.ITEM_ID])
    keep = (user_idx >= 0) & (item_idx >= 0)
    if half_life_days is None:
        values = np.ones(int(keep.sum()), dtype=np.float32)
    else:
        as_of_s = to_epoch_seconds(pd.Series([as_of]))[0]
        age = (as_of_s - to_epoch_seconds(history[schema.TIMESTAMP])[keep]) / _DAY_S
        values = np.exp2(-np.maximum(age, 0.0) / half_life_days).astype(np.float32)
    frame = pd.DataFrame({"u": user_idx[keep], "i": item_idx[keep], "v": values})
    latest = frame.groupby(["u", "i"], sort=False)["v"].max()
    return sp.csr_matrix(
        (
            latest.to_numpy(dtype=np.float32),
            (latest.index.get_level_values(0), latest.index.get_level_values(1)),
        ),
        shape=(len(users), len(items)),
    )


def recent_items(history: pd.DataFrame, users: Vocabulary, items: Vocabulary, count: int):
    """Each user's last `count` distinct items, most recent first (-1 pads), users x count."""
    out = np.full((len(users), max(count, 1)), -1, dtype=np.int32)
    frame = pd.DataFrame(
        {
            "u": users.lookup(history[schema.USER_ID]),
            "i": items.lookup(history[schema.ITEM_ID]),
            "t": to_epoch_seconds(history[schema.TIMESTAMP]),
        }
    )
    frame = frame[(frame["u"] >= 0) & (frame["i"] >= 0)]
    frame = frame.sort_values("t", ascending=False, kind="stable")
    frame = frame.drop_duplicates(["u", "i"])
    frame["slot"] = frame.groupby("u").cumcount()
    frame = frame[frame["slot"] < out.shape[1]]
    out[frame["u"].to_numpy(), frame["slot"].to_numpy()] = frame["i"].to_numpy()
    return out


def popularity_scores(
    history: pd.DataFrame,
    items: Vocabulary,
    as_of: pd.Timestamp,
    half_life_days: float | None,
    recency_weight: float,
) -> np.ndarray:
    """Popularity of every item: a blend of all-time and recency-decayed weighted events.

    `recency_weight` 0 is all-time counts; 1 is the decayed counts alone (half-life in days).
    Both parts are normalised to shares first, so the blend does not depend on the log's size.
    """
    item_idx = items.lookup(history[schema.ITEM_ID])
    known = item_idx >= 0
    weights = history[schema.WEIGHT].to_numpy(dtype=np.float64)[known]
    item_idx = item_idx[known]
    all_time = np.bincount(item_idx, weights=weights, minlength=len(items))
    all_time /= max(all_time.sum(), 1e-12)
    if half_life_days is None or recency_weight <= 0.0:
        return all_time
    as_of_s = to_epoch_seconds(pd.Series([as_of]))[0]
    age = (as_of_s - to_epoch_seconds(history[schema.TIMESTAMP])[known]) / _DAY_S
    decayed = np.bincount(
        item_idx,
        weights=weights * np.exp2(-np.maximum(age, 0.0) / half_life_days),
        minlength=len(items),
    )
    decayed /= max(decayed.sum(), 1e-12)
    return (1.0 - recency_weight) * all_time + recency_weight * decayed


def top_items(scores: np.ndarray, blocked: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best-scoring items with a positive score, not in `blocked`, best first."""
    scores = scores.copy()
    scores[blocked] = -np.inf
    k = min(k, len(scores))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    best = best[np.argsort(-scores[best], kind="stable")]
    return best[scores[best] > 0].astype(np.int64)


def fuse_lists(
    lists: dict[str, np.ndarray], weights: dict[str, float], k: int, rrf_k: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted reciprocal-rank fusion: sum over sources of weight / (rrf_k + rank).

    Returns:
        The k best items, their fused scores, and each one's provenance: the source whose
        term contributed most (ties go to the earlier source in `SOURCES`).
    """
    names = [name for name in SOURCES if name in lists and len(lists[name])]
    if not names:
        return np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, dtype=object)
    items = np.concatenate([lists[name] for name in names])
    contribution = np.concatenate(
        [weights.get(name, 1.0) / (rrf_k + 1.0 + np.arange(len(lists[name]))) for name in names]
    )
    source = np.concatenate([np.full(len(lists[name]), pos) for pos, name in enumerate(names)])
    unique, inverse = np.unique(items, return_inverse=True)
    fused = np.bincount(inverse, weights=contribution, minlength=len(unique))
    # The strongest term per item: sort by (item, -contribution, source) and take the first.
    order = np.lexsort((source, -contribution, inverse))
    first = order[np.r_[True, inverse[order][1:] != inverse[order][:-1]]]
    provenance = np.asarray(names, dtype=object)[source[first]]
    best = np.argsort(-fused, kind="stable")[:k]
    return unique[best].astype(np.int64), fused[best].astype(np.float32), provenance[best]
