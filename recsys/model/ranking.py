"""Learning to rank with XGBoost (LambdaMART) over retrieved candidates.

`Ranker` holds the booster, the feature tables and the order it serves (its own, or a source's
when the ranker did not earn its place: `recsys.model.ordering`); `score_columns_many` is what
the Ranking service calls, with one batched prediction per request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb

from recsys.model.dense_predict import DensePredictor
from recsys.model.features import (
    FEATURE_NAMES,
    SIGNAL_FEATURES,
    FeatureTables,
    assemble_features,
    fill_item_user_features,
    item_feature_rows,
)
from recsys.model.ordering import (
    ORDER_LABELS,
    ORDERS,
    RANK_COLUMNS,
    RANKER,
    order_scores,
    source_orders_ndcg,
)
from recsys.model.retrieval import Candidates
from recsys.model.sources import SCORE_SIGNALS, SIGNAL_NAMES, SOURCE_ANN, SOURCE_POPULAR
from recsys.model.vocab import Vocabulary
from recsys.tracing import set_attributes, tracer


@dataclass(frozen=True)
class RankerConfig:
    """XGBoost LambdaMART settings."""

    objective: str = "rank:pairwise"
    pair_method: str = "mean"
    n_estimators: int = 250
    max_depth: int = 4
    learning_rate: float = 0.05
    min_child_weight: float = 20.0
    subsample: float = 0.8
    colsample_bytree: float = 0.9
    early_stopping_rounds: int = 30
    pairs_per_sample: int = 8
    # Where the ranker's lists come from (`data.split.label_folds`). None: the validation
    # window alone when it holds `fold_free_users` label users (the default-size synthetic log:
    # each extra fold refits the sources, about 14 s), else 5 folds (ml-latest-small: 100-600
    # label users per window; 5 folds took its chronological protocol above popularity).
    label_folds: int | None = None
    fold_free_users: int = 1500
    max_training_users: int = 3000
    eval_share: float = 0.15
    # Users whose lists decide the served order (never learnt from, nor used to stop early).
    selection_share: float = 0.2
    # "auto": the order that wins on the selection lists; or one of `ordering.ORDERS`.
    serving_order: str = "auto"
    # Boost from a source order's ranks: the trees learn corrections to it, and early stopping
    # keeps it when they find none. "best": from zero and from the best source order on the
    # training lists, whichever validates better; "none": from zero; or a source order's name.
    prior: str = "best"
    seed: int = 0

    def folds_for(self, label_users: int) -> int:
        """How many label folds for a validation window with `label_users` users."""
        if self.label_folds is not None:
            return self.label_folds
        usable = min(label_users, self.max_training_users)
        return 1 if usable >= self.fold_free_users else 5

    def __post_init__(self) -> None:
        if self.prior not in ("best", "none", *RANK_COLUMNS):
            raise ValueError(
                f"ranker.prior must be best, none or one of {list(RANK_COLUMNS)}, "
                f"not {self.prior!r}"
            )
        if self.serving_order not in ("auto", *ORDERS):
            raise ValueError(
                f"ranker.serving_order must be auto or one of {list(ORDERS)}, "
                f"not {self.serving_order!r}"
            )


@dataclass
class RankingExamples:
    """Feature rows grouped by query (one user in one label fold), with binary relevance
    labels; `query_users[q]` is query q's user."""

    features: np.ndarray
    labels: np.ndarray
    query: np.ndarray
    query_users: np.ndarray

    @property
    def n_queries(self) -> int:
        return len(np.unique(self.query))

    @classmethod
    def concat(cls, parts: Sequence[RankingExamples]) -> RankingExamples:
        """One example set from several label folds, query ids renumbered to stay distinct."""
        offsets = np.cumsum([0] + [len(part.query_users) for part in parts[:-1]])
        return cls(
            np.vstack([part.features for part in parts]),
            np.concatenate([part.labels for part in parts]),
            np.concatenate(
                [part.query + offset for part, offset in zip(parts, offsets, strict=True)]
            ),
            np.concatenate([part.query_users for part in parts]),
        )

    def split_users(self, share: float, seed: int) -> tuple[RankingExamples, RankingExamples]:
        """(the rest, the lists of a seeded `share` of users), all of a user's lists together;
        query ids keep their values (`query_users` is indexed by them)."""
        users = np.unique(self.query_users)
        count = min(max(1, int(len(users) * share)), len(users) - 1) if len(users) > 1 else 0
        chosen = np.random.default_rng([seed, 1]).choice(users, size=count, replace=False)
        selected = np.isin(self.query_users[self.query], chosen)
        return self._keep(~selected), self._keep(selected)

    def _keep(self, rows: np.ndarray) -> RankingExamples:
        features, labels, query = self.features[rows], self.labels[rows], self.query[rows]
        return RankingExamples(features, labels, query, self.query_users)


# Source scores whose scale follows the history's size (a model refit on more data scores
# higher): the ranker reads them relative to the best candidate of the same list.
_LIST_RELATIVE = [SIGNAL_NAMES.index(name) for name in SCORE_SIGNALS]
_SCORE, _RANK = FEATURE_NAMES.index("retrieval_score"), FEATURE_NAMES.index("retrieval_rank")


def list_relative(signals: np.ndarray) -> np.ndarray:
    """Score signals divided by their largest magnitude within one user's candidate list."""
    relative = np.array(signals, dtype=np.float32, copy=True)
    _make_list_relative(relative)
    return relative


def _make_list_relative(signals: np.ndarray) -> None:
    """`list_relative` in place, on float32 signal columns (a view of a feature matrix)."""
    if not len(signals):
        return
    part = signals[:, _LIST_RELATIVE]
    with np.errstate(invalid="ignore"):
        scale = np.nanmax(np.abs(part), axis=0) if np.isfinite(part).any() else np.ones(1)
    signals[:, _LIST_RELATIVE] = part / np.where(scale > 0, scale, 1.0)


def candidate_features(tables: FeatureTables, user_idx: int, candidates: Candidates) -> np.ndarray:
    """Feature rows for one user's candidates, ranks taken from retrieval order."""
    n = len(candidates)
    return assemble_features(
        tables,
        np.full(n, user_idx, dtype=np.int64),
        candidates.item_idx,
        candidates.scores,
        np.arange(n, dtype=np.float32),
        list_relative(candidates.signals),
    )


# Ranks past this count as "not proposed": the prior's margin bottoms out there.
_PRIOR_DEPTH = 1000.0


def prior_margin(prior: str | None, features: np.ndarray) -> np.ndarray | None:
    """The starting score of each candidate row: -log(1 + its rank in the prior order)."""
    if not prior or prior == "none":
        return None
    ranks = np.minimum(-order_scores(prior, features), _PRIOR_DEPTH)
    return (-np.log1p(ranks)).astype(np.float32)


def booster_scores(booster: xgb.Booster, prior: str | None, features: np.ndarray) -> np.ndarray:
    """The booster's scores of feature rows at its best iteration, from its prior's margin."""
    # inplace_predict skips building a DMatrix: about half the time of predict() per request.
    return booster.inplace_predict(
        features,
        iteration_range=(0, int(booster.best_iteration) + 1),
        base_margin=prior_margin(prior, features),
    )


def _best_order(train: RankingExamples, rows: np.ndarray) -> str:
    """The source order with the best mean NDCG@10 on the given rows' lists."""
    _, query = np.unique(train.query[rows], return_inverse=True)
    per_list = source_orders_ndcg(train.features[rows], train.labels[rows], query)
    return max(per_list, key=lambda name: float(per_list[name].mean()))


def _fit_booster(
    train: RankingExamples, fit: np.ndarray, valid: np.ndarray, prior: str, config: RankerConfig
) -> tuple[xgb.Booster, float]:
    """One LambdaMART fit from `prior`'s margin; returns it with its best validation NDCG@10."""
    params = {
        "objective": config.objective,
        "eval_metric": "ndcg@10",
        "tree_method": "hist",
        "max_depth": config.max_depth,
        "eta": config.learning_rate,
        "min_child_weight": config.min_child_weight,
        "subsample": config.subsample,
        "colsample_bytree": config.colsample_bytree,
        "lambdarank_pair_method": config.pair_method,
        "lambdarank_num_pair_per_sample": config.pairs_per_sample,
        "seed": config.seed,
        "nthread": 0,
    }

    def matrix(rows: np.ndarray) -> xgb.DMatrix:
        return xgb.DMatrix(
            train.features[rows],
            label=train.labels[rows],
            qid=train.query[rows],
            base_margin=prior_margin(prior, train.features[rows]),
            feature_names=list(FEATURE_NAMES),
        )

    history: dict = {}
    booster = xgb.train(
        params,
        matrix(fit),
        num_boost_round=config.n_estimators,
        evals=[(matrix(valid), "valid")],
        early_stopping_rounds=config.early_stopping_rounds,
        evals_result=history,
        verbose_eval=False,
    )
    return booster, float(max(history["valid"]["ndcg@10"]))


def train_ranker(train: RankingExamples, config: RankerConfig) -> tuple[xgb.Booster, dict]:
    """Fit LambdaMART with early stopping on a held-out share of users (all their queries, so
    no user of the early-stopping set is also learnt from in another fold).

    With `prior="best"` two fits compete on those users: from zero, and from the best source
    order's margin. Boosting from the item-item order is what lets the ranker beat EASE alone
    on MovieLens; on the synthetic log, where the ranker adds most, starting from zero does
    as well with fewer trees (docs/relevance.md).
    """
    rng = np.random.default_rng(config.seed)
    queries = np.unique(train.query)
    users = np.unique(train.query_users[queries])
    held_out_users = rng.choice(
        users, size=max(1, int(len(users) * config.eval_share)), replace=False
    )
    held_out = queries[np.isin(train.query_users[queries], held_out_users)]
    valid = np.isin(train.query, held_out)
    fit = ~valid
    priors = ["none", _best_order(train, fit)] if config.prior == "best" else [config.prior]
    fits = {prior: _fit_booster(train, fit, valid, prior, config) for prior in priors}
    prior = max(priors, key=lambda name: fits[name][1])
    booster, best = fits[prior]
    info = {
        "best_iteration": int(booster.best_iteration),
        "valid_ndcg_at_10": round(best, 5),
        "training_rows": int(fit.sum()),
        "training_queries": int(len(queries) - len(held_out)),
        "early_stopping_queries": len(held_out),
        "prior": prior,
        "prior_trials": {name: round(value, 5) for name, (_, value) in fits.items()},
        "feature_importance_gain": {
            k: round(v, 3) for k, v in booster.get_score(importance_type="gain").items()
        },
    }
    return booster, info


@dataclass
class Ranker:
    """A trained booster with the feature tables it scores from, and the order it serves
    (`info["serving_order"]`: the booster's, or a source's; a ranker saved before the choice
    existed serves its booster's)."""

    booster: xgb.Booster
    tables: FeatureTables
    users: Vocabulary
    items: Vocabulary
    config: RankerConfig
    info: dict

    def __post_init__(self) -> None:
        self._iteration_range = (0, int(self.booster.best_iteration) + 1)
        self._predictor = DensePredictor(self.booster, self._iteration_range)
        self._item_rows = item_feature_rows(self.tables)
        self.serving_order = str(self.info.get("serving_order", RANKER))
        if self.serving_order not in ORDERS:
            raise ValueError(f"ranker serves an unknown order {self.serving_order!r}")

    @property
    def order_label(self) -> str:
        """What orders the served lists, for answers and the model card."""
        return ORDER_LABELS[self.serving_order]

    def serve_scores(self, features: np.ndarray) -> np.ndarray:
        """Scores in the served order: the booster's, or the chosen source's ranks."""
        if self.serving_order == RANKER:
            return self.predict(features)
        return order_scores(self.serving_order, features).astype(np.float32)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores for a feature matrix, using the best iteration found by early stopping."""
        return self._predictor(features, prior_margin(self.info.get("prior"), features))

    def features_for(self, user_id: str, columns: dict[str, list]) -> tuple[np.ndarray, np.ndarray]:
        """Feature matrix for candidate columns (ids, scores, sources, signals), and the mask
        of ids the model knows. A signal column the caller left out is missing (NaN).

        The rows equal `candidate_features` of the known candidates (tests/unit/test_features.py),
        filled in place in one float32 matrix: a fifth of the per-request array operations.
        """
        item_idx = self.items.lookup(columns["item_ids"])
        known = item_idx >= 0
        features = np.empty((len(item_idx), len(FEATURE_NAMES)), dtype=np.float32)
        features[:, _SCORE] = columns["scores"]
        for column, name in enumerate(SIGNAL_NAMES, start=SIGNAL_FEATURES.start):
            values = columns.get(name)
            features[:, column] = np.nan if values is None else values
        if not known.all():
            features, item_idx = features[known], item_idx[known]
        # Ranks follow the order the candidates arrived in, unknown items included.
        features[:, _RANK] = np.flatnonzero(known)
        _make_list_relative(features[:, SIGNAL_FEATURES])
        fill_item_user_features(
            features, self.tables, self._item_rows, self.users.index_of(user_id), item_idx
        )
        return features, known

    def score(
        self, user_id: str, item_ids: list[str], scores: list[float], from_popular: list[bool]
    ) -> np.ndarray:
        """One score per candidate without source signals; unknown items get -inf (last)."""
        sources = [SOURCE_POPULAR if popular else SOURCE_ANN for popular in from_popular]
        columns = {"item_ids": item_ids, "scores": scores, "sources": sources}
        return self.score_columns(user_id, columns)

    def score_columns(self, user_id: str, columns: dict[str, list]) -> np.ndarray:
        """One score per candidate of `RetrievalModel.retrieve_columns`' columns (-inf: unknown)."""
        return self.score_columns_many([(user_id, columns)])[0]

    def score_columns_many(
        self, requests: Sequence[tuple[str, dict[str, list]]]
    ) -> list[np.ndarray]:
        """`score_columns` for several requests (user id, columns) with one model prediction:
        XGBoost's fixed cost per call is paid once for the batch."""
        with tracer.start_as_current_span("feature_assembly") as span:
            prepared = [self.features_for(user_id, columns) for user_id, columns in requests]
            rows = sum(int(known.sum()) for _, known in prepared)
            unknown = sum(int((~known).sum()) for _, known in prepared)
            set_attributes(span, rows=rows, unknown_items=unknown, requests=len(requests))
        scored = [np.full(len(known), -np.inf, dtype=np.float32) for _, known in prepared]
        if rows:
            with tracer.start_as_current_span("model_prediction") as span:
                predictions = self.serve_scores(np.vstack([f for f, _ in prepared]))
                set_attributes(
                    span, rows=rows, trees=self._iteration_range[1], order=self.serving_order
                )
            start = 0
            for out, (_, known) in zip(scored, prepared, strict=True):
                count = int(known.sum())
                out[known] = predictions[start : start + count]
                start += count
        return scored

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(directory / "booster.ubj")
        self.tables.save(directory / "feature_tables.npz")
        self.users.save(directory / "users.npy")
        self.items.save(directory / "items.npy")
        (directory / "ranker.json").write_text(
            json.dumps(
                {"config": asdict(self.config), "info": self.info, "features": FEATURE_NAMES},
                indent=2,
            )
        )

    @classmethod
    def load(cls, directory: str | Path) -> Ranker:
        directory = Path(directory)
        meta = json.loads((directory / "ranker.json").read_text())
        if tuple(meta["features"]) != FEATURE_NAMES:
            raise ValueError(
                f"ranker was trained on features {meta['features']}, this code builds "
                f"{list(FEATURE_NAMES)}: retrain or deploy matching code"
            )
        booster = xgb.Booster()
        booster.load_model(directory / "booster.ubj")
        booster.set_param({"nthread": 1})
        return cls(
            booster=booster,
            tables=FeatureTables.load(directory / "feature_tables.npz"),
            users=Vocabulary.load(directory / "users.npy"),
            items=Vocabulary.load(directory / "items.npy"),
            config=RankerConfig(**meta["config"]),
            info=meta["info"],
        )


def rank_columns(ranker, user_id: str, candidates: dict[str, list]) -> dict[str, list]:
    """The ranker's verdict on candidate columns: `order` (positions in `candidates`, best
    first) and their `scores`. Items the ranker does not know are left out."""
    return rank_columns_many(ranker, [(user_id, candidates)])[0]


def rank_columns_many(ranker, requests: list[tuple[str, dict[str, list]]]) -> list[dict]:
    """`rank_columns` for several requests with one model prediction."""
    import numpy as np

    verdicts = []
    for scores in ranker.score_columns_many(requests):
        order = np.argsort(-scores, kind="stable")
        order = order[np.isfinite(scores[order])]
        verdicts.append({"order": order.tolist(), "scores": scores[order].tolist()})
    return verdicts
