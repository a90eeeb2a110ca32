"""The gateway's pipeline: retrieve -> rank -> diversify -> top k, with timeouts, fallbacks and
circuit breakers. Framework-free: the BentoML gateway (`services.recommender`) hands it one
object per stage (`RetrievalStage`, `RankingStage`), in its process or over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NotRequired, Protocol, TypedDict, TypeVar

from recsys.model.ordering import RANKER
from recsys.serving.reranking import top_k_items
from recsys.serving.settings import ServingSettings
from recsys.serving.stage_failures import fallback_reason
from recsys.tracing import SpanKind, hash_id, mark_error, set_attributes, tracer

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitOpenError(RuntimeError):
    """A stage call was skipped because its circuit breaker is open."""


@dataclass
class CircuitBreaker:
    """Stops calling a failing dependency, then lets single probes through to find recovery.

    After `failure_threshold` consecutive failures the circuit opens: calls fail at once (the
    caller falls back) for `reset_timeout_s`. Then it is half-open: one call at a time probes
    the dependency; a success closes the circuit, a failure opens it again.
    """

    failure_threshold: int = 5
    reset_timeout_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    on_change: Callable[[str], None] | None = field(default=None, repr=False)

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_change:
                self.on_change(state)

    def allow(self) -> bool:
        """Whether a call may go out now (and, when half-open, claim the single probe)."""
        if self.state == OPEN and self.clock() - self.opened_at >= self.reset_timeout_s:
            self._set(HALF_OPEN)
            self.probing = False
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def record_success(self) -> None:
        if self.state == OPEN:  # a call let through before the opening: not a probe
            return
        self.failures = 0
        self.probing = False
        self._set(CLOSED)

    def record_failure(self) -> None:
        if self.state == OPEN:  # a late failure of a call from before the opening
            return
        self.failures += 1
        self.probing = False
        if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            self._set(OPEN)


# ---- the stages as the pipeline sees them ----------------------------------------------------
# Declared contracts: what each stage call returns. Plain dicts at run time (orjson bodies from a
# remote stage, the stage's own dicts in process); the TypedDicts only name their keys.


class CandidateColumns(TypedDict):
    """Retrieved candidates as columns, one entry per candidate in retrieval order
    (`RetrievalModel.retrieve_columns`); a ranker may read more columns than these."""

    item_ids: list[str]
    scores: list[float]
    sources: list[str]
    categories: list[str]


class Retrieved(TypedDict):
    candidates: CandidateColumns
    cold_start: bool
    model_version: str


class Ranked(TypedDict):
    """The ranker's verdict (`recsys.model.ranking.rank_columns`): positions in the candidates,
    best first."""

    order: list[int]
    scores: list[float]
    model_version: str
    order_by: NotRequired[str]


class Similar(TypedDict):
    items: list[dict]  # {"item_id", "score", "category"}
    source: str  # "ann", or "popular" for an unknown item
    model_version: str


class RetrievalStage(Protocol):
    """Retrieval as the pipeline calls it. Implemented by `services.retrieval.LocalRetrieval`
    (in this process: `Retrieval.answer_*` called directly) and `services.retrieval.
    RetrievalClient` (over HTTP: `POST /retrieve`, micro-batched as `/retrieve_batch`)."""

    in_process: bool

    async def retrieve(self, user_id: str, k: int, exclude_items: list[str]) -> Retrieved: ...

    async def similar_items(self, item_id: str, k: int) -> Similar: ...


class RankingStage(Protocol):
    """Ranking as the pipeline calls it. Implemented by `services.ranking.LocalRanking` (in this
    process) and `services.ranking.RankingClient` (over HTTP: `POST /rank`)."""

    in_process: bool

    async def rank(self, user_id: str, candidates: CandidateColumns) -> Ranked: ...


class PopularityList(Protocol):
    """The trending list shipped with the retrieval model (`serving.BackgroundModel`): the
    candidates when retrieval fails."""

    version: str

    def get(self) -> list[dict]: ...


FallbackHook = Callable[[str, str, BaseException], None]
Answer = TypeVar("Answer")


def _no_hook(stage: str, reason: str, exc: BaseException) -> None:
    return None


@dataclass
class RecommendPipeline:
    """retrieve -> rank -> diversify -> top k over two stages, wherever they run."""

    settings: ServingSettings
    retrieval: RetrievalStage
    ranking: RankingStage
    popular: PopularityList
    on_fallback: FallbackHook = _no_hook  # counts and logs each fallback (metrics)
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    def breaker(self, stage: str) -> CircuitBreaker:
        if stage not in self.breakers:
            self.breakers[stage] = CircuitBreaker(
                self.settings.breaker_failures, self.settings.breaker_reset_s
            )
        return self.breakers[stage]

    async def call(
        self,
        stage: str,
        in_process: bool,
        timeout: float,
        request: Callable[..., Awaitable[Answer]],
        *arguments: Any,
    ) -> Answer:
        """`await request(*arguments)`, one stage call: breaker check, span, timeout; failures
        mark span and breaker. A stage in this process is called with no timeout (its work is
        synchronous and cannot be interrupted) and no retry (no connection to lose)."""
        breaker = self.breaker(stage)
        kind = SpanKind.INTERNAL if in_process else SpanKind.CLIENT
        span_name = f"{stage.capitalize()}.{request.__name__}"
        with tracer.start_as_current_span(span_name, kind=kind) as span:
            if not breaker.allow():
                exc = CircuitOpenError(f"{stage} circuit is open")
                mark_error(span, exc)
                raise exc

            async def attempt() -> Answer:
                try:
                    return await request(*arguments)
                except Exception as exc:
                    if fallback_reason(exc) != "unavailable":
                        raise
                    # The pooled connection was closed under us (the stage's keep-alive ended,
                    # or the client renewed its session): once more, on a fresh connection.
                    return await request(*arguments)

            try:
                if in_process:
                    result = await request(*arguments)
                else:
                    async with asyncio.timeout(timeout):  # no task per call, as wait_for makes
                        result = await attempt()
            except Exception as exc:
                breaker.record_failure()
                mark_error(span, exc)
                raise
            breaker.record_success()
            return result

    def _fallback(self, stage: str, exc: BaseException, degraded: list[dict]) -> None:
        reason = "circuit_open" if isinstance(exc, CircuitOpenError) else fallback_reason(exc)
        self.on_fallback(stage, reason, exc)
        degraded.append({"stage": stage, "reason": reason})

    def popular_candidates(self, exclude: set[str], limit: int) -> CandidateColumns:
        """The first `limit` trending items not in `exclude`, as candidate columns."""
        rows = [item for item in self.popular.get() if item["item_id"] not in exclude][:limit]
        return {
            "item_ids": [item["item_id"] for item in rows],
            "scores": [item["score"] for item in rows],
            "sources": ["popular"] * len(rows),
            "categories": [item.get("category", "") for item in rows],
        }

    async def recommend(self, user_id: str, k: int, exclude_items: list[str]) -> dict:
        """retrieve -> rank -> cap categories -> top k; each stage falls back on failure."""
        settings = self.settings
        degraded: list[dict] = []
        versions: dict[str, str] = {}
        try:
            retrieved = await self.call(
                "retrieval",
                self.retrieval.in_process,
                settings.retrieval_timeout_s,
                self.retrieval.retrieve,
                user_id,
                settings.num_candidates,
                exclude_items,
            )
            candidates = retrieved["candidates"]
            versions["retrieval"] = retrieved["model_version"]
        except Exception as exc:
            self._fallback("retrieval", exc, degraded)
            with tracer.start_as_current_span("popularity_fallback") as span:
                candidates = self.popular_candidates(set(exclude_items), settings.num_candidates)
                set_attributes(span, candidates=len(candidates["item_ids"]))
            versions["popularity"] = self.popular.version
        try:
            ranked = await self.call(
                "ranking",
                self.ranking.in_process,
                settings.ranking_timeout_s,
                self.ranking.rank,
                user_id,
                candidates,
            )
            with tracer.start_as_current_span("rerank") as span:
                items = top_k_items(
                    candidates, ranked["order"], ranked["scores"], k, settings.category_cap
                )
                set_attributes(span, category_cap=settings.category_cap, returned=len(items))
            versions["ranking"] = ranked["model_version"]
            if ranked.get("order_by", RANKER) != RANKER:
                versions["ranking_order"] = f"{ranked['order_by']} (ranker off)"
        except Exception as exc:
            self._fallback("ranking", exc, degraded)
            order = range(len(candidates["item_ids"]))
            items = top_k_items(candidates, order, candidates["scores"], k, settings.category_cap)
        set_attributes(
            user_hash=lambda: hash_id(user_id),
            k=k,
            candidates=len(candidates["item_ids"]),
            degraded=bool(degraded),
            fallback_reason=",".join(f"{d['stage']}:{d['reason']}" for d in degraded) or None,
            **{f"model_version.{stage}": version for stage, version in versions.items()},
        )
        return {
            "user_id": user_id,
            "items": items,
            "model_versions": versions,
            "degraded": bool(degraded),
            "degraded_reasons": degraded,
            "track": settings.track,
        }

    async def recommend_batch(self, user_ids: list[str], k: int, exclude_items: list[str]) -> dict:
        """`recommend` for each user, `batch_slice_users` at a time: the users of a slice share
        stage batches, and a request arriving meanwhile waits behind one slice's computation,
        not the whole batch's (the stages' work is CPU-bound and holds the event loop)."""
        size, results = self.settings.batch_slice_users, []
        for start in range(0, len(user_ids), size):
            users = user_ids[start : start + size]
            results += await asyncio.gather(*(self.recommend(u, k, exclude_items) for u in users))
        return {"results": results}

    async def similar_items(self, item_id: str, k: int) -> dict:
        """Similar items from retrieval; the trending list when retrieval fails."""
        degraded: list[dict] = []
        try:
            found = await self.call(
                "retrieval",
                self.retrieval.in_process,
                self.settings.retrieval_timeout_s,
                self.retrieval.similar_items,
                item_id,
                k,
            )
            items = [{key: v for key, v in i.items() if key != "source"} for i in found["items"]]
            versions, source = {"retrieval": found["model_version"]}, found["source"]
        except Exception as exc:
            self._fallback("retrieval", exc, degraded)
            popular = self.popular_candidates({item_id}, k)
            items = [
                {"item_id": item, "score": score, "category": category}
                for item, score, category in zip(
                    popular["item_ids"], popular["scores"], popular["categories"], strict=True
                )
            ]
            versions, source = {"popularity": self.popular.version}, "popular"
        return {
            "item_id": item_id,
            "items": items,
            "source": source,
            "model_versions": versions,
            "degraded": bool(degraded),
            "degraded_reasons": degraded,
            "track": self.settings.track,
        }
