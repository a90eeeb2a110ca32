"""Recommender gateway: the public API over the Retrieval and Ranking stages.

A `recommend` request, top to bottom, in four files: `Recommender.recommend` (here) ->
`RecommendPipeline.recommend` (`recsys/serving/pipeline.py`: retrieve -> rank -> category cap ->
top k, with timeouts, breakers and fallbacks) -> `self.retrieval.retrieve` and `self.ranking.rank`,
whose two implementations each sit at the end of the stage's own file: `LocalRetrieval` /
`RetrievalClient` (`services/retrieval.py`) and `LocalRanking` / `RankingClient`
(`services/ranking.py`). Every API answers through `services.answers.respond` (orjson body, or
the error mapped to its status by `recsys.errors.http_status`).

Where each stage runs is chosen at start, by which stages `--depends` names:
- default (the chart's two deployments): `--depends Retrieval=<url>`. Ranking runs in this
  process (no hop); Retrieval, memory-heavy and scaled on its own, is reached over HTTP;
- separate ranking (a chart option): `--depends Retrieval=<url> --depends Ranking=<url>`;
- single process (no `--depends`): both stages in this process.
`bentoml serve services.recommender:Recommender` starts both stages as local processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated

import bentoml
from pydantic import BaseModel, Field

from recsys.model.artifacts import RETRIEVAL_MODEL, model_path
from recsys.model.retrieval import POPULAR_FILE
from recsys.serving.models import BackgroundModel
from recsys.serving.pipeline import CircuitBreaker, RecommendPipeline
from recsys.serving.settings import ItemId, UserId
from services.answers import json_answer, respond
from services.config import SETTINGS, install_tracing, service_config
from services.front_door import install_front_door
from services.metrics import CIRCUIT_STATE, FALLBACKS, MODEL_INFO
from services.ranking import LocalRanking, Ranking, RankingClient
from services.retrieval import LocalRetrieval, Retrieval, RetrievalClient
from services.stages import StageDependency, WorkerReadiness

logger = logging.getLogger("recsys.serving.pipeline")
# Strict: JSON's types as the document states them (`"10"` is not an integer).
K = Annotated[
    int, Field(strict=True, ge=1, le=SETTINGS.max_k, description="How many items to return.")
]
Exclusions = Annotated[
    list[ItemId],
    Field(max_length=SETTINGS.max_exclude_items, description="Items never to recommend."),
]
BatchUsers = Annotated[list[UserId], Field(min_length=1, max_length=SETTINGS.max_batch_users)]
_STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2}


def load_popular():
    """The trending list shipped with the retrieval model: the answer when retrieval is down."""
    path, tag = model_path(
        SETTINGS.retrieval_model_tag, RETRIEVAL_MODEL, store_dir=SETTINGS.model_dir or None
    )
    return json.loads((path / POPULAR_FILE).read_text()), tag


def check_popular(popular: list) -> None:
    if not popular:
        raise RuntimeError("the fallback popularity list is empty")


def count_fallback(stage: str, reason: str, exc: BaseException) -> None:
    """Count and log one fallback (no user id in the line; the trace id is added by BentoML)."""
    FALLBACKS.labels(stage, reason).inc()
    logger.warning("fallback: %s failed (%s: %s)", stage, reason, type(exc).__name__)


def breakers() -> dict[str, CircuitBreaker]:
    def gauge(stage: str):
        def on_change(state: str) -> None:
            CIRCUIT_STATE.labels(stage).set(_STATE_VALUES[state])
            logger.warning("circuit breaker for %s is now %s", stage, state)

        return on_change

    return {
        stage: CircuitBreaker(
            SETTINGS.breaker_failures, SETTINGS.breaker_reset_s, on_change=gauge(stage)
        )
        for stage in ("retrieval", "ranking")
    }


# ---- the answers, as declared in /docs.json (services.openapi); encoded by json_answer ---------
class Item(BaseModel):
    item_id: str
    score: float
    category: str


class DegradedReason(BaseModel):
    stage: str = Field(description="The stage that failed: retrieval or ranking.")
    reason: str = Field(
        description="timeout, not_ready, overloaded, unauthorized, unavailable, circuit_open, "
        "error, or unknown_item (similar_items)."
    )


class Recommendation(BaseModel):
    user_id: str
    items: list[Item] = Field(description="Best first; at most k.")
    model_versions: dict[str, str] = Field(
        description="Model version per stage that answered (retrieval, ranking, popularity)."
    )
    degraded: bool = Field(description="True when a stage failed and a fallback answered.")
    degraded_reasons: list[DegradedReason]
    track: str = Field(description="Deployment track: stable or canary.")


class Recommendations(BaseModel):
    results: list[Recommendation] = Field(description="One answer per user, in request order.")


class SimilarItems(BaseModel):
    item_id: str
    items: list[Item]
    source: str = Field(description="ann, or popular (unknown item or retrieval down).")
    model_versions: dict[str, str]
    degraded: bool
    degraded_reasons: list[DegradedReason]
    track: str


class StageStatus(BaseModel):
    retrieval: bool
    ranking: bool
    popularity_fallback: bool
    circuits: dict[str, str] = Field(description="Breaker state per stage.")


ANSWERS = {
    "recommend": Recommendation,
    "recommend_batch": Recommendations,
    "similar_items": SimilarItems,
    "stages": StageStatus,
}


# Ready when its own models are: the popularity list and every stage in this process. A remote
# stage being down does not make it unready (no runner probe): its fallbacks answer then.
@bentoml.service(name="Recommender", **service_config(stage=False, runner_probe={"enabled": False}))
class Recommender:
    # Each stage runs in this process (Local*) or, when `--depends` names it, is reached over
    # HTTP (*Client: JSON and the stage token; services.stages.StageDependency).
    retrieval = StageDependency(on=Retrieval, local=LocalRetrieval, remote=RetrievalClient)
    ranking = StageDependency(on=Ranking, local=LocalRanking, remote=RankingClient)

    def __init__(self) -> None:
        install_tracing()
        self.popular = BackgroundModel("popularity", load_popular, check_popular)
        # Resolving the stages (self.retrieval, self.ranking) starts loading in-process models.
        self.stage_handles = (self.retrieval, self.ranking)
        self.readiness = WorkerReadiness("Recommender", self.models_ready)
        self.pipeline = RecommendPipeline(
            settings=SETTINGS,
            retrieval=self.retrieval,
            ranking=self.ranking,
            popular=self.popular,
            on_fallback=count_fallback,
            breakers=breakers(),
        )

    @bentoml.api
    async def recommend(
        self,
        user_id: UserId,
        k: K = 10,
        exclude_items: Exclusions = [],  # noqa: B006
    ) -> dict:
        """Top-k items for a user; unknown users get cold-start (trending) results."""
        return await respond(
            self.pipeline.recommend, user_id=user_id, k=k, exclude_items=exclude_items
        )

    @bentoml.api
    async def recommend_batch(
        self,
        user_ids: BatchUsers,
        k: K = 10,
        exclude_items: Exclusions = [],  # noqa: B006
    ) -> dict:
        """Top-k items for each of several users (the same exclusions apply to all)."""
        return await respond(
            self.pipeline.recommend_batch, user_ids=user_ids, k=k, exclude_items=exclude_items
        )

    @bentoml.api
    async def similar_items(self, item_id: ItemId, k: K = 10) -> dict:
        """Items similar to `item_id`; trending items when the item is unknown or retrieval down."""
        return await respond(self.pipeline.similar_items, item_id=item_id, k=k)

    @bentoml.api
    async def stages(self) -> dict:
        """Readiness of each stage as the gateway sees it, and its circuit breakers' states."""
        # Raises nothing, and no test-only fault applies: the stack's readiness checks read it.
        retrieval, ranking = await asyncio.gather(
            self.retrieval.is_ready(2), self.ranking.is_ready(2), return_exceptions=True
        )
        return json_answer(
            {
                "retrieval": retrieval is True,
                "ranking": ranking is True,
                "popularity_fallback": self.popular.ready,
                "circuits": {name: b.state for name, b in self.pipeline.breakers.items()},
            }
        )

    def __is_ready__(self) -> bool:
        return self.readiness()

    def models_ready(self) -> bool:
        """This worker's popularity list and in-process stages are loaded and self-tested."""
        in_process = [s for s in self.stage_handles if s.in_process]
        ready = self.popular.ready and all(stage.ready for stage in in_process)
        if self.popular.ready:
            MODEL_INFO.labels("Recommender", self.popular.version, SETTINGS.track).set(1)
        return ready


install_front_door(
    Recommender,
    "gateway",
    stage=False,
    max_in_flight=SETTINGS.gateway_max_in_flight,
    answers=ANSWERS,
)
