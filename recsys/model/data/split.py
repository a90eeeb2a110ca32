"""Leakage-safe splits.

Chronological (default): train < validation_start <= validation < test_start <= test. The ranker
learns labels from the validation window with features computed only from the train window; the
evaluated models see only events before the test window.

Random (per-user holdout, for comparison with published benchmark tables): each user's events
are shuffled and a `ratio` share stays in history; the rest is held out. The same holdout is
applied once more inside the history to get the ranker's label set.

Temporal (per-user leave-last-out): each user's latest `holdout` share of events is test, the
same rule inside the remaining history gives the label set. Every user's test events come after
that user's own history, and all users with enough events are evaluated, not only those active
at the end of the log (about 100 of 610 on ml-latest-small with the chronological split).

`label_folds` gives the ranker more lists to learn from than one validation window holds:
earlier windows of the same length (chronological, and per user for temporal) or K-fold
cross-fitting of the history (random).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from recsys.errors import DataError
from recsys.model.data import schema

SplitKind = Literal["chronological", "random", "temporal"]


@dataclass
class Split:
    """Three disjoint event sets and the times before which features may look."""

    kind: SplitKind
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    validation_start: pd.Timestamp
    test_start: pd.Timestamp

    @property
    def history_before_test(self) -> pd.DataFrame:
        """Everything the final models may learn from: train and validation events."""
        return pd.concat([self.train, self.validation], ignore_index=True)

    def describe(self) -> dict:
        def window(frame: pd.DataFrame) -> dict:
            ts = frame[schema.TIMESTAMP]
            return {
                "events": len(frame),
                "users": int(frame[schema.USER_ID].nunique()),
                "start": ts.min().isoformat() if len(frame) else None,
                "end": ts.max().isoformat() if len(frame) else None,
            }

        return {
            "kind": self.kind,
            "validation_start": self.validation_start.isoformat(),
            "test_start": self.test_start.isoformat(),
            "train": window(self.train),
            "validation": window(self.validation),
            "test": window(self.test),
        }


def chronological_split(
    interactions: pd.DataFrame, validation_days: float = 14, test_days: float = 14
) -> Split:
    """Split by time: the last `test_days` are test, the `validation_days` before are validation."""
    ts = interactions[schema.TIMESTAMP]
    if ts.empty:
        raise DataError("cannot split an empty interaction log")
    end = ts.max() + pd.Timedelta(seconds=1)
    test_start = end - pd.Timedelta(days=test_days)
    validation_start = test_start - pd.Timedelta(days=validation_days)
    if validation_start <= ts.min():
        span_days = (end - ts.min()) / pd.Timedelta(days=1)
        raise DataError(
            f"the log spans {span_days:.1f} days, too short for {validation_days} validation days "
            f"plus {test_days} test days; pass smaller --validation-days/--test-days"
        )
    train = interactions[ts < validation_start]
    validation = interactions[(ts >= validation_start) & (ts < test_start)]
    test = interactions[ts >= test_start]
    return Split(
        "chronological",
        train.reset_index(drop=True),
        validation.reset_index(drop=True),
        test.reset_index(drop=True),
        validation_start,
        test_start,
    )


def _holdout_mask(frame: pd.DataFrame, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """True for rows held out: per user, the events past the first `ratio` share of a shuffle."""
    keys = pd.Series(rng.random(len(frame)), index=frame.index)
    order = keys.groupby(frame[schema.USER_ID]).rank(method="first")
    counts = frame.groupby(schema.USER_ID)[schema.USER_ID].transform("size")
    keep = np.maximum(np.ceil(counts * ratio), 1)
    return (order > keep).to_numpy()


def random_split(interactions: pd.DataFrame, ratio: float = 0.75, seed: int = 0) -> Split:
    """Per-user random holdout: `ratio` of each user's events in history, the rest in test."""
    if not 0.0 < ratio < 1.0:
        raise DataError(f"--ratio must be within (0, 1), got {ratio}")
    rng = np.random.default_rng(seed)
    held_out = _holdout_mask(interactions, ratio, rng)
    history, test = interactions[~held_out], interactions[held_out]
    label = _holdout_mask(history, ratio, rng)
    # Without time order every feature is computed "as of" the end of the log.
    cutoff = interactions[schema.TIMESTAMP].max() + pd.Timedelta(seconds=1)
    return Split(
        "random",
        history[~label].reset_index(drop=True),
        history[label].reset_index(drop=True),
        test.reset_index(drop=True),
        cutoff,
        cutoff,
    )


def _positions_in_time(frame: pd.DataFrame) -> pd.Series:
    """Each event's 1-based place in its user's history by time; equal timestamps keep the
    frame's row order, so the split does not depend on the sort algorithm."""
    return frame[schema.TIMESTAMP].groupby(frame[schema.USER_ID]).rank(method="first")


def _last_events_mask(frame: pd.DataFrame, holdout: float, min_events: int) -> np.ndarray:
    """True for each user's latest `holdout` share of events (rounded down, at least one);
    users with fewer than `min_events` events keep them all."""
    counts = frame.groupby(schema.USER_ID)[schema.USER_ID].transform("size")
    # The epsilon keeps e.g. 10 * 0.2 from rounding down to 1 in floating point.
    held = np.maximum(np.floor(counts * holdout + 1e-9), 1)
    kept = counts - held
    return ((counts >= min_events) & (_positions_in_time(frame) > kept)).to_numpy()


def temporal_split(interactions: pd.DataFrame, holdout: float = 0.2, min_events: int = 5) -> Split:
    """Per-user leave-last-out: each user's latest `holdout` share of events is test, the same
    rule inside the rest gives validation; users with fewer than `min_events` events (in the
    log, then in the history) stay whole in train.

    The "as of" times are, as with random, the latest event the models may see plus a second
    (train's for validation_start, the history's for test_start): users' windows overlap in
    calendar time, so no one instant separates every user's history from their test events.
    Popularity and recency features are therefore taken at the end of the seen log."""
    if not 0.0 < holdout < 1.0:
        raise DataError(f"the temporal holdout share must be within (0, 1), got {holdout}")
    if min_events < 2:
        raise DataError(f"min_events must be at least 2 (one event in history), got {min_events}")
    if interactions.empty:
        raise DataError("cannot split an empty interaction log")
    held_out = _last_events_mask(interactions, holdout, min_events)
    history, test = interactions[~held_out], interactions[held_out]
    label = _last_events_mask(history, holdout, min_events)
    train, validation = history[~label], history[label]
    second = pd.Timedelta(seconds=1)
    return Split(
        "temporal",
        train.reset_index(drop=True),
        validation.reset_index(drop=True),
        test.reset_index(drop=True),
        train[schema.TIMESTAMP].max() + second,
        history[schema.TIMESTAMP].max() + second,
    )


@dataclass
class LabelFold:
    """Events to fit candidate sources on, the later (or held-out) events that label their
    candidates, and the time features may look up to. `own` marks the split's own (train,
    validation) pair, on which tuning already fitted the sources."""

    train: pd.DataFrame
    labels: pd.DataFrame
    cutoff: pd.Timestamp
    own: bool = False


def _earlier_user_windows(split: Split, count: int) -> list[LabelFold]:
    """Up to `count` more temporal folds: each user's validation window moved back in that
    user's train events by its own length, the events after it dropped; a user leaves once no
    earlier event would remain, users without validation events keep all their train events."""
    train = split.train
    users = train[schema.USER_ID]
    window = users.map(split.validation.groupby(schema.USER_ID).size()).fillna(0)
    position = _positions_in_time(train)
    end = users.map(users.value_counts())  # the window's last position, fold by fold
    folds = []
    for _ in range(count):
        start = end - window  # positions up to `start` are the fold's train
        moving = (window > 0) & (start >= 1)
        labels = train[moving & (position > start) & (position <= end)]
        if labels.empty:
            break
        fold_train = train[~moving | (position <= start)]
        cutoff = fold_train[schema.TIMESTAMP].max() + pd.Timedelta(seconds=1)
        folds.append(
            LabelFold(fold_train.reset_index(drop=True), labels.reset_index(drop=True), cutoff)
        )
        end = start
    return folds


def label_folds(split: Split, count: int, seed: int = 0) -> list[LabelFold]:
    """Where the ranker's training lists come from.

    One fold: the split's own (train, validation). More, random split: K-fold cross-fitting
    of the whole history before test (each user's events dealt at random into `count` folds;
    sources fitted on the other folds, labels from the held-out one), so the sources behind
    the ranker's features are fitted on (K-1)/K of what the served ones see, not on the
    smaller train window. More, chronological: the split's own fold, then validation windows
    moved back by whole window lengths, each with the sources fitted before it (a fold is left
    out when its train or label window is empty); temporal: the same per user.
    """
    own = LabelFold(split.train, split.validation, split.validation_start, own=True)
    if count <= 1:
        return [own]
    if split.kind == "temporal":
        return [own, *_earlier_user_windows(split, count - 1)]
    if split.kind == "random":
        history = split.history_before_test
        keys = pd.Series(np.random.default_rng([seed, 7]).random(len(history)), index=history.index)
        position = keys.groupby(history[schema.USER_ID]).rank(method="first").to_numpy() - 1
        fold_of = position.astype(np.int64) % count
        return [
            LabelFold(
                history[fold_of != fold].reset_index(drop=True),
                history[fold_of == fold].reset_index(drop=True),
                split.validation_start,
            )
            for fold in range(count)
        ]
    folds = [own]
    window = split.test_start - split.validation_start
    ts = split.train[schema.TIMESTAMP]
    for fold in range(1, count):
        end = split.validation_start - (fold - 1) * window
        start = end - window
        train, labels = split.train[ts < start], split.train[(ts >= start) & (ts < end)]
        if train.empty or labels.empty:
            break
        folds.append(LabelFold(train.reset_index(drop=True), labels.reset_index(drop=True), start))
    return folds
