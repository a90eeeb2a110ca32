"""Inline gateway: the same API with both stages in the gateway's own process.

For single-node deployments where the HTTP hops cost more than the stages themselves
(`bentoml serve services.inline:InlineRecommender`). Kubernetes keeps the split form.
"""

from __future__ import annotations

import bentoml

from recsys.artifacts import RANKING_MODEL, RETRIEVAL_MODEL, load_ranker, load_retrieval
from recsys.gateway import RecommendPipeline
from recsys.serving import BackgroundModel, inject_faults, rank_candidates
from services.common import (
    MODEL_INFO,
    SETTINGS,
    install_tracing,
    model_health,
    packed_model,
    protect,
    service_config,
)
from services.gateway_api import GatewayAPI, count_fallback
from services.ranking import check_ranker
from services.recommender import breakers
from services.retrieval import check_retrieval


@bentoml.service(name="InlineRecommender", **service_config())
class InlineRecommender(GatewayAPI):
    retrieval_ref = packed_model(SETTINGS.retrieval_model_tag)
    ranking_ref = packed_model(SETTINGS.ranking_model_tag)

    def __init__(self) -> None:
        install_tracing()
        self.retrieval = BackgroundModel(
            "retrieval",
            lambda: load_retrieval(SETTINGS.retrieval_model_tag),
            check_retrieval,
            SETTINGS.fault_load_delay_s,
        )
        self.ranking = BackgroundModel(
            "ranking",
            lambda: load_ranker(SETTINGS.ranking_model_tag),
            check_ranker,
            SETTINGS.fault_load_delay_s,
        )
        self.retrieval_health = model_health("Retrieval", RETRIEVAL_MODEL)
        self.ranking_health = model_health("Ranking", RANKING_MODEL)
        self.pipeline = RecommendPipeline(
            settings=SETTINGS,
            retrieve=self._retrieve,
            rank=self._rank,
            similar=self._similar,
            popular=lambda: self.retrieval.get().popular_list(500),
            popular_version=lambda: self.retrieval.version,
            on_fallback=count_fallback,
            breakers=breakers(),
        )

    async def _retrieve(self, user_id: str, k: int, exclude: list[str]) -> dict:
        await inject_faults(SETTINGS)
        model = self.retrieval.get()
        candidates = model.retrieve(user_id, k, exclude)
        unknown = sum(item not in model.items for item in exclude)
        known_user = model.users.index_of(user_id) >= 0
        self.retrieval_health.on_retrieval(
            self.retrieval.version, known_user, candidates, exclude, unknown
        )
        return {"candidates": candidates, "model_version": self.retrieval.version}

    async def _rank(self, user_id: str, candidates: list[dict]) -> dict:
        await inject_faults(SETTINGS)
        items = rank_candidates(self.ranking.get(), user_id, candidates)
        self.ranking_health.on_ranking(self.ranking.version, items)
        return {"items": items, "model_version": self.ranking.version}

    async def _similar(self, item_id: str, k: int) -> dict:
        model = self.retrieval.get()
        items = model.similar_items(item_id, k)
        if items is None:
            return {
                "items": model.popular_list(k),
                "source": "popular",
                "model_version": self.retrieval.version,
            }
        return {"items": items, "source": "ann", "model_version": self.retrieval.version}

    def __is_ready__(self) -> bool:
        ready = self.retrieval.ready and self.ranking.ready
        if ready:
            for name, model in (("Retrieval", self.retrieval), ("Ranking", self.ranking)):
                MODEL_INFO.labels(name, model.version, SETTINGS.track).set(1)
            self.retrieval_health.refresh(self.retrieval.version)
            self.ranking_health.refresh(self.ranking.version)
        return ready

    async def stage_status(self) -> dict:
        return {
            "retrieval": self.retrieval.ready,
            "ranking": self.ranking.ready,
            "popularity_fallback": self.retrieval.ready,
        }


protect(InlineRecommender, "gateway", stage=False, max_in_flight=SETTINGS.gateway_max_in_flight)
