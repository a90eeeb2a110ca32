"""Model health: the training snapshot saved with each model, its age, and online drift.

At training time `build_snapshot` replays the newest window of the log (the requests the model
would have answered) through retrieval and ranking and records what serving looked like: the
share of unknown users and items, the retrieval and ranking score distributions (quantile bins)
and the category mix of the top-ranked items. The snapshot goes into both model directories as
`health.json` (covered by the artifact manifest).

At serving time a `DriftMonitor` keeps the same signals over a sliding window of the last N
requests and compares them with the snapshot: PSI (population stability index) for the score
distributions and the category mix, live vs training shares for unknown users and items.
Everything here is numpy and the standard library: no framework import, unit tested alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import pandas as pd

    from recsys.model.pipeline import TrainResult
    from recsys.model.ranking import Ranker
    from recsys.model.retrieval import RetrievalModel

SNAPSHOT_FILE = "health.json"
SNAPSHOT_VERSION = 1
# Rare categories are pooled so that a handful of requests cannot produce a large PSI.
OTHER_CATEGORY = "__other__"
_PSI_FLOOR = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two distributions over the same bins.

    Both inputs are counts or shares (normalised here); empty bins are floored at 1e-4 so the
    index stays finite. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e = np.maximum(e / e.sum(), _PSI_FLOOR)
    a = np.maximum(a / a.sum(), _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Bins:
    """Quantile bins of a reference sample: interior edges and the reference share per bin."""

    edges: list[float]
    shares: list[float]

    def __post_init__(self) -> None:
        # searched once per request: kept as an array (not a field: not saved, not compared)
        object.__setattr__(self, "_edge_array", np.asarray(self.edges, dtype=np.float64))

    @classmethod
    def from_sample(cls, values: np.ndarray, n_bins: int = 10) -> Bins:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            return cls([], [1.0])
        quantiles = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
        edges = np.unique(quantiles)
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        return cls(edges.tolist(), (counts / counts.sum()).round(6).tolist())

    def count(self, values: np.ndarray) -> np.ndarray:
        """Counts of `values` (finite ones) per bin."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        idx = np.searchsorted(self._edge_array, values, side="right")
        return np.bincount(idx, minlength=len(self.shares))


def feature_psi(
    reference: np.ndarray, current: np.ndarray, names: tuple[str, ...], n_bins: int = 10
) -> dict[str, float]:
    """PSI of each feature column of `current` against `reference`'s quantile bins."""
    out = {}
    for column, name in enumerate(names):
        bins = Bins.from_sample(reference[:, column], n_bins)
        out[name] = round(psi(np.asarray(bins.shares), bins.count(current[:, column])), 4)
    return out


@dataclass
class TrainingSnapshot:
    """What serving looked like on the training data's newest window (saved in the model)."""

    data_end: float  # Unix time of the newest event the run read (the data window's end)
    trained_until: float  # Unix time before which the final models learnt (the test window start)
    requests: int  # replayed requests the distributions come from
    unknown_user_share: float
    unknown_item_share: float
    retrieval_scores: Bins
    ranking_scores: Bins
    categories: dict[str, float]  # share of top-ranked items per category (rare ones pooled)
    top_k: int = 10
    version: int = SNAPSHOT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainingSnapshot:
        raw = dict(raw)
        raw["retrieval_scores"] = Bins(**raw["retrieval_scores"])
        raw["ranking_scores"] = Bins(**raw["ranking_scores"])
        return cls(**raw)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SNAPSHOT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TrainingSnapshot | None:
        """The snapshot of a model directory; None for a model trained before snapshots existed."""
        path = Path(directory) / SNAPSHOT_FILE
        if not path.exists():
            return None
        return cls.from_dict(json.loads(path.read_text()))

    def age_seconds(self, now: float | None = None) -> float:
        """Seconds since the end of the model's data window."""
        return max(0.0, (time.time() if now is None else now) - self.data_end)


def category_shares(categories: Sequence[str], min_share: float = 0.005) -> dict[str, float]:
    """Share per category; categories under `min_share` pooled into OTHER_CATEGORY."""
    values, counts = np.unique(np.asarray(categories, dtype=object).astype(str), return_counts=True)
    shares = counts / max(counts.sum(), 1)
    out: dict[str, float] = {}
    other = 0.0
    for value, share in zip(values.tolist(), shares.tolist(), strict=True):
        if share < min_share:
            other += share
        else:
            out[value] = round(share, 6)
    if other > 0:
        out[OTHER_CATEGORY] = round(other, 6)
    return out


def build_snapshot(
    retrieval: RetrievalModel,
    ranker: Ranker,
    events: pd.DataFrame,
    *,
    trained_until: float,
    window_days: float = 14.0,
    requests: int = 400,
    num_candidates: int | None = None,
    top_k: int = 10,
    seed: int = 0,
) -> TrainingSnapshot:
    """Replay requests drawn from the newest `window_days` of `events` through both models.

    Args:
        retrieval, ranker: the trained pair.
        events: the log (user_id, item_id, timestamp as UTC datetimes); invalid rows ignored.
        trained_until: Unix time before which the final models learnt.
        window_days: length of the newest window whose users make the requests.
        requests: how many requests to replay (events sampled, so busy users weigh more).
        num_candidates: candidates per request (default the retrieval config's).
        top_k: how many top-ranked items make the category mix.
        seed: sampling seed.
    """
    from recsys.model.data import schema
    from recsys.model.ranking import rank_columns

    timestamps = events[schema.TIMESTAMP]
    valid = timestamps.notna()
    end = timestamps[valid].max()
    window = events.loc[valid & (timestamps >= end - _days(window_days))]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(window), size=min(requests, len(window)), replace=False)
    users = window[schema.USER_ID].astype(str).to_numpy()[picks]
    items = window[schema.ITEM_ID].astype(str).to_numpy()
    count = num_candidates or retrieval.config.num_candidates
    retrieval_scores, ranking_scores, top_categories = [], [], []
    unknown_users = 0
    for user_id in users.tolist():
        unknown_users += retrieval.users.index_of(user_id) < 0
        # exactly what the Retrieval and Ranking stages compute and observe per request
        columns = retrieval.retrieve_columns(user_id, count)
        verdict = rank_columns(ranker, user_id, columns)
        retrieval_scores.append(np.asarray(columns["scores"], dtype=np.float64))
        ranking_scores.append(np.asarray(verdict["scores"], dtype=np.float64))
        top_categories.extend(columns["categories"][i] for i in verdict["order"][:top_k])
    n = max(len(users), 1)
    return TrainingSnapshot(
        data_end=end.timestamp(),
        trained_until=trained_until,
        requests=len(users),
        unknown_user_share=round(unknown_users / n, 6),
        unknown_item_share=round(float((retrieval.items.lookup(items) < 0).mean()), 6)
        if len(items)
        else 0.0,
        retrieval_scores=Bins.from_sample(_concat(retrieval_scores)),
        ranking_scores=Bins.from_sample(_concat(ranking_scores)),
        categories=category_shares(top_categories),
        top_k=top_k,
    )


def snapshot_for(result: TrainResult, interactions: pd.DataFrame) -> TrainingSnapshot:
    """The snapshot of a finished training run, replayed on its raw log's newest window."""
    import pandas as pd

    from recsys.model.data import schema
    from recsys.model.data.validate import parse_timestamps

    events = pd.DataFrame(
        {
            schema.USER_ID: interactions[schema.USER_ID].astype("string").str.strip(),
            schema.ITEM_ID: interactions[schema.ITEM_ID].astype("string").str.strip(),
            schema.TIMESTAMP: parse_timestamps(interactions[schema.TIMESTAMP]),
        }
    ).dropna()
    test_start = pd.Timestamp(result.split["test_start"])
    return build_snapshot(
        result.retrieval,
        result.ranker,
        events,
        trained_until=min(test_start, events[schema.TIMESTAMP].max()).timestamp(),
        window_days=result.config.test_days,
        num_candidates=result.config.retrieval.num_candidates,
        seed=result.config.seed,
    )


def _days(days: float):
    import pandas as pd

    return pd.Timedelta(days=days)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0)


class _Window:
    """Per-request count vectors over the last `size` requests, with their running sum."""

    def __init__(self, size: int, width: int) -> None:
        self.rows = np.zeros((size, width), dtype=np.int64)
        self.total = np.zeros(width, dtype=np.int64)
        self.next = 0
        self.filled = 0

    def add(self, counts: np.ndarray) -> None:
        slot = self.next
        self.total += counts - self.rows[slot]
        self.rows[slot] = counts
        self.next = (slot + 1) % len(self.rows)
        self.filled = min(self.filled + 1, len(self.rows))


@dataclass
class DriftReading:
    """Live drift signals of one component over its window."""

    requests: int
    psi: dict[str, float] = field(default_factory=dict)
    shares: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (live, training)


Publish = Callable[[DriftReading], None]


class DriftMonitor:
    """Sliding-window drift signals of one served model against its training snapshot.

    `observe_retrieval` / `observe_ranking` are called once per answered request (a few
    microseconds: a bin search over the scores and a vector add); every `publish_every`
    observations the reading is computed and handed to `publish` (which sets the gauges).
    """

    def __init__(
        self,
        snapshot: TrainingSnapshot,
        window: int = 1000,
        publish_every: int = 10,
        publish: Publish | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.publish_every = max(1, publish_every)
        self.publish = publish
        self.categories = [c for c in snapshot.categories if c != OTHER_CATEGORY]
        self._category_index = {c: i for i, c in enumerate(self.categories)}
        size = max(1, window)
        self.retrieval = _Window(size, len(snapshot.retrieval_scores.shares))
        self.ranking = _Window(size, len(snapshot.ranking_scores.shares))
        self.category_mix = _Window(size, len(self.categories) + 1)
        # [unknown users, requests] and [unknown named items, named items] per request
        self.users = _Window(size, 2)
        self.items = _Window(size, 2)
        self._since_publish = 0

    def observe_retrieval(
        self,
        known_user: bool,
        scores: Sequence[float],
        unknown_items: int = 0,
        named_items: int = 0,
    ) -> None:
        """One retrieval answer: was the user known, its candidate scores, named items."""
        self.users.add(np.array([0 if known_user else 1, 1]))
        self.items.add(np.array([unknown_items, named_items]))
        self.retrieval.add(self.snapshot.retrieval_scores.count(np.asarray(scores)))
        self._tick()

    def observe_ranking(self, scores: Sequence[float], categories: Sequence[str]) -> None:
        """One ranking answer: the ranker's scores and the categories of its top items, in order."""
        self.ranking.add(self.snapshot.ranking_scores.count(np.asarray(scores)))
        counts = np.zeros(len(self.categories) + 1, dtype=np.int64)
        for category in categories[: self.snapshot.top_k]:
            counts[self._category_index.get(category, len(self.categories))] += 1
        self.category_mix.add(counts)
        self._tick()

    def _tick(self) -> None:
        self._since_publish += 1
        if self.publish is not None and self._since_publish >= self.publish_every:
            self._since_publish = 0
            self.publish(self.reading())

    def reading(self) -> DriftReading:
        """The current signals (only those this component has observed)."""
        snap = self.snapshot
        out = DriftReading(requests=max(self.users.filled, self.ranking.filled))
        if self.users.filled:
            unknown, total = self.users.total
            out.shares["unknown_users"] = (unknown / max(total, 1), snap.unknown_user_share)
            out.psi["retrieval_score"] = psi(snap.retrieval_scores.shares, self.retrieval.total)
        if self.items.total[1]:
            unknown, named = self.items.total
            out.shares["unknown_items"] = (unknown / named, snap.unknown_item_share)
        if self.ranking.filled:
            out.psi["ranking_score"] = psi(snap.ranking_scores.shares, self.ranking.total)
            expected = [snap.categories[c] for c in self.categories]
            expected.append(snap.categories.get(OTHER_CATEGORY, 0.0))
            out.psi["category_mix"] = psi(np.array(expected), self.category_mix.total)
        return out


class HealthSettings(BaseSettings):
    """Drift monitoring knobs, overridable by `RECSYS_DRIFT_<NAME>` environment variables."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_DRIFT_", extra="ignore")

    enabled: bool = Field(True, description="Compute drift signals on answered requests.")
    window: int = Field(1000, ge=10, description="Requests in the sliding window.")
    publish_every: int = Field(25, ge=1, description="Requests between two gauge updates.")


Locate = Callable[[str], tuple["Path | None", "float | None"]]


class ModelHealth:
    """A service's view of its model's health: age, and drift against the training snapshot.

    The service calls `on_retrieval` / `on_ranking` once per answered request (and `refresh`
    from its readiness check); `locate(version)` gives the model's directory and creation time
    (looked up once per version); `on_age` and `on_drift` set the service's gauges. A model
    without a snapshot reports its age from its creation time and no drift.
    """

    def __init__(
        self,
        locate: Locate,
        on_age: Callable[[str, float, float], None],
        on_drift: Callable[[str, DriftReading], None],
        settings: HealthSettings | None = None,
    ) -> None:
        self.locate = locate
        self.on_age = on_age
        self.on_drift = on_drift
        self.settings = settings or HealthSettings()
        self.version = ""
        self.monitor: DriftMonitor | None = None
        self.data_end: float | None = None
        self._age_at = 0.0

    def refresh(self, version: str) -> DriftMonitor | None:
        """Switch to `version` when it changed (loading its snapshot); update the age gauge at
        most once a second."""
        if version != self.version:
            model_dir, created = self.locate(version)
            snapshot = TrainingSnapshot.load(model_dir) if model_dir else None
            self.version = version
            self.data_end = snapshot.data_end if snapshot else created
            self.monitor = None
            if snapshot is not None and self.settings.enabled:
                self.monitor = DriftMonitor(
                    snapshot,
                    self.settings.window,
                    self.settings.publish_every,
                    lambda reading: self.on_drift(self.version, reading),
                )
            self._age_at = 0.0
        now = time.time()
        if self.data_end is not None and now - self._age_at >= 1.0:
            self._age_at = now
            self.on_age(self.version, self.data_end, max(0.0, now - self.data_end))
        return self.monitor

    @property
    def top_k(self) -> int:
        """How many top-ranked items make the category mix (the snapshot's)."""
        return self.monitor.snapshot.top_k if self.monitor is not None else 10

    def on_retrieval(
        self,
        version: str,
        known_user: bool,
        scores: Sequence[float],
        named_items: int = 0,
        unknown_items: int = 0,
    ) -> None:
        """One retrieval answer: was the user known, the candidates' scores, and how many of
        the items the request named (exclusions) the model does not know."""
        monitor = self.refresh(version)
        if monitor is not None:
            monitor.observe_retrieval(known_user, scores, unknown_items, named_items)

    def on_ranking(self, version: str, scores: Sequence[float], top: Sequence[str]) -> None:
        """One ranking answer: the scores of the items it ranked and the categories of its
        first `top_k`, best first."""
        monitor = self.refresh(version)
        if monitor is not None:
            monitor.observe_ranking(scores, top)
