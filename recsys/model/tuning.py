"""A small, seeded search of the candidate sources' settings on the validation window.

Every trial fits on the train window and is scored on users of the validation window (items
they had not met before); the test window is never read. Stages run in order, each starting
from the best settings so far: popularity, item-item, ALS, the sources' shares of the
candidates, their order. Stages that refit a model per trial (item-item, ALS) run their first
`max_trials` trials (the current settings, then their grid, cheapest first); the cheap stages
run whole. The trial count, never the clock, decides what runs, so the same data and code pick
the same settings on any machine; a wall-clock safety cap only stops a runaway stage, and the
search table flags it. Exact scoring (no ScaNN) keeps trials cheap; the chosen values are then
trained as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from time import perf_counter
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.model.data import schema
from recsys.model.metrics import evaluate_lists, mean_recall
from recsys.model.retrieval import (
    EmbeddingConfig,
    RetrievalConfig,
    interaction_matrix,
    train_embeddings,
)
from recsys.model.sources import (
    SOURCE_ANN,
    SOURCE_ITEM,
    SOURCE_POPULAR,
    ItemItemConfig,
    ItemItemModel,
    choose_method,
    fit_item_item,
    item_gram,
    item_support,
    merge_lists,
    popularity_scores,
    user_profiles,
)
from recsys.model.vocab import Vocabulary

# (trending half-life in days, all-time weight): trending, blends, all-time counts (1.0).
POPULARITY_GRID: tuple[tuple[float, float], ...] = (
    (3.0, 0.0),
    (7.0, 0.0),
    (3.0, 0.25),
    (3.0, 0.5),
    (7.0, 0.5),
    (3.0, 1.0),
)
EASE_LAMBDAS: tuple[float, ...] = (200.0, 50.0, 100.0, 400.0, 800.0)
KNN_GRID: tuple[tuple[int, float], ...] = ((200, 10.0), (100, 10.0), (400, 10.0), (200, 100.0))
PROFILE_HALF_LIVES: tuple[float | None, ...] = (None, 7.0, 30.0, 120.0)
# Cheapest first: a 128-factor fit costs about twice a 64-factor one.
ALS_GRID: tuple[dict[str, Any], ...] = (
    {},
    {"weighting": "bm25"},
    {"regularization": 1.0, "alpha": 20.0},
    {"alpha": 2.0},
    {"factors": 128},
)
# (ALS share, item-item share) of the candidates; popularity fills the rest.
SHARE_GRID: tuple[tuple[float, float], ...] = tuple(
    (ann, item)
    for ann in (0.0, 0.1, 0.3, 0.6)
    for item in (0.0, 0.2, 0.4, 0.6)
    if ann + item <= 1.0
)
# Reciprocal-rank weights (ALS, item-item, popularity) that order the candidates. Every
# source keeps a weight: the order is also a ranker feature, and a one-source order (best
# for retrieval alone on some data) cost the two-stage model 3% on the synthetic data.
ORDER_GRID: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 0.5),
    (1.0, 1.0, 0.0),
    (1.0, 1.0, 1.0),
    (0.5, 1.0, 0.5),
    (1.0, 0.5, 0.5),
    (0.5, 1.0, 1.0),
    (0.25, 0.5, 1.0),
)
_CHUNK = 500

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuningConfig:
    """Whether to search, how many trials, and on how many validation users.

    `max_trials` bounds each stage that refits a model per trial (item-item, ALS): a count, so
    the result does not depend on the machine's speed (a seconds budget ran fewer trials on
    a slower machine and so chose other settings). The default runs the whole of
    `EASE_LAMBDAS`, `KNN_GRID` and `ALS_GRID`. `safety_seconds` is only a stop for a stage far
    slower than expected: its first trial always runs, a later one does not start once the
    stage has spent that long, and the search table lists the stage under `capped`.
    """

    enabled: bool = True
    max_trials: int = 5
    safety_seconds: float = 120.0
    max_users: int = 1000
    k: int = 10


@dataclass
class Trial:
    """One row of the search table."""

    stage: str
    params: dict[str, Any]
    ndcg: float
    recall: float
    seconds: float
    chosen: bool = False


@dataclass
class FittedSources:
    """The chosen settings' models as the search fitted them on the train window: the ranker
    phase reuses them instead of fitting the same thing twice."""

    item_item: ItemItemModel
    user_factors: np.ndarray
    item_factors: np.ndarray


@dataclass
class TuningResult:
    """The chosen settings and every trial."""

    embedding: EmbeddingConfig
    item_item: ItemItemConfig
    retrieval: RetrievalConfig
    trials: list[Trial]
    users: int
    seconds: float
    metric: str
    fitted: FittedSources | None = None
    capped: list[str] = field(default_factory=list)
    max_trials: int | None = None
    safety_seconds: float | None = None

    def table(self) -> dict[str, Any]:
        """The search as the report and the model metadata keep it (JSON-shaped).

        `capped` names the stages the safety cap cut short: non-empty means the chosen settings
        depend on this machine's speed.
        """
        return {
            "users": self.users,
            "seconds": round(self.seconds, 2),
            "selection": self.metric,
            "max_trials": self.max_trials,
            "safety_seconds": self.safety_seconds,
            "capped": list(self.capped),
            "chosen": {
                "embedding": asdict(self.embedding),
                "item_item": asdict(self.item_item),
                "retrieval": asdict(self.retrieval),
            },
            "trials": [asdict(trial) for trial in self.trials],
        }


class _Validation:
    """Validation users with their seen items (train) and relevant items (validation)."""

    def __init__(
        self,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        items: Vocabulary,
        config: TuningConfig,
        n_candidates: int,
        seed: int,
    ):
        self.users = Vocabulary.from_values(train[schema.USER_ID])
        self.matrix = interaction_matrix(train, self.users, items)
        self.k, self.n = config.k, n_candidates
        user_idx = self.users.lookup(validation[schema.USER_ID])
        item_idx = items.lookup(validation[schema.ITEM_ID])
        pairs = pd.DataFrame({"u": user_idx, "i": item_idx})
        pairs = pairs[(pairs["u"] >= 0) & (pairs["i"] >= 0)].drop_duplicates()
        seen = self.matrix[pairs["u"].to_numpy(), pairs["i"].to_numpy()]
        pairs = pairs[np.asarray(seen).ravel() == 0]
        grouped = pairs.groupby("u")["i"].agg(lambda s: set(s.tolist()))
        chosen = np.asarray(grouped.index, dtype=np.int64)
        if len(chosen) > config.max_users:
            rng = np.random.default_rng(seed)
            chosen = np.sort(rng.choice(chosen, config.max_users, replace=False))
        self.user_idx = chosen
        self.relevant = [grouped[u] for u in chosen]

    def top_lists(self, scores_of: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
        """Each validation user's top-n unseen items; `scores_of(users)` gives dense rows."""
        out: list[np.ndarray] = []
        n = min(self.n, self.matrix.shape[1] - 1)
        for start in range(0, len(self.user_idx), _CHUNK):
            chunk = self.user_idx[start : start + _CHUNK]
            scores = np.array(scores_of(chunk), dtype=np.float32)
            seen = self.matrix[chunk].tocoo()
            scores[seen.row, seen.col] = -np.inf
            best = np.argpartition(-scores, n, axis=1)[:, :n]
            for row, picks in enumerate(best):
                picks = picks[np.argsort(-scores[row, picks], kind="stable")]
                out.append(picks[np.isfinite(scores[row, picks]) & (scores[row, picks] > 0)])
        return out

    def shared_top_lists(self, scores: np.ndarray) -> list[np.ndarray]:
        """`top_lists` for one score per item (the same ranking for every user)."""
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] > 0]
        out = []
        for user in self.user_idx:
            seen = self.matrix.indices[self.matrix.indptr[user] : self.matrix.indptr[user + 1]]
            head = order[: self.n + len(seen)]
            out.append(head[~np.isin(head, seen)][: self.n])
        return out

    def measure(self, lists: list[np.ndarray]) -> tuple[float, float]:
        """Mean NDCG@k and recall@n of per-user lists."""
        ndcg = evaluate_lists(lists, self.relevant, [self.k], 1)[f"ndcg@{self.k}"]
        recall = mean_recall([x[: self.n] for x in lists], self.relevant)
        return round(ndcg, 5), round(recall, 5)


def _profile_scorer(
    model: ItemItemModel, profile: sp.csr_matrix
) -> Callable[[np.ndarray], np.ndarray]:
    """Dense item-item scores for a chunk of users' profiles (`ItemItemModel.scores`, batched)."""
    restricted = profile.tocsc()[:, model.active].tocsr()

    def scores_of(chunk: np.ndarray) -> np.ndarray:
        part = restricted[chunk] @ model.weights
        out = np.zeros((len(chunk), profile.shape[1]), dtype=np.float32)
        out[:, model.active] = part.toarray() if sp.issparse(part) else part
        return out

    return scores_of


def tune_sources(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    items: Vocabulary,
    as_of: pd.Timestamp,
    embedding: EmbeddingConfig,
    item_item: ItemItemConfig,
    retrieval: RetrievalConfig,
    config: TuningConfig,
    seed: int = 0,
) -> TuningResult:
    """Search popularity, item-item, ALS and merge settings; returns the best of each.

    Selection is by validation NDCG@k, except the sources' shares of the candidates: by
    candidate recall@num_candidates (NDCG as tie-break), since the ranker can only reorder
    what was retrieved.
    """
    started = perf_counter()
    data = _Validation(train, validation, items, config, retrieval.num_candidates, seed)
    trials: list[Trial] = []
    capped: list[str] = []
    if not len(data.user_idx):
        return TuningResult(
            embedding,
            item_item,
            retrieval,
            trials,
            0,
            0.0,
            "none",
            max_trials=config.max_trials,
            safety_seconds=config.safety_seconds,
        )

    def run_stage(
        stage: str,
        candidates: list[tuple[dict, Callable[[], list[np.ndarray]]]],
        refits: bool = False,
    ):
        """Try each candidate (params, lists), the first `max_trials` of a stage that refits a
        model per trial; the safety cap stops any stage early (recorded in `capped`). Returns
        the best params and their lists."""
        best: tuple[tuple[float, float], dict, list[np.ndarray]] | None = None
        if refits:
            candidates = candidates[: max(config.max_trials, 1)]
        stage_started = perf_counter()
        for position, (params, make_lists) in enumerate(candidates):
            if position and perf_counter() - stage_started > config.safety_seconds:
                capped.append(stage)
                logger.warning(
                    "tuning stage %s stopped by the %.0f s safety cap after %d of %d trials: "
                    "its choice depends on this machine's speed",
                    stage,
                    config.safety_seconds,
                    position,
                    len(candidates),
                )
                break
            start = perf_counter()
            lists = make_lists()
            ndcg, recall = data.measure(lists)
            key = (recall, ndcg) if stage == "merge" else (ndcg, recall)
            trials.append(Trial(stage, params, ndcg, recall, round(perf_counter() - start, 2)))
            if best is None or key > best[0]:
                best = (key, params, lists)
                for trial in trials:
                    if trial.stage == stage:
                        trial.chosen = trial is trials[-1]
        assert best is not None
        return best[1], best[2]

    # Popularity: one score per item, the same list for every user.
    def popular_lists(half_life: float, weight: float) -> Callable[[], list[np.ndarray]]:
        def make() -> list[np.ndarray]:
            option = replace(
                retrieval, trending_half_life_days=half_life, popular_all_time_weight=weight
            )
            return data.shared_top_lists(popularity_scores(train, items, as_of, option.popularity))

        return make

    grid = [(retrieval.trending_half_life_days, retrieval.popular_all_time_weight)]
    grid += [point for point in POPULARITY_GRID if point != grid[0]]
    chosen, popular = run_stage(
        "popularity",
        [
            ({"trending_half_life_days": h, "popular_all_time_weight": w}, popular_lists(h, w))
            for h, w in grid
        ],
    )
    retrieval = replace(retrieval, **chosen)

    # Item-item: the weights first (one Gram matrix for all), then the profile's recency.
    active = np.flatnonzero(item_support(data.matrix) >= max(item_item.min_support, 1))
    method = choose_method(len(active), item_item)
    cap = item_item.knn_max_user_items if method == "knn" else None
    gram = active, item_gram(data.matrix, active, cap)
    fitted: dict[str, Any] = {}
    profiles = user_profiles(train, data.users, items, as_of, item_item.profile_half_life_days)

    def item_lists(cfg: ItemItemConfig, profile: sp.csr_matrix) -> Callable[[], list[np.ndarray]]:
        def make() -> list[np.ndarray]:
            model = fit_item_item(data.matrix, cfg, gram)
            fitted[str(asdict(cfg))] = model
            return data.top_lists(_profile_scorer(model, profile))

        return make

    if method == "ease":
        lambdas = [item_item.ease_lambda] + [x for x in EASE_LAMBDAS if x != item_item.ease_lambda]
        options = [replace(item_item, method="ease", ease_lambda=x) for x in lambdas]
        describe = [{"method": "ease", "lambda": x} for x in lambdas]
    else:
        points = [(item_item.neighbours, item_item.shrink)]
        points += [p for p in KNN_GRID if p != points[0]]
        options = [replace(item_item, method="knn", neighbours=n, shrink=s) for n, s in points]
        describe = [{"method": "knn", "neighbours": n, "shrink": s} for n, s in points]
    by_params = {str(d): option for d, option in zip(describe, options, strict=True)}
    chosen, _ = run_stage(
        "item-item",
        [(d, item_lists(o, profiles)) for d, o in zip(describe, options, strict=True)],
        refits=True,
    )
    item_item = by_params[str(chosen)]
    best_model = fitted[str(asdict(item_item))]

    def profile_lists(half_life: float | None) -> Callable[[], list[np.ndarray]]:
        def make() -> list[np.ndarray]:
            profile = user_profiles(train, data.users, items, as_of, half_life)
            return data.top_lists(_profile_scorer(best_model, profile))

        return make

    lives = [item_item.profile_half_life_days]
    lives += [x for x in PROFILE_HALF_LIVES if x != lives[0]]
    chosen, item_pool = run_stage(
        "item-item profile",
        [({"profile_half_life_days": h}, profile_lists(h)) for h in lives],
    )
    item_item = replace(item_item, profile_half_life_days=chosen["profile_half_life_days"])

    # ALS: a few regions of the usual search space.
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def als_lists(cfg: EmbeddingConfig) -> Callable[[], list[np.ndarray]]:
        def make() -> list[np.ndarray]:
            user_factors, item_factors = train_embeddings(data.matrix, cfg)
            factors[str(asdict(cfg))] = (user_factors, item_factors)
            return data.top_lists(lambda chunk: user_factors[chunk] @ item_factors.T)

        return make

    als_options = [replace(embedding, **change) for change in ALS_GRID]
    als_params = [
        {
            "factors": o.factors,
            "regularization": o.regularization,
            "alpha": o.alpha,
            "weighting": o.weighting,
        }
        for o in als_options
    ]
    chosen, ann_pool = run_stage(
        "als",
        [(p, als_lists(o)) for p, o in zip(als_params, als_options, strict=True)],
        refits=True,
    )
    embedding = replace(embedding, **chosen)

    # Merging: the sources' shares of the pool (recall), then the order within it (NDCG).
    def merged_lists(shares: dict[str, float], weights: dict[str, float]):
        def make() -> list[np.ndarray]:
            return [
                merge_lists(
                    {SOURCE_ANN: a, SOURCE_ITEM: i, SOURCE_POPULAR: p},
                    shares,
                    weights,
                    data.n,
                    retrieval.rrf_k,
                )[0]
                for a, i, p in zip(ann_pool, item_pool, popular, strict=True)
            ]

        return make

    points = [(retrieval.ann_share, retrieval.item_share)]
    points += [point for point in SHARE_GRID if point != points[0]]
    chosen, _ = run_stage(
        "merge",
        [
            (
                {"ann_share": a, "item_share": i},
                merged_lists({SOURCE_ANN: a, SOURCE_ITEM: i}, retrieval.fusion_weights),
            )
            for a, i in points
        ],
    )
    retrieval = replace(retrieval, **chosen)
    current = (retrieval.ann_weight, retrieval.item_weight, retrieval.popular_weight)
    weights = [current] + [w for w in ORDER_GRID if w != current]
    chosen, _ = run_stage(
        "order",
        [
            (
                {"ann_weight": a, "item_weight": i, "popular_weight": p},
                merged_lists(retrieval.shares, {SOURCE_ANN: a, SOURCE_ITEM: i, SOURCE_POPULAR: p}),
            )
            for a, i, p in weights
        ],
    )
    retrieval = replace(retrieval, **chosen)
    user_factors, item_factors = factors[str(asdict(embedding))]
    return TuningResult(
        embedding,
        item_item,
        retrieval,
        trials,
        len(data.user_idx),
        perf_counter() - started,
        f"ndcg@{config.k}; recall@{data.n} for the merge shares",
        FittedSources(best_model, user_factors, item_factors),
        capped,
        config.max_trials,
        config.safety_seconds,
    )
