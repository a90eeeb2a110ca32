"""Ranking service: XGBoost LambdaMART scores for retrieved candidates, one batch per request.

The gateway reaches it through `LocalRanking` (in its own process) or `RankingClient` (over
HTTP), both at the end of this file: the pipeline's `RankingStage` (`recsys.serving.pipeline`).
"""

from __future__ import annotations

import math
from typing import Annotated, Self

import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recsys.model.artifacts import RANKING_MODEL, load_ranker
from recsys.model.ranking import rank_columns_many
from recsys.model.sources import SIGNAL_NAMES
from recsys.serving.pipeline import CandidateColumns as Columns
from recsys.serving.pipeline import Ranked
from recsys.serving.settings import ItemId, UserId
from recsys.tracing import hash_id, set_attributes
from services.answers import respond
from services.config import SETTINGS, packed_model, service_config
from services.front_door import install_front_door
from services.stages import LocalStageHandle, RemoteStageHandle, StageService, micro_batcher

MAX_CANDIDATES = 2000
# One source signal per candidate (`recsys.model.sources.SIGNAL_NAMES`); absent: missing.
Signal = (
    Annotated[list[Annotated[float, Field(strict=True)]], Field(max_length=MAX_CANDIDATES)] | None
)


class CandidateColumns(BaseModel):
    """Retrieved candidates as columns (`RetrievalModel.retrieve_columns`): every column has
    one entry per candidate, so all have the same length. The sources' signals (`ann_score`,
    ...) are features; one left out counts as missing. Other columns pass through."""

    model_config = ConfigDict(extra="allow")

    item_ids: Annotated[list[ItemId], Field(max_length=MAX_CANDIDATES)]
    scores: Annotated[list[Annotated[float, Field(strict=True)]], Field(max_length=MAX_CANDIDATES)]
    sources: Annotated[list[Annotated[str, Field(max_length=32)]], Field(max_length=MAX_CANDIDATES)]
    categories: Annotated[
        list[Annotated[str, Field(max_length=128)]], Field(max_length=MAX_CANDIDATES)
    ]
    ann_score: Signal = None
    ann_rank: Signal = None
    item_score: Signal = None
    item_rank: Signal = None
    recent_item_score: Signal = None
    popular_score: Signal = None
    popular_rank: Signal = None

    @model_validator(mode="after")
    def _aligned(self) -> Self:
        columns = {
            "item_ids": self.item_ids,
            "scores": self.scores,
            "sources": self.sources,
            "categories": self.categories,
            **{
                name: getattr(self, name)
                for name in SIGNAL_NAMES
                if getattr(self, name) is not None
            },
            **(self.model_extra or {}),
        }
        lengths = {
            name: len(column) if isinstance(column, list) else None
            for name, column in columns.items()
        }
        if len(set(lengths.values())) > 1:
            raise ValueError(f"candidate columns differ in length: {lengths}")
        if not all(math.isfinite(score) for score in self.scores):
            raise ValueError("scores must be finite numbers")
        for name in SIGNAL_NAMES:
            column = getattr(self, name)
            if column is not None and not all(math.isfinite(value) for value in column):
                raise ValueError(f"{name} must be finite numbers")
        return self


class RankOrder(BaseModel):
    """The answer of `/rank`, as declared in /docs.json (encoded by json_answer)."""

    order: list[int] = Field(description="Positions in `candidates`, best first.")
    scores: list[float] = Field(description="The model's score of each, in `order`.")
    model_version: str
    order_by: str = Field(
        description="What ordered the list: `ranker`, or the candidate source whose order won "
        "on validation (`retrieval`, `ann`, `item`, `popular`) with the ranker off."
    )


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
            lambda: load_ranker(SETTINGS.ranking_model_tag, SETTINGS.model_dir or None),
            check_ranker,
            RANKING_MODEL,
        )
        self.batcher = micro_batcher(self.answer_rank_many, "ranking")

    def answer_rank_many(self, requests: list[tuple[str, dict[str, list]]]) -> list[dict]:
        """Several requests' verdicts from one model prediction (ModelNotReady fails all)."""
        ranker = self.loaded.get()
        verdicts = rank_columns_many(ranker, requests)
        top_k = self.health.top_k
        for (_, candidates), verdict in zip(requests, verdicts, strict=True):
            categories = candidates["categories"]
            top = [categories[i] for i in verdict["order"][:top_k]]
            self.health.on_ranking(self.loaded.version, verdict["scores"], top)
        version, order = self.loaded.version, ranker.serving_order
        return [{**verdict, "model_version": version, "order_by": order} for verdict in verdicts]

    async def answer_rank(self, user_id: str, candidates: dict[str, list]) -> dict:
        set_attributes(
            user_hash=lambda: hash_id(user_id),
            candidates=len(candidates["item_ids"]),
            model_version=self.loaded.version,
        )
        if self.batcher is None:
            return self.answer_rank_many([(user_id, candidates)])[0]
        return await self.batcher.submit((user_id, candidates))

    @bentoml.api
    async def rank(self, user_id: UserId, candidates: CandidateColumns) -> dict:
        """The ranker's order of the candidates: `order` (positions in `candidates`, best
        first) and `scores`; items the model does not know are left out."""
        return await respond(self.answer_rank, user_id=user_id, candidates=candidates.model_dump())


install_front_door(
    Ranking,
    "ranking",
    stage=True,
    max_in_flight=SETTINGS.stage_max_in_flight,
    answers={"rank": RankOrder},
)


# ---- how the gateway calls Ranking (recsys.serving.pipeline.RankingStage) ------------------------
class LocalRanking(LocalStageHandle):
    """Ranking in the gateway's process: `answer_rank` called directly (micro-batched there),
    with no HTTP hop, serialisation or validation (the gateway's own candidates)."""

    service: Ranking

    async def rank(self, user_id: str, candidates: Columns) -> Ranked:
        return await self.service.answer_rank(user_id, candidates)


class RankingClient(RemoteStageHandle):
    """Ranking in its own process, over HTTP (`StageClient`): `POST /rank`; concurrent calls
    are batched into one prediction by the stage itself."""

    async def rank(self, user_id: str, candidates: Columns) -> Ranked:
        return await self.http.call("/rank", {"user_id": user_id, "candidates": candidates})
