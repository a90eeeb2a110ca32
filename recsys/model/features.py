"""Ranking features: one module for training and serving.

`build_feature_tables` condenses the history before a cut-off time into per-user and per-item
arrays; `assemble_features` turns (user, candidate items, retrieval outputs) into the model's
input matrix. The Ranking service fills the same matrix in place for one user's request
(`item_feature_rows`, `fill_item_user_features`: `Ranker.features_for`), from the same tables;
tests/unit/test_features.py holds it equal, bit for bit, to the training assembly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.model.data import schema
from recsys.model.data.validate import to_epoch_seconds
from recsys.model.sources import SIGNAL_NAMES
from recsys.model.vocab import Vocabulary

FEATURE_NAMES: tuple[str, ...] = (
    "retrieval_score",
    "retrieval_rank",
    *SIGNAL_NAMES,
    "item_log_pop_7d",
    "item_log_pop_30d",
    "item_log_pop_all",
    "item_trending",
    "item_trend",
    "item_age_days",
    "item_category",
    "user_log_activity",
    "user_days_since_last",
    "user_category_share",
    "user_category_share_14d",
)

_DAY_S = 86_400.0
_NO_HISTORY_DAYS = 365.0
TRENDING_DAYS = 14.0
TRENDING_HALF_LIFE_DAYS = 3.0


@dataclass
class FeatureTables:
    """Per-user and per-item statistics of the history before `as_of` (epoch seconds)."""

    as_of: int
    item_log_pop_7d: np.ndarray
    item_log_pop_30d: np.ndarray
    item_log_pop_all: np.ndarray
    item_trending: np.ndarray
    item_age_days: np.ndarray
    item_category: np.ndarray
    user_log_activity: np.ndarray
    user_days_since_last: np.ndarray
    user_category_share: np.ndarray
    user_category_share_14d: np.ndarray

    def save(self, path: str | Path) -> None:
        np.savez(path, **{f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def load(cls, path: str | Path) -> FeatureTables:
        with np.load(path) as arrays:
            values = {f.name: arrays[f.name] for f in fields(cls)}
        values["as_of"] = int(values["as_of"])
        return cls(**values)


def _item_window_counts(
    item_idx: np.ndarray, seconds: np.ndarray, as_of: int, days: float | None, n_items: int
) -> np.ndarray:
    mask = np.ones(len(item_idx), dtype=bool) if days is None else seconds >= as_of - days * _DAY_S
    return np.bincount(item_idx[mask], minlength=n_items).astype(np.float32)


def _category_share(
    user_idx: np.ndarray, category: np.ndarray, n_users: int, n_categories: int
) -> np.ndarray:
    counts = np.zeros((n_users, n_categories), dtype=np.float32)
    np.add.at(counts, (user_idx, category), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _log_relative(counts: np.ndarray) -> np.ndarray:
    """log1p of counts over their mean: the same item or user scores alike whether the history
    behind the table is longer (final models) or shorter (the ranker's training tables)."""
    mean = float(counts.mean()) if len(counts) else 0.0
    return np.log1p(counts / max(mean, 1e-12)).astype(np.float32)


def build_feature_tables(
    history: pd.DataFrame,
    catalog: pd.DataFrame,
    users: Vocabulary,
    items: Vocabulary,
    categories: Vocabulary,
    as_of: pd.Timestamp,
) -> FeatureTables:
    """Summarise `history` as seen at `as_of`; rows at or after `as_of` are a leakage bug.

    Raises:
        ValueError: when history holds events at or after `as_of`.
    """
    as_of_s = int(to_epoch_seconds(pd.Series([as_of]))[0])
    seconds = to_epoch_seconds(history[schema.TIMESTAMP])
    if len(seconds) and seconds.max() >= as_of_s:
        raise ValueError("feature history contains events at or after the cut-off (leakage)")
    user_idx = users.lookup(history[schema.USER_ID])
    item_idx = items.lookup(history[schema.ITEM_ID])
    known = (user_idx >= 0) & (item_idx >= 0)
    user_idx, item_idx, seconds = user_idx[known], item_idx[known], seconds[known]
    weights = history[schema.WEIGHT].to_numpy(dtype=np.float64)[known]

    catalog_idx = items.lookup(catalog[schema.ITEM_ID])
    on_vocab = catalog_idx >= 0
    item_category = np.zeros(len(items), dtype=np.int32)
    item_category[catalog_idx[on_vocab]] = categories.lookup(catalog[schema.CATEGORY])[on_vocab]
    created_s = np.zeros(len(items), dtype=np.int64)
    created_s[catalog_idx[on_vocab]] = to_epoch_seconds(catalog[schema.CREATED_AT])[on_vocab]

    pop_7d = _item_window_counts(item_idx, seconds, as_of_s, 7, len(items))
    pop_30d = _item_window_counts(item_idx, seconds, as_of_s, 30, len(items))
    pop_all = _item_window_counts(item_idx, seconds, as_of_s, None, len(items))
    # Recency-decayed weighted events (3-day half-life over two weeks), as trending lists use.
    age_days = (as_of_s - seconds) / _DAY_S
    fresh = age_days <= TRENDING_DAYS
    trending = np.bincount(
        item_idx[fresh],
        weights=weights[fresh] * np.exp2(-age_days[fresh] / TRENDING_HALF_LIFE_DAYS),
        minlength=len(items),
    )
    activity = np.bincount(user_idx, minlength=len(users)).astype(np.float32)
    last_seen = np.full(len(users), as_of_s - _NO_HISTORY_DAYS * _DAY_S)
    np.maximum.at(last_seen, user_idx, seconds.astype(np.float64))
    recent = seconds >= as_of_s - 14 * _DAY_S
    event_category = item_category[item_idx]
    return FeatureTables(
        as_of=as_of_s,
        item_log_pop_7d=_log_relative(pop_7d),
        item_log_pop_30d=_log_relative(pop_30d),
        item_log_pop_all=_log_relative(pop_all),
        item_trending=np.log1p(trending).astype(np.float32),
        item_age_days=np.maximum((as_of_s - created_s) / _DAY_S, 0.0).astype(np.float32),
        item_category=item_category,
        user_log_activity=_log_relative(activity),
        user_days_since_last=((as_of_s - last_seen) / _DAY_S).astype(np.float32),
        user_category_share=_category_share(user_idx, event_category, len(users), len(categories)),
        user_category_share_14d=_category_share(
            user_idx[recent], event_category[recent], len(users), len(categories)
        ),
    )


def assemble_features(
    tables: FeatureTables,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    retrieval_score: np.ndarray,
    retrieval_rank: np.ndarray,
    signals: np.ndarray,
) -> np.ndarray:
    """Feature matrix (rows = candidates, columns = FEATURE_NAMES) for user/item index pairs.

    `signals` are the sources' views of each candidate (columns `SIGNAL_NAMES`; NaN where a
    caller did not send them: XGBoost treats NaN as missing). A user index of -1 is a user
    without history: user features take their neutral values.
    """
    user_idx = np.asarray(user_idx, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    known = user_idx >= 0
    safe_user = np.where(known, user_idx, 0)
    category = tables.item_category[item_idx]
    pop_7d = tables.item_log_pop_7d[item_idx]
    pop_30d = tables.item_log_pop_30d[item_idx]
    share = np.where(known, tables.user_category_share[safe_user, category], 0.0)
    share_14d = np.where(known, tables.user_category_share_14d[safe_user, category], 0.0)
    columns = (
        np.asarray(retrieval_score, dtype=np.float32),
        np.asarray(retrieval_rank, dtype=np.float32),
        *np.asarray(signals, dtype=np.float32).reshape(len(item_idx), len(SIGNAL_NAMES)).T,
        pop_7d,
        pop_30d,
        tables.item_log_pop_all[item_idx],
        tables.item_trending[item_idx],
        pop_7d - pop_30d,
        tables.item_age_days[item_idx],
        category.astype(np.float32),
        np.where(known, tables.user_log_activity[safe_user], 0.0),
        np.where(known, tables.user_days_since_last[safe_user], _NO_HISTORY_DAYS),
        share,
        share_14d,
    )
    return np.column_stack(columns).astype(np.float32, copy=False)


# Where each group of features sits in a row of FEATURE_NAMES.
SIGNAL_FEATURES = slice(
    FEATURE_NAMES.index(SIGNAL_NAMES[0]), FEATURE_NAMES.index(SIGNAL_NAMES[-1]) + 1
)
ITEM_FEATURES = slice(
    FEATURE_NAMES.index("item_log_pop_7d"), FEATURE_NAMES.index("item_category") + 1
)
_USER_FEATURES = FEATURE_NAMES.index("user_log_activity")


def item_feature_rows(tables: FeatureTables) -> np.ndarray:
    """Every item's features (columns `FEATURE_NAMES[ITEM_FEATURES]`) as one float32 row, so a
    request gathers its candidates' item features at once (`fill_item_user_features`)."""
    pop_7d, pop_30d = tables.item_log_pop_7d, tables.item_log_pop_30d
    columns = (
        pop_7d,
        pop_30d,
        tables.item_log_pop_all,
        tables.item_trending,
        pop_7d - pop_30d,
        tables.item_age_days,
        tables.item_category.astype(np.float32),
    )
    return np.column_stack(columns).astype(np.float32, copy=False)


def fill_item_user_features(
    features: np.ndarray,
    tables: FeatureTables,
    item_rows: np.ndarray,
    user_idx: int,
    item_idx: np.ndarray,
) -> None:
    """Write the item and user columns of one user's candidate rows in place: the values
    `assemble_features` gives them, for one user (-1: without history) and `item_rows` from
    `item_feature_rows(tables)`."""
    features[:, ITEM_FEATURES] = item_rows[item_idx]
    user = features[:, _USER_FEATURES:]
    if user_idx < 0:
        user[:] = (0.0, _NO_HISTORY_DAYS, 0.0, 0.0)
        return
    category = tables.item_category[item_idx]
    user[:, 0] = tables.user_log_activity[user_idx]
    user[:, 1] = tables.user_days_since_last[user_idx]
    user[:, 2] = tables.user_category_share[user_idx][category]
    user[:, 3] = tables.user_category_share_14d[user_idx][category]
