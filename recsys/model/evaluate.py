"""Offline evaluation: baselines, each candidate source alone, the fused retrieval, the
two-stage model and the served pipeline (the ranker or the source order that won its place,
`recsys.model.ordering`), overall and per slice, with candidate recall per source and merged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.model.data import schema
from recsys.model.metrics import evaluate_lists, mean_recall
from recsys.model.ordering import RANKER
from recsys.model.ranking import Ranker, candidate_features
from recsys.model.retrieval import Candidates, RetrievalModel
from recsys.model.sources import SOURCE_ANN, SOURCE_ITEM, SOURCE_POPULAR

# Every evaluated model. `popularity` is the served popular list (cold users, fallbacks);
# `ann` and `item_item` are one source alone (the popular list where it has nothing for a
# user, as served); `retrieval` is the fused candidate list in its own order; `two_stage` is
# the ranker's order of it; `served` is what the Ranking service answers (the ranker's order,
# or the source order chosen on validation when the ranker lost there).
MODELS = (
    "popularity_all_time",
    "popularity",
    "ann",
    "item_item",
    "retrieval",
    "two_stage",
    "served",
)
LABELS = {
    "popularity_all_time": "all-time popularity (baseline)",
    "popularity": "popularity (served list)",
    "ann": "ALS + ScaNN alone",
    "item_item": "item-item alone",
    "retrieval": "retrieval only (merged sources)",
    "two_stage": "two-stage (+ XGBoost ranker)",
    "served": "served pipeline",
}
_SOURCE_MODELS = {"ann": SOURCE_ANN, "item_item": SOURCE_ITEM, "popularity": SOURCE_POPULAR}


@dataclass
class EvaluationSet:
    """Users to evaluate and, for each, the items they turned to in the held-out window."""

    user_ids: list[str]
    relevant: list[set[int]]


def held_out_relevance(
    held_out: pd.DataFrame,
    retrieval: RetrievalModel,
    max_users: int | None = None,
    seed: int = 0,
    exclude_seen: bool = True,
) -> EvaluationSet:
    """Relevant sets from a held-out window: items a user met there and had not met before.

    Items already in a user's history are removed (they are excluded at recommendation time).
    Users left with nothing relevant are not evaluated. A seeded sample caps the user count.
    """
    item_idx = retrieval.items.lookup(held_out[schema.ITEM_ID])
    frame = pd.DataFrame({"user": held_out[schema.USER_ID].to_numpy(), "item": item_idx})
    frame = frame[frame["item"] >= 0].drop_duplicates()
    grouped = frame.groupby("user", sort=True)["item"].agg(lambda s: set(s.tolist()))
    users, relevant = [], []
    for user_id, items in grouped.items():
        if exclude_seen:
            items = items - set(retrieval.seen_items(retrieval.users.index_of(user_id)).tolist())
        if items:
            users.append(str(user_id))
            relevant.append(items)
    if max_users is not None and len(users) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        users = [users[i] for i in keep]
        relevant = [relevant[i] for i in keep]
    return EvaluationSet(users, relevant)


def rank_candidates(
    ranker: Ranker, user_indices: Sequence[int], candidates: Sequence[Candidates]
) -> dict[str, list[np.ndarray]]:
    """Candidate item indices re-ordered by the ranker (`two_stage`) and in the served order
    (`served`: the same unless a source order won), with one prediction for all users."""
    if not candidates:
        return {"two_stage": [], "served": []}
    features = np.vstack(
        [
            candidate_features(ranker.tables, u, c)
            for u, c in zip(user_indices, candidates, strict=True)
        ]
    )
    by_ranker = ranker.predict(features)
    served = by_ranker if ranker.serving_order == RANKER else ranker.serve_scores(features)
    ordered: dict[str, list[np.ndarray]] = {"two_stage": [], "served": []}
    start = 0
    for cand in candidates:
        for name, scores in (("two_stage", by_ranker), ("served", served)):
            part = scores[start : start + len(cand)]
            ordered[name].append(cand.item_idx[np.argsort(-part, kind="stable")])
        start += len(cand)
    return ordered


def recommend_all(
    retrieval: RetrievalModel,
    ranker: Ranker,
    user_ids: Sequence[str],
    k: int,
    num_candidates: int,
) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]]]:
    """Top-k lists from every model for every user (seen items excluded), and each source's
    candidate list (and the fused one, `retrieval`) at `num_candidates`."""
    user_indices = [retrieval.users.index_of(u) for u in user_ids]
    all_time = np.bincount(retrieval.seen.indices, minlength=len(retrieval.items))
    all_time_order = np.argsort(-all_time, kind="stable")
    lists: dict[str, list[np.ndarray]] = {name: [] for name in MODELS}
    pools: dict[str, list[np.ndarray]] = {name: [] for name in (*_SOURCE_MODELS, "retrieval")}
    fused: list[Candidates] = []
    for user_idx in user_indices:
        blocked = retrieval.blocked_items(user_idx, None, True)
        found = retrieval.source_lists(user_idx, num_candidates, blocked)
        candidates = retrieval.fuse(user_idx, found, num_candidates)
        fused.append(candidates)
        popular = found.lists[SOURCE_POPULAR]
        for model, source in _SOURCE_MODELS.items():
            own = found.lists.get(source)
            pool = own if own is not None and len(own) else popular
            pools[model].append(pool)
            lists[model].append(pool[:k])
        pools["retrieval"].append(candidates.item_idx)
        lists["retrieval"].append(candidates.item_idx[:k])
        head = all_time_order[: k + len(blocked)]
        lists["popularity_all_time"].append(head[~np.isin(head, blocked)][:k])
    ranker_users = [ranker.users.index_of(u) for u in user_ids]
    for name, orders in rank_candidates(ranker, ranker_users, fused).items():
        lists[name] = [order[:k] for order in orders]
    return lists, pools


def evaluate_models(
    retrieval: RetrievalModel,
    ranker: Ranker,
    evaluation: EvaluationSet,
    ks: Sequence[int] = (5, 10, 20),
    num_candidates: int = 200,
) -> dict:
    """Metrics of the three models overall and on cold/warm and light/heavy user slices."""
    max_k = max(ks)
    lists, pools = recommend_all(retrieval, ranker, evaluation.user_ids, max_k, num_candidates)
    to_lists = {name: [x.tolist() for x in value] for name, value in lists.items()}
    n_items = len(retrieval.items)
    user_indices = np.array([retrieval.users.index_of(u) for u in evaluation.user_ids])
    history = np.where(user_indices >= 0, retrieval.history_counts[np.maximum(user_indices, 0)], 0)
    cold = np.array([retrieval.is_cold(u) for u in user_indices], dtype=bool)
    warm_history = history[~cold]
    heavy_cut = float(np.median(warm_history)) if len(warm_history) else 0.0
    slices = {
        "cold": cold,
        "warm": ~cold,
        "light": ~cold & (history <= heavy_cut),
        "heavy": ~cold & (history > heavy_cut),
    }

    def score(mask: np.ndarray | None) -> dict[str, dict[str, float]]:
        pick = np.arange(len(evaluation.user_ids)) if mask is None else np.flatnonzero(mask)
        relevant = [evaluation.relevant[i] for i in pick]
        return {
            name: evaluate_lists([ranked[i] for i in pick], relevant, ks, n_items)
            for name, ranked in to_lists.items()
        }

    source_recall = {
        name: round(mean_recall(pool, evaluation.relevant), 5) for name, pool in pools.items()
    }
    selection = ranker.info.get("selection")
    return {
        "ks": list(ks),
        "users": len(evaluation.user_ids),
        **({"selection": selection} if selection else {}),
        "num_candidates": num_candidates,
        f"candidate_recall@{num_candidates}": source_recall["retrieval"],
        "candidate_recall_by_source": source_recall,
        "models": score(None),
        "slices": {
            name: {"users": int(mask.sum()), "models": score(mask)}
            for name, mask in slices.items()
            if mask.any()
        },
        "slice_definitions": {
            "cold": f"unknown or at most {retrieval.config.cold_user_max_events} events of history",
            "warm": "more history than cold",
            "light": f"warm with at most {heavy_cut:g} events (median of warm users)",
            "heavy": f"warm with more than {heavy_cut:g} events",
        },
    }


def promotion_decision(metrics: dict, metric: str = "ndcg@10") -> tuple[bool, list[str]]:
    """Promotable only when the served pipeline beats popularity and is not below the merged
    retrieval on the test window, and its order is not below its best single source on the
    validation lists that chose it (`metrics["selection"]`, when the ranker recorded one)."""
    models = metrics["models"]
    ours = models["served"][metric]
    reasons = []
    popular = models["popularity"][metric]
    if ours <= popular:
        reasons.append(
            f"served pipeline {metric} {ours:.4f} does not beat popularity {popular:.4f}"
        )
    merged = models["retrieval"][metric]
    if ours < merged:
        reasons.append(f"served pipeline {metric} {ours:.4f} is below retrieval {merged:.4f}")
    selection = metrics.get("selection")
    if selection:
        served, best = selection["served"], selection["best_single_source"]
        validation = selection["ndcg@10"]
        if validation[served] < validation[best]:
            reasons.append(
                f"served order ({served}) validation NDCG@10 {validation[served]:.4f} is below "
                f"its best single source ({best}) {validation[best]:.4f}"
            )
    return not reasons, reasons
