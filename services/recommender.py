"""Recommender gateway: retrieve -> rank -> diversify -> top k, with timeouts and fallbacks.

Locally one `bentoml serve` runs all three services. In Kubernetes each runs in its own pod from
the same image and the gateway reaches the others through `--depends Name=url`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated

import bentoml
from pydantic import Field

from recsys.artifacts import RETRIEVAL_MODEL, model_path
from recsys.retrieval import POPULAR_FILE
from recsys.serving import (
    BackgroundModel,
    ItemId,
    ModelNotReady,
    UserId,
    cap_categories,
    fallback_reason,
    inject_faults,
)
from recsys.tracing import SpanKind, hash_id, mark_error, set_attributes, tracer
from services.common import (
    FALLBACKS,
    MODEL_INFO,
    SETTINGS,
    RequestSizeLimit,
    bad_request,
    install_tracing,
    service_config,
)
from services.ranking import Ranking
from services.retrieval import Retrieval

logger = logging.getLogger("recsys.gateway")
K = Annotated[int, Field(ge=1, le=SETTINGS.max_k, description="How many items to return.")]
Exclusions = Annotated[
    list[ItemId],
    Field(max_length=SETTINGS.max_exclude_items, description="Items never to recommend."),
]


def _load_popular():
    """The trending list shipped with the retrieval model: the answer when retrieval is down."""
    path, tag = model_path(SETTINGS.retrieval_model_tag, RETRIEVAL_MODEL)
    return json.loads((path / POPULAR_FILE).read_text()), tag


def _check_popular(popular: list) -> None:
    if not popular:
        raise RuntimeError("the fallback popularity list is empty")


# The gateway stays ready when a stage is down (no runner probe): its fallbacks answer then.
@bentoml.service(name="Recommender", **service_config(runner_probe={"enabled": False}))
class Recommender:
    retrieval = bentoml.depends(Retrieval)
    ranking = bentoml.depends(Ranking)

    def __init__(self) -> None:
        install_tracing()
        self.popular = BackgroundModel("popularity", _load_popular, _check_popular)

    def __is_ready__(self) -> bool:
        if self.popular.ready:
            MODEL_INFO.labels("Recommender", self.popular.version, SETTINGS.track).set(1)
        return self.popular.ready

    def _fallback(self, stage: str, exc: BaseException, degraded: list[dict]) -> None:
        reason = fallback_reason(exc)
        FALLBACKS.labels(stage, reason).inc()
        logger.warning("fallback: %s failed (%s: %s)", stage, reason, type(exc).__name__)
        degraded.append({"stage": stage, "reason": reason})

    def _popular(self, exclude: set[str]) -> list[dict]:
        return [
            {**item, "source": "popular"}
            for item in self.popular.get()
            if item["item_id"] not in exclude
        ]

    async def _call(self, stage: str, request, timeout: float):
        """A dependency call inside a CLIENT span; failures mark the span as an error."""
        with tracer.start_as_current_span(stage, kind=SpanKind.CLIENT) as span:
            try:
                return await asyncio.wait_for(request, timeout)
            except Exception as exc:
                mark_error(span, exc)
                raise

    async def _pipeline(self, user_id: str, k: int, exclude_items: list[str]) -> dict:
        """retrieve -> rank -> cap categories -> top k; each stage falls back on failure."""
        degraded: list[dict] = []
        versions: dict[str, str] = {}
        try:
            retrieved = await self._call(
                "Retrieval.retrieve",
                self.retrieval.to_async.retrieve(
                    user_id=user_id, k=SETTINGS.num_candidates, exclude_items=exclude_items
                ),
                SETTINGS.retrieval_timeout_s,
            )
            candidates = retrieved["candidates"]
            versions["retrieval"] = retrieved["model_version"]
        except Exception as exc:
            self._fallback("retrieval", exc, degraded)
            with tracer.start_as_current_span("popularity_fallback") as span:
                candidates = self._popular(set(exclude_items))[: SETTINGS.num_candidates]
                set_attributes(span, candidates=len(candidates))
            versions["popularity"] = self.popular.version
        try:
            ranked = await self._call(
                "Ranking.rank",
                self.ranking.to_async.rank(user_id=user_id, candidates=candidates),
                SETTINGS.ranking_timeout_s,
            )
            items = [item for item in ranked["items"] if item["score"] is not None]
            versions["ranking"] = ranked["model_version"]
        except Exception as exc:
            self._fallback("ranking", exc, degraded)
            items = candidates
        with tracer.start_as_current_span("rerank") as span:
            top = cap_categories(items, k, SETTINGS.category_cap)
            set_attributes(span, category_cap=SETTINGS.category_cap, returned=len(top))
        set_attributes(
            user_hash=hash_id(user_id),
            k=k,
            candidates=len(candidates),
            degraded=bool(degraded),
            fallback_reason=",".join(f"{d['stage']}:{d['reason']}" for d in degraded) or None,
            **{f"model_version.{stage}": version for stage, version in versions.items()},
        )
        return {
            "items": [
                {"item_id": i["item_id"], "score": i["score"], "category": i.get("category", "")}
                for i in top
            ],
            "model_versions": versions,
            "degraded": bool(degraded),
            "degraded_reasons": degraded,
            "track": SETTINGS.track,
        }

    @bentoml.api
    async def stages(self) -> dict:
        """Readiness of each stage as the gateway sees it (the gateway itself stays ready)."""
        retrieval, ranking = await asyncio.gather(
            self.retrieval.is_ready(2), self.ranking.is_ready(2), return_exceptions=True
        )
        return {
            "retrieval": retrieval is True,
            "ranking": ranking is True,
            "popularity_fallback": self.popular.ready,
        }

    @bentoml.api
    async def recommend(
        self,
        user_id: UserId,
        k: K = 10,
        exclude_items: Exclusions = [],  # noqa: B006
        ctx: bentoml.Context = None,
    ) -> dict:
        """Top-k items for a user; unknown users get cold-start (trending) results."""
        try:
            await inject_faults(SETTINGS)
            return {"user_id": user_id, **await self._pipeline(user_id, k, exclude_items)}
        except ModelNotReady as exc:
            return bad_request(ctx, str(exc), status=503)

    @bentoml.api
    async def recommend_batch(
        self,
        user_ids: Annotated[list[UserId], Field(min_length=1, max_length=SETTINGS.max_batch_users)],
        k: K = 10,
        exclude_items: Exclusions = [],  # noqa: B006
        ctx: bentoml.Context = None,
    ) -> dict:
        """Top-k items for each of several users (the same exclusions apply to all)."""
        try:
            await inject_faults(SETTINGS)
            results = await asyncio.gather(
                *(self._pipeline(user_id, k, exclude_items) for user_id in user_ids)
            )
        except ModelNotReady as exc:
            return bad_request(ctx, str(exc), status=503)
        return {
            "results": [
                {"user_id": user_id, **result}
                for user_id, result in zip(user_ids, results, strict=True)
            ]
        }

    @bentoml.api
    async def similar_items(self, item_id: ItemId, k: K = 10, ctx: bentoml.Context = None) -> dict:
        """Items similar to `item_id`; trending items when the item or retrieval is unknown/down."""
        degraded: list[dict] = []
        try:
            await inject_faults(SETTINGS)
            try:
                found = await self._call(
                    "Retrieval.similar_items",
                    self.retrieval.to_async.similar_items(item_id=item_id, k=k),
                    SETTINGS.retrieval_timeout_s,
                )
                items = [{k_: v for k_, v in i.items() if k_ != "source"} for i in found["items"]]
                versions = {"retrieval": found["model_version"]}
                source = found["source"]
            except Exception as exc:
                self._fallback("retrieval", exc, degraded)
                items = [
                    {"item_id": i["item_id"], "score": i["score"], "category": i["category"]}
                    for i in self._popular({item_id})[:k]
                ]
                versions, source = {"popularity": self.popular.version}, "popular"
        except ModelNotReady as exc:
            return bad_request(ctx, str(exc), status=503)
        return {
            "item_id": item_id,
            "items": items,
            "source": source,
            "model_versions": versions,
            "degraded": bool(degraded),
            "degraded_reasons": degraded,
            "track": SETTINGS.track,
        }


Recommender.add_asgi_middleware(RequestSizeLimit, max_bytes=SETTINGS.max_request_bytes)
