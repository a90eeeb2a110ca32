"""Retrieval service: fused candidates (ALS + ScaNN, item-item, popularity) for known users,
popular items for cold ones.

The gateway reaches it through `LocalRetrieval` (in its own process) or `RetrievalClient` (over
HTTP), both at the end of this file: the pipeline's `RetrievalStage` (`recsys.serving.pipeline`).
"""

from __future__ import annotations

from typing import Annotated

import bentoml
from pydantic import BaseModel, Field

from recsys.model.artifacts import RETRIEVAL_MODEL, load_retrieval
from recsys.serving.pipeline import Retrieved, Similar
from recsys.serving.settings import ItemId, UserId
from recsys.tracing import hash_id, set_attributes
from services.answers import respond
from services.config import SETTINGS, packed_model, service_config
from services.front_door import install_front_door
from services.stage_client import StageClient
from services.stages import LocalStageHandle, RemoteStageHandle, StageService, micro_batcher

MAX_CANDIDATES = 2000
MAX_BATCH_REQUESTS = 256
# Strict: JSON's types as the document states them (no "5" for 5, no 0 for false).
CandidateCount = Annotated[int, Field(strict=True, ge=1, le=MAX_CANDIDATES)]
ExcludeSeen = Annotated[bool, Field(strict=True, description="Leave out the user's own items.")]
Exclusions = Annotated[list[ItemId], Field(max_length=SETTINGS.max_exclude_items)]


class RetrieveRequest(BaseModel):
    """One user's candidate request, as in `/retrieve`."""

    user_id: UserId
    k: CandidateCount = 200
    exclude_items: Exclusions = []
    exclude_seen: ExcludeSeen = True


# ---- the answers, as declared in /docs.json (services.openapi); encoded by json_answer ---------
class Candidates(BaseModel):
    """One entry per candidate in each column, in retrieval order."""

    item_ids: list[str]
    scores: list[float] = Field(description="Reciprocal-rank fusion score of the sources.")
    sources: list[str] = Field(
        description="Provenance: ann (ALS index), item (item-item) or popular, the source that "
        "ranked the candidate highest."
    )
    categories: list[str]
    ann_score: list[float] = Field(description="ALS dot product (0 for unknown users).")
    ann_rank: list[float] = Field(description="Position in the ALS list; k when not in it.")
    item_score: list[float] = Field(description="Item-item score from the user's history.")
    item_rank: list[float] = Field(description="Position in the item-item list; k when not in it.")
    recent_item_score: list[float] = Field(description="Item-item score from the last items.")
    popular_score: list[float] = Field(description="Popularity, 1 for the most popular item.")
    popular_rank: list[float] = Field(description="Position in the popular list; k when not in it.")


class RetrievedCandidates(BaseModel):
    candidates: Candidates
    cold_start: bool
    model_version: str


class RetrievalBatch(BaseModel):
    results: list[RetrievedCandidates] = Field(description="One answer per request, in order.")


class NearItem(BaseModel):
    item_id: str
    score: float
    category: str


class NearItems(BaseModel):
    items: list[NearItem]
    source: str = Field(description="ann, or popular for an unknown item.")
    reason: str = Field("", description="unknown_item when source is popular (else absent).")
    model_version: str


ANSWERS = {
    "retrieve": RetrievedCandidates,
    "retrieve_batch": RetrievalBatch,
    "similar_items": NearItems,
}


def check_retrieval(model) -> None:
    """A cold and a warm query must both return candidates before the service is ready."""
    if not model.retrieve_columns("__readiness_probe__", 10)["item_ids"]:
        raise RuntimeError("self-test: no candidates for an unknown user")
    if len(model.users) and not model.retrieve_columns(str(model.users.ids[0]), 10)["item_ids"]:
        raise RuntimeError("self-test: no candidates for a known user")


@bentoml.service(name="Retrieval", **service_config())
class Retrieval(StageService):
    component = "Retrieval"
    model_ref = packed_model(SETTINGS.retrieval_model_tag)

    def __init__(self) -> None:
        self.start_loading(
            lambda: load_retrieval(SETTINGS.retrieval_model_tag, SETTINGS.model_dir or None),
            check_retrieval,
            RETRIEVAL_MODEL,
        )

    def _candidates(
        self,
        user_id: str,
        k: int = 200,
        exclude_items: list[str] | tuple[str, ...] = (),
        exclude_seen: bool = True,
    ) -> dict:
        model = self.loaded.get()
        columns = model.retrieve_columns(user_id, k, exclude_items, exclude_seen)
        user_idx = model.users.index_of(user_id)
        cold = model.is_cold(user_idx)
        unknown = sum(item not in model.items for item in exclude_items)
        self.health.on_retrieval(
            self.loaded.version, user_idx >= 0, columns["scores"], len(exclude_items), unknown
        )
        return {"candidates": columns, "cold_start": cold, "model_version": self.loaded.version}

    def answer_retrieve(self, user_id: str, k: int = 200, **options) -> dict:
        answer = self._candidates(user_id, k, **options)
        set_attributes(
            user_hash=lambda: hash_id(user_id),
            k=k,
            candidates=len(answer["candidates"]["item_ids"]),
            cold_start=answer["cold_start"],
            excluded=len(options.get("exclude_items", ())),
            model_version=self.loaded.version,
        )
        return answer

    def answer_retrieve_batch(self, requests: list[dict]) -> dict:
        set_attributes(requests=len(requests), model_version=self.loaded.version)
        return {"results": [self._candidates(**request) for request in requests]}

    @bentoml.api
    async def retrieve(
        self,
        user_id: UserId,
        k: CandidateCount = 200,
        exclude_items: Exclusions = [],  # noqa: B006
        exclude_seen: ExcludeSeen = True,
    ) -> dict:
        """Candidates for a user (unknown users allowed) as columns: `item_ids`, `scores`,
        `sources`, `categories` and the sources' signals, one entry per candidate in retrieval
        order."""
        return await respond(
            self.answer_retrieve,
            user_id=user_id,
            k=k,
            exclude_items=exclude_items,
            exclude_seen=exclude_seen,
        )

    @bentoml.api
    async def retrieve_batch(
        self,
        requests: Annotated[
            list[RetrieveRequest], Field(min_length=1, max_length=MAX_BATCH_REQUESTS)
        ],
    ) -> dict:
        """`/retrieve` for several users in one call (the gateway's micro-batching):
        `{"results": [...]}`, one `/retrieve` answer per request, in order."""
        requests = [request.model_dump() for request in requests]
        return await respond(self.answer_retrieve_batch, requests=requests)

    def answer_similar_items(self, item_id: str, k: int = 10) -> dict:
        model = self.loaded.get()
        items = model.similar_items(item_id, k)
        if items is None:
            return {
                "items": model.popular_list(k),
                "source": "popular",
                "reason": "unknown_item",
                "model_version": self.loaded.version,
            }
        return {"items": items, "source": "ann", "model_version": self.loaded.version}

    @bentoml.api
    async def similar_items(
        self,
        item_id: ItemId,
        k: Annotated[int, Field(strict=True, ge=1, le=SETTINGS.max_k)] = 10,
    ) -> dict:
        """Items nearest to `item_id` by embedding cosine; trending items for unknown items."""
        return await respond(self.answer_similar_items, item_id=item_id, k=k)


install_front_door(
    Retrieval,
    "retrieval",
    stage=True,
    max_in_flight=SETTINGS.stage_max_in_flight,
    answers=ANSWERS,
)


# ---- how the gateway calls Retrieval (recsys.serving.pipeline.RetrievalStage) --------------------
class LocalRetrieval(LocalStageHandle):
    """Retrieval in the gateway's process: its `answer_` methods called directly, with no HTTP
    hop, serialisation or validation (the gateway validated the request). No fault injection
    either: the test-only faults are per process, and the gateway's API applied its own."""

    service: Retrieval

    async def retrieve(self, user_id: str, k: int, exclude_items: list[str]) -> Retrieved:
        return self.service.answer_retrieve(user_id, k, exclude_items=exclude_items)

    async def similar_items(self, item_id: str, k: int) -> Similar:
        return self.service.answer_similar_items(item_id, k)


class RetrievalClient(RemoteStageHandle):
    """Retrieval in its own process, over HTTP (`StageClient`: JSON, stage token, trace
    context): `POST /retrieve`, or with micro-batching on (`RECSYS_BATCHING`) one
    `POST /retrieve_batch` for the requests waiting together, and `POST /similar_items`."""

    def __init__(self, http: StageClient) -> None:
        super().__init__(http)
        self.batcher = micro_batcher(self.retrieve_batch, "retrieval")

    async def retrieve(self, user_id: str, k: int, exclude_items: list[str]) -> Retrieved:
        request = {"user_id": user_id, "k": k, "exclude_items": exclude_items}
        if self.batcher is None:
            return await self.http.call("/retrieve", request)
        return await self.batcher.submit(request)

    async def retrieve_batch(self, requests: list[dict]) -> list[Retrieved]:
        return (await self.http.call("/retrieve_batch", {"requests": requests}))["results"]

    async def similar_items(self, item_id: str, k: int) -> Similar:
        return await self.http.call("/similar_items", {"item_id": item_id, "k": k})
