"""Candidate sources beside the ALS index: item-item (EASE or item-kNN) and popularity, and
the merge of every source's list into one candidate list, with provenance, ordered by
reciprocal-rank fusion.

Pure NumPy/SciPy: training, evaluation and the Retrieval service call the same functions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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
    knn_max_user_items: int = 300
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
        out[self.active] = self.active_scores(item_idx, item_weights).values
        return out

    def active_scores(self, item_idx: np.ndarray, item_weights: np.ndarray) -> ActiveScores:
        """A profile's scores of the active items alone (the others score 0): serving reads a
        few hundred of them, so it builds no catalog-wide vector."""
        values = np.zeros(len(self.active), dtype=np.float32)
        pos = self.position[np.asarray(item_idx, dtype=np.int64)]
        keep = pos >= 0
        if not keep.any():
            return ActiveScores(values, self)
        weights = np.asarray(item_weights, dtype=np.float32)[keep]
        rows = pos[keep]
        if not sp.issparse(self.weights):
            return ActiveScores((weights @ self.weights[rows]).astype(np.float32), self)
        # The rows' stored entries gathered straight from the CSR arrays: a request's few
        # hundred rows cost a fraction of scipy's row slicing.
        indptr = self.weights.indptr
        starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
        total = int(lengths.sum())
        if total:
            shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
            entries = shift + np.arange(total)
            values = np.bincount(
                self.weights.indices[entries],
                weights=self.weights.data[entries] * np.repeat(weights, lengths),
                minlength=len(self.active),
            ).astype(np.float32)
        return ActiveScores(values, self)

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


@dataclass(frozen=True)
class ActiveScores:
    """An item-item score per active item (float32; every other catalog item scores 0)."""

    values: np.ndarray
    model: ItemItemModel

    def at(self, item_idx: np.ndarray) -> np.ndarray:
        """The scores of catalog items."""
        position = self.model.position[item_idx]
        return np.where(position >= 0, self.values[position], np.float32(0.0))

    def top(self, blocked: np.ndarray, k: int) -> np.ndarray:
        """`top_items` of these scores, `blocked` a boolean mask over the catalog."""
        positive = np.flatnonzero(self.values > 0)
        items = self.model.active[positive]  # ascending, as `top_items` sees them
        keep = ~blocked[items]
        return best_first(items[keep], self.values[positive[keep]], k)


def binary_matrix(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The same user x item pattern with every stored value set to 1."""
    binary = matrix.tocsr(copy=True)
    binary.sum_duplicates()
    binary.data = np.ones_like(binary.data, dtype=np.float32)
    return binary


def item_support(user_items: sp.csr_matrix) -> np.ndarray:
    """Users per item."""
    binary = binary_matrix(user_items)
    return np.bincount(binary.indices, minlength=binary.shape[1])


def cap_user_items(user_items: sp.csr_matrix, max_items: int) -> sp.csr_matrix:
    """Each user's `max_items` strongest interactions (ties: catalog order): the few very
    heavy users would otherwise dominate the co-occurrence counts, and their cost, which
    grows with the square of a history."""
    matrix = user_items.tocsr(copy=True)
    lengths = np.diff(matrix.indptr)
    for user in np.flatnonzero(lengths > max_items):
        start, end = matrix.indptr[user], matrix.indptr[user + 1]
        segment = matrix.data[start:end]
        weakest = np.argsort(-segment, kind="stable")[max_items:]
        segment[weakest] = 0.0
    matrix.eliminate_zeros()
    return matrix


def item_gram(
    user_items: sp.csr_matrix, active: np.ndarray, max_user_items: int | None = None
) -> sp.csr_matrix:
    """Co-occurrence counts (users in common) of the active items, optionally over each
    user's `max_user_items` strongest interactions only."""
    matrix = user_items if max_user_items is None else cap_user_items(user_items, max_user_items)
    restricted = binary_matrix(matrix).tocsc()[:, active].tocsr()
    return (restricted.T @ restricted).tocsr()


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
        user_items: the history, users x catalog items (values: interaction strength).
        config: method and its parameters.
        gram: `(active, item_gram(...))` when the caller already has them for this method.
    """
    if gram is None:
        active = np.flatnonzero(item_support(user_items) >= max(config.min_support, 1))
        method = choose_method(len(active), config)
        cap = config.knn_max_user_items if method == "knn" else None
        gram = active, item_gram(user_items, active, cap)
    active, counts = gram
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


def trending_window_days(age_days: np.ndarray, days: float, min_share: float) -> float:
    """The trending window: `days`, widened until it holds `min_share` of the events, so a
    sparse log (MovieLens: a few ratings a day over 22 years) still ranks on enough events; a
    dense one (the synthetic log) keeps the configured window."""
    past = age_days[age_days >= 0]
    if not len(past):
        return days
    return max(days, float(np.quantile(past, min_share)))


@dataclass(frozen=True)
class PopularityDefinition:
    """Popularity = (1 - all_time_weight) x trending share + all_time_weight x all-time share.

    Trending is event weight decayed with `half_life_days` over the last `days` (both widened
    alike by `trending_window_days` on a sparse log); shares make the blend independent of
    the log's size.
    """

    days: float = 14.0
    half_life_days: float = 3.0
    min_share: float = 0.1
    all_time_weight: float = 0.0


def popularity_scores(
    history: pd.DataFrame, items: Vocabulary, as_of: pd.Timestamp, definition: PopularityDefinition
) -> np.ndarray:
    """Popularity of every catalog item at `as_of` (shares of the log's weight, float64)."""
    item_idx = items.lookup(history[schema.ITEM_ID])
    known = item_idx >= 0
    weights = history[schema.WEIGHT].to_numpy(dtype=np.float64)[known]
    item_idx = item_idx[known]
    all_time = np.bincount(item_idx, weights=weights, minlength=len(items))
    all_time /= max(all_time.sum(), 1e-12)
    as_of_s = to_epoch_seconds(pd.Series([as_of]))[0]
    age = (as_of_s - to_epoch_seconds(history[schema.TIMESTAMP])[known]) / _DAY_S
    window = trending_window_days(age, definition.days, definition.min_share)
    half_life = definition.half_life_days * window / definition.days
    recent = (age >= 0) & (age <= window)
    trending = np.bincount(
        item_idx[recent],
        weights=weights[recent] * np.exp2(-age[recent] / half_life),
        minlength=len(items),
    )
    if trending.sum() <= 0:  # no event in the window at all: all-time counts
        return all_time
    trending /= trending.sum()
    return (1.0 - definition.all_time_weight) * trending + definition.all_time_weight * all_time


def top_items(scores: np.ndarray, blocked: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best-scoring items with a positive score, not in `blocked`, best first.

    `blocked` is an index array or a boolean mask over the catalog.
    """
    positive = np.flatnonzero(scores > 0)
    if blocked.dtype == bool:
        positive = positive[~blocked[positive]]
    elif len(blocked):
        positive = positive[~np.isin(positive, blocked)]
    return best_first(positive, scores[positive], k)


def best_first(items: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The k `items` of highest `values`, best first; equal values keep the items' order."""
    k = min(k, len(items))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    best = np.argpartition(-values, k - 1)[:k] if k < len(values) else np.arange(len(values))
    best = best[np.argsort(-values[best], kind="stable")]
    return items[best].astype(np.int64)


def positions_in(items: np.ndarray, ranked: np.ndarray | None) -> np.ndarray:
    """Position of each of `items` in `ranked` (best first, no repeats), -1 where absent."""
    if ranked is None or not len(ranked):
        return np.full(len(items), -1, dtype=np.int64)
    sorter = np.argsort(ranked, kind="stable")
    at = np.clip(np.searchsorted(ranked, items, sorter=sorter), 0, len(ranked) - 1)
    return np.where(ranked[sorter[at]] == items, sorter[at], -1)


class CatalogPositions:
    """`positions_in` for lists of catalog items, through a scratch array over the catalog.

    The ranked list's positions are written into the scratch array, read at the items asked
    for and cleared again: about 3 us for 200 items in a 200-item list, against 30 us for
    sorting and searching. One scratch array per thread, made on first use.
    """

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self._local = threading.local()

    def __call__(self, items: np.ndarray, ranked: np.ndarray | None) -> np.ndarray:
        if ranked is None or not len(ranked):
            return np.full(len(items), -1, dtype=np.int64)
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = np.full(self.n_items, -1, dtype=np.int64)
        # Written last to first, so an item listed twice keeps its first position.
        scratch[ranked[::-1]] = np.arange(len(ranked) - 1, -1, -1)
        try:
            return scratch[items]
        finally:
            scratch[ranked] = -1


Positions = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def reciprocal_rank_scores(
    pool: np.ndarray,
    lists: dict[str, np.ndarray],
    weights: dict[str, float],
    rrf_k: float,
    positions: Positions = positions_in,
) -> np.ndarray:
    """Weighted reciprocal-rank fusion of each pooled item: sum over the source lists that
    hold it of weight / (rrf_k + rank), rank counted from 1."""
    fused = np.zeros(len(pool), dtype=np.float64)
    for name, ranked in lists.items():
        position = positions(pool, ranked)
        hit = position >= 0
        fused[hit] += weights.get(name, 1.0) / (rrf_k + 1.0 + position[hit])
    return fused


def merge_lists(
    lists: dict[str, np.ndarray],
    shares: dict[str, float],
    weights: dict[str, float],
    k: int,
    rrf_k: float,
    positions: Positions = positions_in,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge source lists into k candidates with provenance, in reciprocal-rank order.

    Each source in `shares` gives its first round(k x share) items not taken yet (in `SOURCES`
    order); popular items fill the rest, then whatever the other lists still hold. A source
    that has nothing for this user leaves its share to the next one. The pool is then ordered by
    `reciprocal_rank_scores`.

    Returns:
        Item indices, fused scores and provenance (the source that contributed each item).
    """
    taken: dict[int, str] = {}

    def take(name: str, limit: int) -> None:
        room = limit - len(taken)
        if room <= 0 or name not in lists:
            return
        for item in lists[name].tolist():
            if item not in taken:
                taken[item] = name
                room -= 1
                if not room:
                    return

    quota = 0
    for name in SOURCES:
        if name in shares and name != SOURCE_POPULAR:
            quota += round(k * shares[name])
            take(name, min(quota, k))
    for name in (SOURCE_POPULAR, *SOURCES):
        take(name, k)
    pool = np.fromiter(taken.keys(), dtype=np.int64, count=len(taken))
    provenance = np.asarray(list(taken.values()), dtype=object)
    fused = reciprocal_rank_scores(pool, lists, weights, rrf_k, positions)
    order = np.argsort(-fused, kind="stable")
    return pool[order], fused[order].astype(np.float32), provenance[order]
