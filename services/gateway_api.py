"""The gateway's public API, shared by the split (`Recommender`) and inline gateways."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import bentoml
from pydantic import Field

from recsys.gateway import RecommendPipeline
from recsys.serving import ItemId, ModelNotReady, UserId, inject_faults
from services.common import CIRCUIT_STATE, FALLBACKS, SETTINGS, json_answer, unavailable

logger = logging.getLogger("recsys.gateway")
K = Annotated[int, Field(ge=1, le=SETTINGS.max_k, description="How many items to return.")]
Exclusions = Annotated[
    list[ItemId],
    Field(max_length=SETTINGS.max_exclude_items, description="Items never to recommend."),
]
BatchUsers = Annotated[list[UserId], Field(min_length=1, max_length=SETTINGS.max_batch_users)]
_STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2}


def count_fallback(stage: str, reason: str, exc: BaseException) -> None:
    """Count and log one fallback (no user id in the line; the trace id is added by BentoML)."""
    FALLBACKS.labels(stage, reason).inc()
    logger.warning("fallback: %s failed (%s: %s)", stage, reason, type(exc).__name__)


def breaker_gauge(stage: str):
    def on_change(state: str) -> None:
        CIRCUIT_STATE.labels(stage).set(_STATE_VALUES[state])
        logger.warning("circuit breaker for %s is now %s", stage, state)

    return on_change


class GatewayAPI:
    """`recommend`, `recommend_batch`, `similar_items` and `stages` over `self.pipeline`."""

    pipeline: RecommendPipeline

    async def stage_status(self) -> dict:
        raise NotImplementedError

    @bentoml.api
    async def stages(self) -> dict:
        """Readiness of each stage as the gateway sees it, and its circuit breakers' states."""
        status = await self.stage_status()
        status["circuits"] = {name: b.state for name, b in self.pipeline.breakers.items()}
        return status

    @bentoml.api
    async def recommend(
        self,
        user_id: UserId,
        k: K = 10,
        exclude_items: Exclusions = [],  # noqa: B006
    ) -> dict:
        """Top-k items for a user; unknown users get cold-start (trending) results."""
        try:
            await inject_faults(SETTINGS)
            answer = await self.pipeline.recommend(user_id, k, exclude_items)
        except ModelNotReady as exc:
            return unavailable(str(exc))
        return json_answer({"user_id": user_id, **answer})

    @bentoml.api
    async def recommend_batch(
        self,
        user_ids: BatchUsers,
        k: K = 10,
        exclude_items: Exclusions = [],  # noqa: B006
    ) -> dict:
        """Top-k items for each of several users (the same exclusions apply to all)."""
        try:
            await inject_faults(SETTINGS)
            results = await asyncio.gather(
                *(self.pipeline.recommend(user_id, k, exclude_items) for user_id in user_ids)
            )
        except ModelNotReady as exc:
            return unavailable(str(exc))
        return json_answer(
            {
                "results": [
                    {"user_id": user_id, **result}
                    for user_id, result in zip(user_ids, results, strict=True)
                ]
            }
        )

    @bentoml.api
    async def similar_items(self, item_id: ItemId, k: K = 10) -> dict:
        """Items similar to `item_id`; trending items when the item is unknown or retrieval down."""
        try:
            await inject_faults(SETTINGS)
            answer = await self.pipeline.similar_items(item_id, k)
        except ModelNotReady as exc:
            return unavailable(str(exc))
        return json_answer(answer)
