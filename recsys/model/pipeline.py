"""The training pipeline: validate -> split -> tuning -> retrieval -> ranker -> served order
-> evaluation.

Two phases keep the ranker honest. Phase A fits the sources on each label fold's train events
(the validation window, earlier windows, or K cross-fitted folds of the history:
`data.split.label_folds`) and learns the ranker on their candidates, labelled by the fold's
held-out events; a fifth of those users are set aside to choose the served order (the ranker
or a source's, `ordering`). Phase B refits the sources on all events before the test window,
recomputes the feature tables at the test cut-off, and pairs them with the phase A booster:
these are the evaluated (and saved) models, and the PSI of the ranker's features between the
two phases is recorded.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from recsys.errors import ConfigError
from recsys.model.data import schema
from recsys.model.data.split import (
    Split,
    chronological_split,
    label_folds,
    random_split,
    temporal_split,
)
from recsys.model.data.validate import ValidationReport, validate_dataset
from recsys.model.evaluate import evaluate_models, held_out_relevance, promotion_decision
from recsys.model.features import FEATURE_NAMES, build_feature_tables
from recsys.model.health import feature_psi
from recsys.model.ordering import compare_orders
from recsys.model.ranking import (
    Ranker,
    RankerConfig,
    RankingExamples,
    booster_scores,
    candidate_features,
    train_ranker,
)
from recsys.model.retrieval import (
    EmbeddingConfig,
    IndexConfig,
    RetrievalConfig,
    RetrievalModel,
    train_retrieval,
)
from recsys.model.sources import ItemItemConfig
from recsys.model.tuning import TuningConfig, tune_sources
from recsys.model.vocab import Vocabulary

# Seconds-scale training on `TINY_SYNTH`-sized data (TrainConfig.tiny), in the JSON shape of
# `recsys retrain --train-config` (the container tests give it to the training job).
TINY_TRAINING: dict[str, Any] = {
    "validation_days": 10,
    "test_days": 10,
    "max_eval_users": 2000,
    "embedding": {"factors": 16, "iterations": 6},
    "retrieval": {"num_candidates": 100},
    # One label fold: seconds-scale (the folds are tested on their own). 32 pairs per sample:
    # on ~500 lists 8 pairs left early stopping at 2 trees and the ranker below the trending
    # list (NDCG@10 0.1219 against 0.1304; 0.1458 with 32, which cost little at this size).
    "ranker": {
        "n_estimators": 60,
        "max_training_users": 1000,
        "label_folds": 1,
        "pairs_per_sample": 32,
    },
    # Off: on 600 users each day's search picks other settings and the two-stage NDCG@10 moves
    # by up to 8% a day, beyond the retraining tests' 5% tolerance (about 3% with it off).
    # The tuning itself is tested on this data with `tuning={"enabled": True, ...}`.
    "tuning": {"enabled": False, "max_users": 500},
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's outcome (with the data)."""

    split: Literal["chronological", "random", "temporal"] = "chronological"
    ratio: float = 0.75
    # Share of each user's latest events held out (test, then validation) with split temporal.
    holdout: float = 0.2
    validation_days: float = 14.0
    test_days: float = 14.0
    max_reject_ratio: float = 0.05
    ks: tuple[int, ...] = (5, 10, 20)
    max_eval_users: int = 10_000
    seed: int = 0
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    item_item: ItemItemConfig = field(default_factory=ItemItemConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def split_of(cls, saved: dict) -> TrainConfig:
        """The split settings a stored model was trained with (its metadata's `config`), so an
        evaluation of it uses the same test window; the rest stays at the defaults."""
        return cls(
            split=saved.get("split", "chronological"),
            ratio=saved.get("ratio", 0.75),
            holdout=saved.get("holdout", 0.2),
            validation_days=saved.get("validation_days", 14.0),
            test_days=saved.get("test_days", 14.0),
            seed=saved.get("seed", 0),
        )

    @classmethod
    def tuned_settings(cls, saved: dict) -> dict[str, Any]:
        """What a stored model's tuning chose (its metadata's `config`), as overrides with
        tuning off: a daily retrain trains with the serving model's settings instead of
        searching again, so a new day moves the model by its data, not by a new search.
        Fields this code does not know (an older model's) are left out."""
        defaults = cls()
        reused: dict[str, Any] = {}
        for name in ("embedding", "item_item", "retrieval", "ranker"):
            known = {f.name for f in fields(getattr(defaults, name))}
            values = saved.get(name)
            if isinstance(values, dict):
                reused[name] = {k: v for k, v in values.items() if k in known}
        return {**reused, "tuning": {"enabled": False}} if reused else {}

    @classmethod
    def with_overrides(cls, overrides: dict[str, Any]) -> TrainConfig:
        """The defaults with JSON-shaped overrides (`recsys retrain --train-config`): top-level
        fields by name, nested configs as objects, e.g. {"embedding": {"iterations": 8}}.

        Raises:
            ConfigError: a field this code does not know, named in one line (a user's old JSON
                may still carry `tuning.budget_seconds`, replaced by a trial count).
        """
        defaults = cls()
        _check_fields("", defaults, overrides)
        nested = {k: v for k, v in overrides.items() if isinstance(v, dict)}
        config = replace(defaults, **{k: v for k, v in overrides.items() if k not in nested})
        for name, values in nested.items():
            _check_fields(f"{name}.", getattr(config, name), values)
            config = replace(config, **{name: replace(getattr(config, name), **values)})
        return config

    @classmethod
    def tiny(cls, **overrides) -> TrainConfig:
        """Seconds-scale training on `TINY_SYNTH`-sized data: the rehearsal's and the tests'."""
        return replace(cls.with_overrides(TINY_TRAINING), **overrides)


# Fields that older releases knew, with what replaced them: named in the error a stale
# override gets.
_RENAMED_FIELDS: dict[str, str] = {
    "tuning.budget_seconds": "tuning.max_trials (trials per refitting stage; "
    "tuning.safety_seconds is only a safety stop)",
}


def _check_fields(prefix: str, config: Any, overrides: dict[str, Any]) -> None:
    """Refuse override keys `config` (a dataclass) does not have, before `replace` would raise
    a bare TypeError."""
    known = {f.name for f in fields(config)}
    for key in overrides:
        if key in known:
            continue
        name = prefix + key
        hint = (
            f"; it was replaced by {_RENAMED_FIELDS[name]}"
            if name in _RENAMED_FIELDS
            else f"; known: {', '.join(sorted(known))}"
        )
        raise ConfigError(f"unknown training setting {name!r}{hint}")


@dataclass
class TrainResult:
    """Trained models, their evaluation and how the run went."""

    retrieval: RetrievalModel
    ranker: Ranker
    metrics: dict
    validation: ValidationReport
    split: dict
    data_hash: str
    promotable: bool
    promotion_reasons: list[str]
    timings: dict[str, float]
    config: TrainConfig


StageHook = Callable[[str, float | None], None]


class StageClock:
    """Times named stages and reports start (seconds=None) and end to an optional hook."""

    def __init__(self, hook: StageHook | None = None):
        self.timings: dict[str, float] = {}
        self._hook = hook

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._hook:
            self._hook(name, None)
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        if self._hook:
            self._hook(name, self.timings[name])


def data_fingerprint(*frames: pd.DataFrame) -> str:
    """A short content hash of the clean tables (row order included)."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def ranking_examples(
    retrieval: RetrievalModel,
    ranker_tables,
    label_window: pd.DataFrame,
    config: TrainConfig,
) -> RankingExamples:
    """Candidates of users active in the label window, labelled 1 when met in that window."""
    evaluation = held_out_relevance(
        label_window, retrieval, max_users=config.ranker.max_training_users, seed=config.seed
    )
    features, labels, query, users = [], [], [], []
    for user_id, relevant in zip(evaluation.user_ids, evaluation.relevant, strict=True):
        user_idx = retrieval.users.index_of(user_id)
        candidates = retrieval.retrieve_indices(user_idx, config.retrieval.num_candidates)
        hit = np.isin(candidates.item_idx, list(relevant))
        if not hit.any():  # a list without positives teaches LambdaMART nothing
            continue
        features.append(candidate_features(ranker_tables, user_idx, candidates))
        labels.append(hit.astype(np.float32))
        query.append(np.full(len(candidates), len(users), dtype=np.int64))
        users.append(user_id)
    if not features:
        raise ValueError("no user in the validation window has a relevant retrieved candidate")
    return RankingExamples(
        np.vstack(features),
        np.concatenate(labels),
        np.concatenate(query),
        np.array(users, dtype=object),
    )


def feature_skew(
    examples: RankingExamples,
    retrieval: RetrievalModel,
    tables,
    config: TrainConfig,
    max_users: int = 500,
) -> dict[str, Any]:
    """PSI of each ranker feature between its training lists and the serving regime's lists
    (the final sources and tables) of the same users: how far the refit moves what the
    ranker reads."""
    users = np.unique(examples.query_users)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(config.seed).choice(users, max_users, replace=False))
    rows = np.isin(examples.query_users[examples.query], users)
    serving = []
    for user_id in users:
        user_idx = retrieval.users.index_of(user_id)
        candidates = retrieval.retrieve_indices(user_idx, config.retrieval.num_candidates)
        serving.append(candidate_features(tables, user_idx, candidates))
    psi = feature_psi(examples.features[rows], np.vstack(serving), FEATURE_NAMES)
    return {"users": len(users), "psi": psi}


def ranker_trial(info: dict, config: RankerConfig, seconds: float) -> dict[str, Any]:
    """The ranker's row of the search table: its number of trees is chosen by early stopping
    on held-out validation queries (a grid over depth and leaf weight moved validation NDCG
    by less than its noise on all three data sets of `make relevance`, and not the same way
    as test, so none runs)."""
    return {
        "stage": "ranker",
        "params": {
            "best_iteration": info["best_iteration"],
            "max_depth": config.max_depth,
            "min_child_weight": config.min_child_weight,
        },
        "ndcg": info["valid_ndcg_at_10"],
        "recall": None,
        "seconds": round(seconds, 2),
        "chosen": True,
    }


def make_split(interactions: pd.DataFrame, config: TrainConfig) -> Split:
    if config.split == "random":
        return random_split(interactions, ratio=config.ratio, seed=config.seed)
    if config.split == "temporal":
        return temporal_split(interactions, holdout=config.holdout)
    return chronological_split(interactions, config.validation_days, config.test_days)


def train_pipeline(
    interactions: pd.DataFrame,
    catalog: pd.DataFrame,
    config: TrainConfig | None = None,
    rejects_dir: str | None = None,
    on_stage: StageHook | None = None,
) -> TrainResult:
    """Run the whole pipeline on raw tables and return evaluated models."""
    config = config or TrainConfig()
    clock = StageClock(on_stage)
    with clock.stage("validate"):
        clean = validate_dataset(interactions, catalog, config.max_reject_ratio, rejects_dir)
        data_hash = data_fingerprint(clean.interactions, clean.catalog)
        items = Vocabulary(clean.catalog[schema.ITEM_ID].to_numpy())
        categories = Vocabulary.from_values(clean.catalog[schema.CATEGORY])
        item_categories = clean.catalog[schema.CATEGORY].to_numpy(dtype=object)
    with clock.stage("split"):
        split = make_split(clean.interactions, config)

    tuning: dict[str, Any] = {"trials": []}
    fitted = None
    if config.tuning.enabled:
        with clock.stage("tuning"):
            tuned = tune_sources(
                split.train,
                split.validation,
                items,
                split.validation_start,
                config.embedding,
                config.item_item,
                config.retrieval,
                config.tuning,
                config.seed,
            )
            config = replace(
                config,
                embedding=tuned.embedding,
                item_item=tuned.item_item,
                retrieval=tuned.retrieval,
            )
            tuning = tuned.table()
            if tuned.fitted is not None:
                fitted = (
                    tuned.fitted.user_factors,
                    tuned.fitted.item_factors,
                    tuned.fitted.item_item,
                )

    label_users = split.validation[schema.USER_ID].nunique()
    folds = label_folds(split, config.ranker.folds_for(label_users), config.seed)
    parts = []
    for number, fold in enumerate(folds):
        with clock.stage("retrieval (ranker phase)" + (f", fold {number + 1}" if number else "")):
            retrieval_a = train_retrieval(
                fold.train,
                items,
                item_categories,
                fold.cutoff,
                config.embedding,
                config.index,
                config.retrieval,
                config.item_item,
                fitted if fold.own else None,
            )
            tables_a = build_feature_tables(
                fold.train, clean.catalog, retrieval_a.users, items, categories, fold.cutoff
            )
            parts.append(ranking_examples(retrieval_a, tables_a, fold.labels, config))
    with clock.stage("ranker"):
        all_examples = RankingExamples.concat(parts)
        examples, selection = all_examples.split_users(config.ranker.selection_share, config.seed)
        start = time.perf_counter()
        booster, ranker_info = train_ranker(examples, config.ranker)
        ranker_info["label_folds"] = len(folds)
        tuning["trials"].append(
            ranker_trial(ranker_info, config.ranker, time.perf_counter() - start)
        )
        choice = compare_orders(
            selection.features,
            selection.labels,
            np.unique(selection.query, return_inverse=True)[1],
            selection.query_users[np.unique(selection.query)],
            booster_scores(booster, ranker_info["prior"], selection.features),
            config.ranker.serving_order,
            config.seed,
        )
        ranker_info["serving_order"] = choice.served
        ranker_info["selection"] = choice.to_dict()

    with clock.stage("retrieval (final)"):
        history = split.history_before_test
        retrieval = train_retrieval(
            history,
            items,
            item_categories,
            split.test_start,
            config.embedding,
            config.index,
            config.retrieval,
            config.item_item,
        )
        tables = build_feature_tables(
            history, clean.catalog, retrieval.users, items, categories, split.test_start
        )
        ranker = Ranker(booster, tables, retrieval.users, items, config.ranker, ranker_info)

    with clock.stage("feature skew"):
        skew = feature_skew(all_examples, retrieval, tables, config)

    with clock.stage("evaluate"):
        evaluation = held_out_relevance(
            split.test, retrieval, max_users=config.max_eval_users, seed=config.seed
        )
        metrics = evaluate_models(
            retrieval, ranker, evaluation, config.ks, config.retrieval.num_candidates
        )
        metrics["index"] = retrieval.stats
        metrics["ranker"] = {
            k: v
            for k, v in ranker_info.items()
            if k not in ("feature_importance_gain", "selection")
        }
        metrics["tuning"] = tuning
        metrics["feature_skew"] = skew
        promotable, reasons = promotion_decision(metrics)

    return TrainResult(
        retrieval=retrieval,
        ranker=ranker,
        metrics=metrics,
        validation=clean.report,
        split=split.describe(),
        data_hash=data_hash,
        promotable=promotable,
        promotion_reasons=reasons,
        timings=clock.timings,
        config=config,
    )
