"""Ranking service: XGBoost LambdaMART scores for retrieved candidates, one batch per request."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import bentoml
import numpy as np
from pydantic import BaseModel, Field, field_validator

from recsys.artifacts import RANKING_MODEL, load_ranker
from recsys.serving import (
    ItemId,
    ModelNotReady,
    UserId,
    inject_faults,
    rank_candidates,
)
from recsys.tracing import hash_id, set_attributes
from services.common import (
    SETTINGS,
    StageService,
    bad_request,
    json_answer,
    packed_model,
    protect,
    service_config,
)

MAX_CANDIDATES = 2000


class Candidate(BaseModel):
    """One retrieved item, as the Retrieval service returns it."""

    item_id: ItemId
    score: float = 0.0
    source: Literal["ann", "popular"] = "ann"
    category: Annotated[str, Field(max_length=128)] = ""

    @field_validator("score")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("score must be a finite number")
        return value


def check_ranker(ranker) -> None:
    ids = ranker.items.ids[:5].tolist()
    scores = ranker.score("__readiness_probe__", ids, [0.0] * len(ids), [True] * len(ids))
    if not np.isfinite(scores).all():
        raise RuntimeError("self-test: ranker returned non-finite scores")


@bentoml.service(name="Ranking", **service_config())
class Ranking(StageService):
    component = "Ranking"
    model_ref = packed_model(SETTINGS.ranking_model_tag)

    def __init__(self) -> None:
        self.start_loading(
            lambda: load_ranker(SETTINGS.ranking_model_tag), check_ranker, RANKING_MODEL
        )

    @bentoml.api
    async def rank(
        self,
        user_id: UserId,
        candidates: Annotated[list[Candidate], Field(max_length=MAX_CANDIDATES)],
        ctx: bentoml.Context = None,
    ) -> dict:
        """The candidates re-ordered by the ranker's score (unknown items last)."""
        try:
            ranker = self.loaded.get()
        except ModelNotReady as exc:
            return bad_request(ctx, str(exc), status=503)
        await inject_faults(SETTINGS)
        items = rank_candidates(ranker, user_id, [c.model_dump() for c in candidates])
        self.health.on_ranking(self.loaded.version, items)
        set_attributes(
            user_hash=hash_id(user_id),
            candidates=len(candidates),
            unknown_items=sum(item["score"] is None for item in items),
            model_version=self.loaded.version,
        )
        return json_answer({"items": items, "model_version": self.loaded.version})


protect(Ranking, "ranking", stage=True, max_in_flight=SETTINGS.stage_max_in_flight)
