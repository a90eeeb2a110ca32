"""Seeded synthetic interaction logs with the structure real logs have.

Users and items live in a latent space built around categories. Popularity follows a power
law, items and users keep arriving during the span, fresh items trend for a few weeks, and every
user's taste drifts toward a second category mix over time. Each event picks a handful of
candidate items (from the user's categories, the global popularity curve or the fresh items)
and the user takes the one with the best affinity plus Gumbel noise, which is a softmax choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.data import schema

_DAY_S = 86_400
_CHUNK = 100_000


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of the generated data set."""

    n_users: int = 20_000
    n_items: int = 50_000
    n_events: int = 1_000_000
    n_categories: int = 24
    latent_dim: int = 16
    days: int = 120
    new_item_share: float = 0.3
    new_user_share: float = 0.2
    popularity_exponent: float = 1.0
    drift: float = 0.6
    fresh_window_days: int = 21
    candidates_per_event: int = 16
    temperature: float = 0.15
    seed: int = 42
    start: str = "2026-01-01"

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_events", "n_categories", "latent_dim", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("new_item_share", "new_user_share", "drift"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")


# A few seconds of data for rehearsals and tests (600 users, 1,500 items, 30,000 events).
TINY_SYNTH = SynthConfig(n_users=600, n_items=1500, n_events=30_000, days=60, seed=7)


@dataclass
class SyntheticData:
    """Generated interactions and catalog, plus the hidden truth used to build them."""

    interactions: pd.DataFrame
    catalog: pd.DataFrame
    item_vectors: np.ndarray
    item_categories: np.ndarray


def _segment_sample(
    rng: np.random.Generator, cumulative: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int
) -> np.ndarray:
    """Draw n positions per row from [lo, hi) of a cumulative weight array (weighted by it)."""
    base = np.where(lo > 0, cumulative[np.maximum(lo - 1, 0)], 0.0)
    top = cumulative[np.maximum(hi - 1, 0)]
    targets = base[:, None] + rng.random((len(lo), n)) * (top - base)[:, None]
    picks = np.searchsorted(cumulative, targets, side="right")
    return np.clip(picks, lo[:, None], np.maximum(hi - 1, lo)[:, None])


def generate(config: SynthConfig | None = None) -> SyntheticData:
    """Generate a data set; the same config (seed included) gives the same rows."""
    cfg = config or SynthConfig()
    rng = np.random.default_rng(cfg.seed)
    span_s = cfg.days * _DAY_S
    n_cat, dim = cfg.n_categories, cfg.latent_dim

    centroids = rng.normal(size=(n_cat, dim))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    category_share = rng.dirichlet(np.full(n_cat, 2.0))
    item_cat = rng.choice(n_cat, size=cfg.n_items, p=category_share)
    item_vec = centroids[item_cat] + rng.normal(scale=0.6 / np.sqrt(dim), size=(cfg.n_items, dim))
    item_vec = (item_vec / np.linalg.norm(item_vec, axis=1, keepdims=True)).astype(np.float32)
    popularity = (rng.permutation(cfg.n_items) + 1.0) ** -cfg.popularity_exponent
    is_new_item = rng.random(cfg.n_items) < cfg.new_item_share
    item_created = np.where(
        is_new_item,
        rng.uniform(0, span_s, cfg.n_items),
        -rng.uniform(0, 365 * _DAY_S, cfg.n_items),
    )

    # Taste: a category mix now and the mix it drifts toward by the end of the span.
    taste_start = rng.dirichlet(np.full(n_cat, 0.15), size=cfg.n_users)
    taste_end = rng.dirichlet(np.full(n_cat, 0.15), size=cfg.n_users)
    personal = rng.normal(scale=0.5 / np.sqrt(dim), size=(cfg.n_users, dim))
    user_vec_start = taste_start @ centroids + personal
    user_vec_end = taste_end @ centroids + personal
    is_new_user = rng.random(cfg.n_users) < cfg.new_user_share
    user_arrival = np.where(is_new_user, rng.uniform(0, 0.95 * span_s, cfg.n_users), 0.0)
    activity = rng.pareto(1.2, cfg.n_users) + 1.0

    # Oversample a little: events whose candidates did not exist yet are discarded.
    n_draw = int(cfg.n_events * 1.05) + 16
    events_per_user = rng.multinomial(n_draw, activity / activity.sum())
    users = np.repeat(np.arange(cfg.n_users), events_per_user)
    times = user_arrival[users] + rng.random(n_draw) * (span_s - user_arrival[users])
    order = np.argsort(times, kind="stable")
    users, times = users[order], times[order]

    by_category = np.argsort(item_cat, kind="stable")
    cat_cum = np.cumsum(popularity[by_category])
    cat_bounds = np.searchsorted(item_cat[by_category], np.arange(n_cat + 1))
    by_created = np.argsort(item_created, kind="stable")
    created_sorted = item_created[by_created]
    fresh_cum = np.cumsum(popularity[by_created])
    global_cat_p = np.bincount(item_cat, weights=popularity, minlength=n_cat)
    global_cat_p /= global_cat_p.sum()
    taste_start_cum = np.cumsum(taste_start, axis=1)
    taste_end_cum = np.cumsum(taste_end, axis=1)

    chosen = np.empty(n_draw, dtype=np.int64)
    affinity = np.empty(n_draw, dtype=np.float32)
    n_cand = cfg.candidates_per_event
    for lo_e in range(0, n_draw, _CHUNK):
        u = users[lo_e : lo_e + _CHUNK]
        t = times[lo_e : lo_e + _CHUNK]
        n = len(u)
        progress = (t / span_s)[:, None] * cfg.drift
        drifted = rng.random(n) < progress[:, 0]
        cum = np.where(drifted[:, None], taste_end_cum[u], taste_start_cum[u])
        own_cat = (cum < rng.random(n)[:, None] * cum[:, -1:]).sum(axis=1)
        random_cat = rng.choice(n_cat, size=n, p=global_cat_p)
        source = rng.random(n)
        cat = np.where(source < 0.7, own_cat, random_cat)
        cand = by_category[
            _segment_sample(rng, cat_cum, cat_bounds[cat], cat_bounds[cat + 1], n_cand)
        ]
        fresh_lo = np.searchsorted(created_sorted, t - cfg.fresh_window_days * _DAY_S)
        fresh_hi = np.searchsorted(created_sorted, t, side="right")
        use_fresh = (source >= 0.8) & (fresh_hi > fresh_lo)
        if use_fresh.any():
            fresh = by_created[
                _segment_sample(rng, fresh_cum, fresh_lo[use_fresh], fresh_hi[use_fresh], n_cand)
            ]
            cand[use_fresh] = fresh
        user_now = (1 - progress) * user_vec_start[u] + progress * user_vec_end[u]
        scores = np.einsum("nd,ncd->nc", user_now.astype(np.float32), item_vec[cand])
        utility = scores / cfg.temperature + rng.gumbel(size=scores.shape)
        utility[item_created[cand] > t[:, None]] = -np.inf
        best = utility.argmax(axis=1)
        rows = np.arange(n)
        pick = cand[rows, best]
        chosen[lo_e : lo_e + n] = np.where(np.isfinite(utility[rows, best]), pick, -1)
        affinity[lo_e : lo_e + n] = scores[rows, best]

    valid = np.flatnonzero(chosen >= 0)[: cfg.n_events]
    users, times, chosen, affinity = users[valid], times[valid], chosen[valid], affinity[valid]
    strength = 1.0 / (1.0 + np.exp(-(affinity - affinity.mean()) / (affinity.std() + 1e-9)))
    draw = rng.random(len(valid))
    event = np.full(len(valid), "view", dtype=object)
    event[draw < 0.12 + 0.2 * strength] = "click"
    event[draw < 0.03 + 0.06 * strength] = "add_to_cart"
    event[draw < 0.01 + 0.04 * strength] = "purchase"

    start = pd.Timestamp(cfg.start, tz="UTC")
    interactions = pd.DataFrame(
        {
            schema.USER_ID: pd.Series(users).map("u{}".format),
            schema.ITEM_ID: pd.Series(chosen).map("i{}".format),
            schema.TIMESTAMP: start + pd.to_timedelta(times.round(), unit="s"),
            schema.EVENT: event,
        }
    )
    interactions[schema.WEIGHT] = (
        interactions[schema.EVENT].map(schema.EVENT_WEIGHTS).astype(np.float32)
    )
    catalog = pd.DataFrame(
        {
            schema.ITEM_ID: pd.Series(np.arange(cfg.n_items)).map("i{}".format),
            schema.CATEGORY: pd.Series(item_cat).map("c{:02d}".format),
            schema.CREATED_AT: start + pd.to_timedelta(item_created.round(), unit="s"),
        }
    )
    return SyntheticData(interactions, catalog, item_vec, item_cat)
