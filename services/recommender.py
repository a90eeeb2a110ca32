"""Recommender gateway: the public API over the Retrieval and Ranking stages.

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

import bentoml

from recsys.batching import MicroBatcher
from recsys.gateway import CircuitBreaker, RecommendPipeline
from recsys.model.artifacts import RETRIEVAL_MODEL, model_path
from recsys.model.retrieval import POPULAR_FILE
from recsys.serving import BackgroundModel
from services.common import (
    BATCH_SIZE,
    MODEL_INFO,
    SETTINGS,
    LocalStage,
    WorkerReadiness,
    depends_on_stage,
    install_tracing,
    protect,
    service_config,
)
from services.gateway_api import GatewayAPI, breaker_gauge, count_fallback
from services.ranking import Ranking
from services.retrieval import Retrieval


def load_popular():
    """The trending list shipped with the retrieval model: the answer when retrieval is down."""
    path, tag = model_path(
        SETTINGS.retrieval_model_tag, RETRIEVAL_MODEL, store_dir=SETTINGS.model_dir or None
    )
    return json.loads((path / POPULAR_FILE).read_text()), tag


def check_popular(popular: list) -> None:
    if not popular:
        raise RuntimeError("the fallback popularity list is empty")


def breakers() -> dict[str, CircuitBreaker]:
    return {
        stage: CircuitBreaker(
            SETTINGS.breaker_failures, SETTINGS.breaker_reset_s, on_change=breaker_gauge(stage)
        )
        for stage in ("retrieval", "ranking")
    }


# Ready when its own models are: the popularity list and every stage in this process. A remote
# stage being down does not make it unready (no runner probe): its fallbacks answer then.
@bentoml.service(name="Recommender", **service_config(runner_probe={"enabled": False}))
class Recommender(GatewayAPI):
    # A remote stage is called with JSON and the stage token (services.common.StageDependency).
    retrieval = depends_on_stage(Retrieval)
    ranking = depends_on_stage(Ranking)

    def __init__(self) -> None:
        install_tracing()
        self.popular = BackgroundModel("popularity", load_popular, check_popular)
        # Resolving the stages (self.retrieval, self.ranking) starts loading in-process models.
        self.stage_handles = (self.retrieval, self.ranking)
        self.readiness = WorkerReadiness("Recommender", self.models_ready)
        self.pipeline = RecommendPipeline(
            settings=SETTINGS,
            retrieve=self._retriever(),
            rank=lambda user_id, candidates: self.ranking.rank(
                user_id=user_id, candidates=candidates
            ),
            similar=lambda item_id, k: self.retrieval.similar_items(item_id=item_id, k=k),
            popular=self.popular.get,
            popular_version=lambda: self.popular.version,
            on_fallback=count_fallback,
            breakers=breakers(),
            in_process=frozenset(
                stage
                for stage, handle in (("retrieval", self.retrieval), ("ranking", self.ranking))
                if isinstance(handle, LocalStage)
            ),
        )

    def _retriever(self):
        """How the pipeline calls retrieval: directly, or (a remote stage with batching on)
        through a micro-batcher, so that concurrent requests share one HTTP exchange."""
        if isinstance(self.retrieval, LocalStage) or not SETTINGS.batching:
            return lambda user_id, k, exclude: self.retrieval.retrieve(
                user_id=user_id, k=k, exclude_items=exclude
            )

        async def retrieve_batch(requests: list[dict]) -> list[dict]:
            return (await self.retrieval.retrieve_batch(requests=requests))["results"]

        batcher = MicroBatcher(
            retrieve_batch,
            SETTINGS.batch_max,
            SETTINGS.batch_wait_ms / 1000,
            on_batch=BATCH_SIZE.labels("retrieval").observe,
        )
        return lambda user_id, k, exclude: batcher.submit(
            {"user_id": user_id, "k": k, "exclude_items": exclude}
        )

    def __is_ready__(self) -> bool:
        return self.readiness()

    def models_ready(self) -> bool:
        """This worker's popularity list and in-process stages are loaded and self-tested."""
        in_process = [s for s in self.stage_handles if isinstance(s, LocalStage)]
        ready = self.popular.ready and all(stage.ready for stage in in_process)
        if self.popular.ready:
            MODEL_INFO.labels("Recommender", self.popular.version, SETTINGS.track).set(1)
        return ready

    async def stage_status(self) -> dict:
        retrieval, ranking = await asyncio.gather(
            self.retrieval.is_ready(2), self.ranking.is_ready(2), return_exceptions=True
        )
        return {
            "retrieval": retrieval is True,
            "ranking": ranking is True,
            "popularity_fallback": self.popular.ready,
        }


protect(Recommender, "gateway", stage=False, max_in_flight=SETTINGS.gateway_max_in_flight)
