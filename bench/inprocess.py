"""Section 1: the pipeline in process, no HTTP: latency per stage and in total (the floor).

Three views of the same requests:
- stages: `RetrievalModel.retrieve_columns` -> `rank_columns` -> top k (category cap), the exact
  functions the services and the KServe peer call, timed one by one;
- pipeline: the gateway's `RecommendPipeline.recommend` with in-process stage calls (what the
  single-process gateway runs, minus HTTP): the cost of orchestration (timeouts, breakers, spans);
- kernels: the numeric core alone (ANN search + trending fill on indices, feature assembly,
  XGBoost prediction), showing what the dict-shaped stage interfaces add on top.
A cProfile of the stages path lists where the time goes, function by function.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import time
from collections.abc import Sequence
from pathlib import Path

from bench.stats import summarize_ms
from recsys.model.ranking import candidate_features, rank_columns
from recsys.serving.reranking import top_k_items
from recsys.serving.settings import ServingSettings

WARMUP_REQUESTS = 50
PROFILE_TOP = 15


def top_k(candidates: dict[str, list], ranked: dict[str, list], k: int, cap: int) -> list[dict]:
    """The gateway's last step: the ranker's order, category cap, top k (same output shape)."""
    return top_k_items(candidates, ranked["order"], ranked["scores"], k, cap)


def recommend_in_process(
    retrieval, ranker, user_id: str, k: int, num_candidates: int, category_cap: int
) -> list[dict]:
    """retrieve -> rank -> top k with no serving framework: the floor every form is held to."""
    candidates = retrieval.retrieve_columns(user_id, num_candidates)
    ranked = rank_columns(ranker, user_id, candidates)
    return top_k(candidates, ranked, k, category_cap)


def _requests(users: Sequence[str], count: int) -> list[str]:
    return [users[i % len(users)] for i in range(count)]


def time_stages(retrieval, ranker, users, k, num_candidates, category_cap) -> dict:
    """Per-request milliseconds of each stage and of the whole, stage functions called directly."""
    timings: dict[str, list[float]] = {"retrieve": [], "rank": [], "top_k": [], "total": []}
    clock = time.perf_counter
    for user_id in users:
        t0 = clock()
        candidates = retrieval.retrieve_columns(user_id, num_candidates)
        t1 = clock()
        ranked = rank_columns(ranker, user_id, candidates)
        t2 = clock()
        top_k(candidates, ranked, k, category_cap)
        t3 = clock()
        timings["retrieve"].append((t1 - t0) * 1000)
        timings["rank"].append((t2 - t1) * 1000)
        timings["top_k"].append((t3 - t2) * 1000)
        timings["total"].append((t3 - t0) * 1000)
    return {name: summarize_ms(values) for name, values in timings.items()}


def time_kernels(retrieval, ranker, users, num_candidates) -> dict:
    """Milliseconds of the numeric core: indices in, scores out, no dicts or ids."""
    timings: dict[str, list[float]] = {"ann_and_fill": [], "features": [], "xgboost": []}
    clock = time.perf_counter
    for user_id in users:
        user_idx = retrieval.users.index_of(user_id)
        t0 = clock()
        candidates = retrieval.retrieve_indices(user_idx, num_candidates)
        t1 = clock()
        features = candidate_features(ranker.tables, ranker.users.index_of(user_id), candidates)
        t2 = clock()
        ranker.predict(features)
        t3 = clock()
        timings["ann_and_fill"].append((t1 - t0) * 1000)
        timings["features"].append((t2 - t1) * 1000)
        timings["xgboost"].append((t3 - t2) * 1000)
    return {name: summarize_ms(values) for name, values in timings.items()}


def time_gateway_pipeline(retrieval, ranker, users, k, num_candidates, category_cap) -> dict:
    """Milliseconds of `RecommendPipeline.recommend` with in-process stages (no HTTP)."""
    from recsys.serving.pipeline import RecommendPipeline

    fallbacks: list[str] = []
    settings = ServingSettings(num_candidates=num_candidates, category_cap=category_cap)

    class InProcessStages:
        """Retrieval and ranking for the pipeline (`RetrievalStage`, `RankingStage`): direct
        calls, no HTTP. Timed with the remote stages' timeout wrapper, as this figure always
        was (the gateway's in-process stages skip it)."""

        in_process = False

        async def retrieve(self, user_id: str, count: int, exclude_items: list[str]) -> dict:
            candidates = retrieval.retrieve_columns(user_id, count, exclude_items)
            return {"candidates": candidates, "cold_start": False, "model_version": "b"}

        async def similar_items(self, item_id: str, count: int) -> dict:
            raise NotImplementedError

        async def rank(self, user_id: str, candidates: dict[str, list]) -> dict:
            return {**rank_columns(ranker, user_id, candidates), "model_version": "b"}

    class Popular:
        version = "b"

        def get(self) -> list[dict]:
            return retrieval.popular_list(500)

    stages = InProcessStages()
    pipeline = RecommendPipeline(
        settings=settings,
        retrieval=stages,
        ranking=stages,
        popular=Popular(),
        on_fallback=lambda stage, reason, exc: fallbacks.append(f"{stage}:{reason}:{exc!r}"),
    )

    async def run() -> list[float]:
        samples = []
        for user_id in users:
            start = time.perf_counter()
            await pipeline.recommend(user_id, k, [])
            samples.append((time.perf_counter() - start) * 1000)
        return samples

    samples = asyncio.run(run())
    if fallbacks:
        raise RuntimeError(f"in-process pipeline fell back: {fallbacks[:3]}")
    return summarize_ms(samples)


def profile_stages(retrieval, ranker, users, k, num_candidates, category_cap) -> list[dict]:
    """The functions taking the most own time over the stages path (cProfile, per request)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for user_id in users:
        recommend_in_process(retrieval, ranker, user_id, k, num_candidates, category_cap)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        rows.append(
            {
                "function": f"{name} ({Path(filename).name}:{line})",
                "calls_per_request": round(calls / len(users), 2),
                "own_ms_per_request": round(own * 1000 / len(users), 4),
                "cumulative_ms_per_request": round(cumulative * 1000 / len(users), 4),
            }
        )
    rows.sort(key=lambda row: row["own_ms_per_request"], reverse=True)
    return rows[:PROFILE_TOP]


def run_inprocess(
    retrieval,
    ranker,
    users: Sequence[str],
    requests: int,
    k: int = 10,
    num_candidates: int = 200,
    category_cap: int = 3,
) -> dict:
    """Section 1's figures for `requests` requests cycling through `users`."""
    warm = _requests(users, WARMUP_REQUESTS)
    for user_id in warm:
        recommend_in_process(retrieval, ranker, user_id, k, num_candidates, category_cap)
    sample = _requests(users, requests)
    result = {
        "requests": requests,
        "k": k,
        "num_candidates": num_candidates,
        "category_cap": category_cap,
        "stages_ms": time_stages(retrieval, ranker, sample, k, num_candidates, category_cap),
        "gateway_pipeline_ms": time_gateway_pipeline(
            retrieval, ranker, sample, k, num_candidates, category_cap
        ),
        "kernels_ms": time_kernels(retrieval, ranker, sample, num_candidates),
    }
    profiled = sample[: max(50, requests // 4)]
    result["profile_top"] = profile_stages(
        retrieval, ranker, profiled, k, num_candidates, category_cap
    )
    result["profile_requests"] = len(profiled)
    return result
