"""Stages answer only the gateway: the stage token, on real servers in the split form.

Retrieval and Ranking require the shared secret (RECSYS_STAGE_TOKEN, sent by the gateway in
X-Recsys-Stage-Token) on every route but the probes and /metrics; a call without it or with a
wrong one gets 401 with a JSON body and is counted in recsys_stage_auth_failures_total. The
gateway's own calls carry it, so its answers stay non-degraded; a gateway holding a wrong token
degrades (never a 5xx); a stage started with no token configured refuses every call. The cost of
the check is measured in-process and printed.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest
from security_support import TOKEN_HEADER

from recsys.ops.stack import free_port, serve_stack, stage_token, start_service
from tests.stage_calls import VALID_CALLS

pytestmark = [pytest.mark.serving, pytest.mark.timeout(600)]

CALLS = {stage: VALID_CALLS[stage] for stage in ("Retrieval", "Ranking")}


@pytest.fixture(scope="module")
def split(saved_tags, bentoml_home):
    with serve_stack(env={"BENTOML_HOME": str(bentoml_home)}, form="split") as servers:
        yield servers


def _failures(metrics: str, reason: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("recsys_stage_auth_failures_total{") and f'reason="{reason}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("stage", ["Retrieval", "Ranking"])
def test_stage_refuses_calls_without_the_token(split, stage):
    path, body = CALLS[stage]
    with httpx.Client(base_url=split[stage].url, timeout=20) as http:
        before = {r: _failures(http.get("/metrics").text, r) for r in ("missing", "invalid")}
        missing = http.post(path, json=body)
        wrong = http.post(path, json=body, headers={TOKEN_HEADER: stage_token() + "x"})
        empty = http.post(path, json=body, headers={TOKEN_HEADER: ""})
        good = http.post(path, json=body, headers={TOKEN_HEADER: stage_token()})
        after = {r: _failures(http.get("/metrics").text, r) for r in ("missing", "invalid")}
    assert missing.status_code == 401, missing.text
    assert "stage token missing" in missing.json()["error"]
    assert wrong.status_code == 401 and "stage token invalid" in wrong.json()["error"]
    assert empty.status_code == 401
    assert good.status_code == 200, good.text
    assert after["missing"] - before["missing"] == 1
    assert after["invalid"] - before["invalid"] == 2
    assert stage_token() not in missing.text + wrong.text  # the secret is never echoed


@pytest.mark.parametrize("stage", ["Retrieval", "Ranking"])
def test_probes_and_metrics_stay_open_everything_else_is_locked(split, stage):
    with httpx.Client(base_url=split[stage].url, timeout=20) as http:
        for path in ("/readyz", "/livez", "/healthz", "/metrics"):
            assert http.get(path).status_code == 200, path
        for path in ("/docs.json", "/schema.json", "/", "/similar_items"):
            response = http.request("POST" if path == "/similar_items" else "GET", path)
            assert response.status_code == 401, (path, response.status_code)


def test_gateway_calls_carry_the_token(split, warm_user):
    """The caller never holds the token; the gateway adds it, so its answers are not degraded
    and none of its calls is refused."""

    def refused() -> float:
        return sum(
            _failures(httpx.get(f"{split[stage].url}/metrics", timeout=20).text, reason)
            for stage in ("Retrieval", "Ranking")
            for reason in ("missing", "invalid")
        )

    before = refused()
    with httpx.Client(base_url=split["Recommender"].url, timeout=20) as http:
        answer = http.post("/recommend", json={"user_id": warm_user, "k": 5}).json()
        similar = http.post("/similar_items", json={"item_id": "i1", "k": 3}).json()
    assert answer["degraded"] is False, answer
    assert len(answer["items"]) == 5
    assert len(similar["items"]) == 3
    assert refused() == before


def test_gateway_with_a_wrong_token_degrades_without_5xx(split, bentoml_home, warm_user):
    urls = {stage: split[stage].url for stage in ("Retrieval", "Ranking")}
    env = {"BENTOML_HOME": str(bentoml_home), "RECSYS_STAGE_TOKEN": "not-the-stage-token"}
    gateway = start_service("Recommender", free_port(), env, urls)
    try:
        gateway.wait_ready(120)
        response = httpx.post(
            f"{gateway.url}/recommend", json={"user_id": warm_user, "k": 5}, timeout=20
        )
    finally:
        gateway.stop()
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["degraded"] is True
    # retrieval refused -> the popularity list, whose ranking is refused too
    assert {r["stage"] for r in answer["degraded_reasons"]} == {"retrieval", "ranking"}
    assert {r["reason"] for r in answer["degraded_reasons"]} == {"unauthorized"}


def test_stage_without_a_configured_token_refuses_every_call(saved_tags, bentoml_home):
    """Secure by default: a stage started alone with no RECSYS_STAGE_TOKEN makes up its own, so
    it refuses callers (the stack's token included) instead of accepting everyone."""
    env = {"BENTOML_HOME": str(bentoml_home), "RECSYS_STAGE_TOKEN": ""}
    stage = start_service("Retrieval", free_port(), env)
    try:
        stage.wait_ready(120)
        path, body = CALLS["Retrieval"]
        with httpx.Client(base_url=stage.url, timeout=20) as http:
            assert http.post(path, json=body).status_code == 401
            stack = http.post(path, json=body, headers={TOKEN_HEADER: stage_token()})
            assert stack.status_code == 401
        assert "RECSYS_STAGE_TOKEN is not set" in stage.log()
    finally:
        stage.stop()


def test_token_check_costs_under_a_tenth_of_a_millisecond(security_figures):
    """The check's own cost per request: the same call through a stage's front door (token
    checked) and a gateway's (no token)."""
    from services.front_door import FrontDoor
    from services.stage_token import STAGE_TOKEN_HEADER, stage_token

    async def endpoint(scope, receive, send):
        return None

    checked = FrontDoor(endpoint, component="retrieval", stage=True, max_in_flight=0)
    unchecked = FrontDoor(endpoint, component="gateway", stage=False, max_in_flight=0)
    headers = [
        (b"host", b"retrieval:3000"),
        (b"content-type", b"application/json"),
        (b"content-length", b"42"),
        (STAGE_TOKEN_HEADER.encode(), stage_token()),
    ]
    scope = {"type": "http", "method": "GET", "path": "/retrieve", "headers": headers}

    async def run(app, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await app(scope, None, None)
        return (time.perf_counter() - start) / n

    n = 20_000
    costs = []
    for _ in range(5):
        bare = asyncio.run(run(unchecked, n))
        guarded = asyncio.run(run(checked, n))
        costs.append(guarded - bare)
    cost_us = statistics.median(costs) * 1e6
    security_figures.append(
        (
            "stage token check (in-process, median of 5 x 20,000 calls)",
            {"cost per request": f"{cost_us:.2f} µs ({cost_us / 1000:.4f} ms)"},
        )
    )
    assert cost_us < 100, f"token check costs {cost_us:.1f} µs per request"


def _status_of(app, headers) -> int:
    """Run one request through an ASGI app in-process; the status it answered."""
    sent = []

    async def send(message):
        sent.append(message)

    async def endpoint(scope, receive, send_):
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        await send_({"type": "http.response.body", "body": b"{}"})

    scope = {"type": "http", "method": "GET", "path": "/rank", "headers": headers}
    asyncio.run(app(endpoint)(scope, None, send))
    return sent[0]["status"]


def test_rotation_accepts_the_previous_token_only_while_it_is_configured(monkeypatch):
    from pydantic import SecretStr

    from services.config import SETTINGS
    from services.front_door import FrontDoor
    from services.stage_token import STAGE_TOKEN_HEADER, stage_token

    header = STAGE_TOKEN_HEADER.encode()

    def guard(app):
        return FrontDoor(app, component="ranking", stage=True, max_in_flight=0)

    current = [(header, stage_token())]
    old = [(header, b"the-old-token")]
    assert _status_of(guard, current) == 200
    assert _status_of(guard, old) == 401
    monkeypatch.setattr(SETTINGS, "stage_token_previous", SecretStr("the-old-token"))
    assert _status_of(guard, old) == 200  # mid-rotation: a gateway not yet restarted
    assert _status_of(guard, current) == 200
    assert _status_of(guard, [*current, *old]) == 401  # exactly one token header
    assert _status_of(guard, [(header, b"")]) == 401


def test_a_websocket_to_a_stage_needs_the_token_too():
    """No route of a stage takes a websocket, but none may reach BentoML's router untokened."""
    from services.front_door import FrontDoor
    from services.stage_token import STAGE_TOKEN_HEADER, stage_token

    reached: list[str] = []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    def connect(headers) -> list[dict]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        door = FrontDoor(app, component="retrieval", stage=True, max_in_flight=0)
        scope = {"type": "websocket", "path": "/retrieve", "headers": headers}
        asyncio.run(door(scope, None, send))
        return sent

    refused = connect([])
    assert refused == [{"type": "websocket.close", "code": 1008}] and reached == []
    assert connect([(STAGE_TOKEN_HEADER.encode(), stage_token())]) == []
    assert reached == ["/retrieve"]
