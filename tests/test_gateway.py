"""The gateway pipeline, circuit breaker, category cap and load shedding without a server."""

from __future__ import annotations

import asyncio
import json

import pytest

from recsys.model.retrieval import candidate_rows
from recsys.serving.pipeline import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    RecommendPipeline,
)
from recsys.serving.reranking import cap_categories
from recsys.serving.settings import ServingSettings
from recsys.serving.stage_failures import fallback_reason


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once():
    clock = FakeClock()
    changes: list[str] = []
    breaker = CircuitBreaker(3, 2.0, clock=clock, on_change=changes.append)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 1.9
    assert not breaker.allow()
    clock.now = 2.0
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 4.5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow()
    assert changes == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


CANDIDATES = [
    {"item_id": f"i{n}", "score": 1.0 - n / 100, "source": "ann", "category": f"c{n % 2}"}
    for n in range(20)
]
POPULAR = [
    {"item_id": f"p{n}", "score": 1.0 - n / 100, "source": "popular", "category": f"c{n % 5}"}
    for n in range(30)
]


def columns(rows: list[dict]) -> dict[str, list]:
    return {
        "item_ids": [row["item_id"] for row in rows],
        "scores": [row["score"] for row in rows],
        "sources": [row["source"] for row in rows],
        "categories": [row["category"] for row in rows],
    }


def test_candidate_rows_and_columns_are_inverse():
    assert candidate_rows(columns(CANDIDATES)) == CANDIDATES


class FakeStages:
    """Retrieval and ranking as the pipeline calls them (`RetrievalStage`, `RankingStage`),
    answering with the given coroutine functions, as a remote stage would (timeouts apply)."""

    in_process = False

    def __init__(self, retrieve, rank, similar) -> None:
        self._retrieve, self._rank, self._similar = retrieve, rank, similar

    async def retrieve(self, user_id: str, k: int, exclude_items: list[str]) -> dict:
        return await self._retrieve(user_id, k, exclude_items)

    async def similar_items(self, item_id: str, k: int) -> dict:
        return await self._similar(item_id, k)

    async def rank(self, user_id: str, candidates: dict[str, list]) -> dict:
        return await self._rank(user_id, candidates)


class FakePopular:
    version = "r:1"

    def get(self) -> list[dict]:
        return POPULAR


def _pipeline(retrieve=None, rank=None, similar=None, **settings) -> tuple:
    fallbacks: list[tuple[str, str]] = []

    async def ok_retrieve(user_id, k, exclude):
        rows = [c for c in CANDIDATES if c["item_id"] not in exclude][:k]
        return {"candidates": columns(rows), "model_version": "r:1"}

    async def ok_rank(user_id, candidates):
        # Reverse id order; the last candidate is unknown to this ranker and left out.
        ids = candidates["item_ids"]
        order = sorted(range(len(ids)), key=lambda position: ids[position], reverse=True)[:-1]
        return {
            "order": order,
            "scores": [float(-n) for n in range(len(order))],
            "model_version": "k:1",
        }

    async def ok_similar(item_id, k):
        return {"items": CANDIDATES[:k], "source": "ann", "model_version": "r:1"}

    calls = (retrieve or ok_retrieve, rank or ok_rank, similar or ok_similar)
    pipeline = RecommendPipeline(
        settings=ServingSettings(category_cap=0, num_candidates=20, **settings),
        retrieval=FakeStages(*calls),
        ranking=FakeStages(*calls),
        popular=FakePopular(),
        on_fallback=lambda stage, reason, exc: fallbacks.append((stage, reason)),
    )
    return pipeline, fallbacks


def test_happy_path_uses_the_ranker_order():
    pipeline, fallbacks = _pipeline()
    answer = asyncio.run(pipeline.recommend("u1", 3, ["i19"]))
    assert [i["item_id"] for i in answer["items"]] == ["i9", "i8", "i7"]
    assert [i["score"] for i in answer["items"]] == [0.0, -1.0, -2.0]
    assert answer["degraded"] is False and fallbacks == []
    assert answer["model_versions"] == {"retrieval": "r:1", "ranking": "k:1"}
    everything = asyncio.run(pipeline.recommend("u1", 50, []))["items"]
    assert len(everything) == 19 and "i0" not in {i["item_id"] for i in everything}


def test_ranking_failure_keeps_retrieval_order():
    async def broken_rank(user_id, candidates):
        raise RuntimeError("boom")

    pipeline, fallbacks = _pipeline(rank=broken_rank)
    answer = asyncio.run(pipeline.recommend("u1", 3, []))
    assert [i["item_id"] for i in answer["items"]] == ["i0", "i1", "i2"]
    assert answer["degraded"] is True
    assert answer["degraded_reasons"] == [{"stage": "ranking", "reason": "error"}]
    assert fallbacks == [("ranking", "error")]


def test_retrieval_timeout_falls_back_to_popularity_without_excluded_items():
    async def slow_retrieve(user_id, k, exclude):
        await asyncio.sleep(1)

    pipeline, fallbacks = _pipeline(retrieve=slow_retrieve, retrieval_timeout_s=0.05)
    answer = asyncio.run(pipeline.recommend("u1", 5, ["p29"]))
    assert fallbacks == [("retrieval", "timeout")]
    assert answer["degraded_reasons"][0] == {"stage": "retrieval", "reason": "timeout"}
    assert "p29" not in {i["item_id"] for i in answer["items"]}
    assert answer["model_versions"]["popularity"] == "r:1"
    assert len(answer["items"]) == 5


def test_open_circuit_skips_the_dead_stage():
    calls = 0

    async def dead_rank(user_id, candidates):
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    pipeline, fallbacks = _pipeline(rank=dead_rank, breaker_failures=2, breaker_reset_s=60)

    async def many():
        return [await pipeline.recommend("u1", 3, []) for _ in range(6)]

    answers = asyncio.run(many())
    assert calls == 4  # 2 calls, each retried once on a fresh connection; then none
    assert all(a["degraded"] for a in answers)
    assert [r for _, r in fallbacks] == ["unavailable"] * 2 + ["circuit_open"] * 4
    assert pipeline.breakers["ranking"].state == OPEN


def test_similar_items_fallback():
    async def dead(item_id, k):
        raise ConnectionError("refused")

    pipeline, _ = _pipeline(similar=dead)
    answer = asyncio.run(pipeline.similar_items("p0", 3))
    assert answer["source"] == "popular" and answer["degraded"] is True
    assert [i["item_id"] for i in answer["items"]] == ["p1", "p2", "p3"]


def test_category_cap_never_costs_items():
    categories = ["a" if n < 8 else "b" for n in range(10)]
    capped = cap_categories(categories, 5, 2)
    assert capped == [0, 1, 8, 9, 2]
    assert cap_categories(categories, 4, 0) == [0, 1, 2, 3]
    assert len(cap_categories(categories[:3], 5, 1)) == 3


def test_concurrency_limit_sheds_with_retry_after():
    from services.front_door import FrontDoor

    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limit = FrontDoor(slow_app, component="gateway", stage=False, max_in_flight=2)

    async def request(path="/recommend"):
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "headers": []}
        await limit(scope, None, send)
        return sent

    async def scenario():
        admitted = [asyncio.create_task(request()) for _ in range(2)]
        await asyncio.sleep(0.01)
        shed = await request()
        probe = asyncio.create_task(request("/readyz"))
        await asyncio.sleep(0.01)
        release.set()
        return shed, [await t for t in admitted], await probe

    shed, admitted, probe = asyncio.run(scenario())
    assert shed[0]["status"] == 503
    headers = dict(shed[0]["headers"])
    assert headers[b"retry-after"] == b"1"
    assert "limit 2" in json.loads(shed[1]["body"])["error"]
    assert all(a[0]["status"] == 200 for a in admitted)
    assert probe[0]["status"] == 200  # probes are never shed
    assert limit.in_flight == 0


@pytest.mark.parametrize(("name", "value"), [("k", 0), ("num_candidates", 1)])
def test_settings_reject_bad_values(name, value, monkeypatch):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ServingSettings(**{"max_k" if name == "k" else name: value})


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECSYS_NUM_CANDIDATES", "300")
    monkeypatch.setenv("RECSYS_CATEGORY_CAP", "0")
    settings = ServingSettings()
    assert (settings.num_candidates, settings.category_cap) == (300, 0)
    monkeypatch.setenv("RECSYS_MAX_K", "not-a-number")
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_k"):
        ServingSettings()


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (TimeoutError(), "timeout"),
        (ConnectionResetError(), "unavailable"),
        (RuntimeError("boom"), "error"),
    ],
)
def test_fallback_reason_of_plain_errors(exc, reason):
    assert fallback_reason(exc) == reason


def error_body(message: str, kind: str) -> bytes:
    from services.answers import error_body as body_of

    return json.dumps(body_of(message, kind)).encode()


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (
            503,
            error_body("model not ready: overloaded", "model_not_ready"),
            "not_ready",
        ),
        (
            503,
            error_body("overloaded: 65 in flight", "overloaded"),
            "overloaded",
        ),
        (401, error_body("stage token missing", "stage_token_missing"), "unauthorized"),
        (401, error_body("stage token invalid", "stage_token_invalid"), "unauthorized"),
        (500, error_body("unexpected error", "internal_error"), "error"),
        (503, b"<html>Service Unavailable</html>", "not_ready"),  # a proxy in between
        (502, b"Bad Gateway", "error"),
    ],
)
def test_fallback_reason_of_a_stage_refusal(status, body, reason):
    """A stage's error answer, typed by the stage client from its body: the reason is looked
    up from the kind the body names, never searched for in the message."""
    from services.stage_client import StageClient

    failure = StageClient("Retrieval", "http://127.0.0.1:1", {}).failure(status, body)
    assert failure.status == status
    assert fallback_reason(failure) == reason


def test_in_process_stage_has_no_timeout_and_no_retry():
    calls = 0

    async def slow_local_rank(user_id, candidates):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)  # over the timeout below: an in-process call is not cut off
        raise ConnectionError("not a connection: in-process failures are not retried")

    pipeline, fallbacks = _pipeline(rank=slow_local_rank, ranking_timeout_s=0.01)
    pipeline.ranking.in_process = True
    answer = asyncio.run(pipeline.recommend("u1", 3, []))
    assert calls == 1 and fallbacks == [("ranking", "unavailable")]
    assert [i["item_id"] for i in answer["items"]] == ["i0", "i1", "i2"]


def test_recommend_batch_answers_each_user_in_order():
    pipeline, _ = _pipeline()
    answer = asyncio.run(pipeline.recommend_batch(["u2", "u1"], 2, []))
    assert [r["user_id"] for r in answer["results"]] == ["u2", "u1"]
    assert all(len(r["items"]) == 2 and not r["degraded"] for r in answer["results"])


def test_one_error_to_status_mapping():
    from recsys.errors import ModelNotReady, http_status
    from recsys.serving.faults import InjectedFault

    class StillLoading(ModelNotReady):
        pass

    assert http_status(ModelNotReady("loading")) == 503
    assert http_status(StillLoading("loading")) == 503  # a subclass takes its parent's status
    assert http_status(InjectedFault("boom")) == 500
    assert http_status(KeyError("bug")) == 500


def test_every_api_answers_errors_with_the_one_body():
    from recsys.errors import ModelNotReady
    from services.answers import respond

    async def not_ready(**arguments):
        raise ModelNotReady("retrieval model is not ready: still loading")

    async def broken(**arguments):
        raise KeyError("a bug")

    async def fine(user_id: str) -> dict:
        return {"user_id": user_id}

    unavailable = asyncio.run(respond(not_ready, user_id="u1"))
    assert unavailable.status_code == 503 and unavailable.headers["retry-after"] == "1"
    assert json.loads(unavailable.body) == {
        "error": "retrieval model is not ready: still loading",
        "detail": [
            {
                "type": "model_not_ready",
                "loc": [],
                "msg": "retrieval model is not ready: still loading",
            }
        ],
    }
    failed = asyncio.run(respond(broken))
    assert failed.status_code == 500 and "a bug" not in failed.body.decode()  # nothing leaks
    assert set(json.loads(failed.body)) == {"error", "detail"}
    answered = asyncio.run(respond(fine, user_id="u1"))
    assert answered.status_code == 200 and json.loads(answered.body) == {"user_id": "u1"}
