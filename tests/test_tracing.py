"""Traces from the real services, received by a real OTLP/HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import time

import httpx
import pytest

from recsys.ops.otlp import OtlpReceiver, ReceivedSpan, run_receiver
from recsys.ops.stack import serve_stack

pytestmark = pytest.mark.serving

SECRET_USER = "privacy-user-7731"


@pytest.fixture
def receiver():
    with run_receiver() as collected:
        yield collected


def _trace_env(bentoml_home, receiver: OtlpReceiver, rate: str = "1") -> dict:
    return {
        "BENTOML_HOME": str(bentoml_home),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_RESOURCE_ATTRIBUTES": "service.version=9.9.9,deployment.environment.name=ci",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "RECSYS_TRACE_SAMPLE_RATE": rate,
        "RECSYS_TRACE_HASH_KEY": "test-only-key",
    }


def _by_trace(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    return {f"{s.service}:{s.name}": s for s in spans if s.trace_id == trace_id}


def _root(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
    """The newest gateway request span."""
    roots = [s for s in spans if s.service == "Recommender" and s.name == "POST /recommend"]
    return roots[-1] if roots else None


def test_one_trace_joins_gateway_retrieval_and_ranking(
    saved_tags, bentoml_home, receiver, warm_user
):
    with serve_stack(env=_trace_env(bentoml_home, receiver), form="split") as servers:
        for user in (SECRET_USER, warm_user):  # a cold and a warm user
            answer = httpx.post(
                f"{servers['Recommender'].url}/recommend",
                json={"user_id": user, "k": 5},
                timeout=20,
            ).json()
            assert answer["degraded"] is False

        def complete(spans):
            root = _root(spans)
            if root is None:
                return False
            names = set(_by_trace(spans, root.trace_id))
            return {"Retrieval:ann_search", "Ranking:model_prediction"} <= names

        receiver.wait_for(complete)
        logs = {name: server.log() for name, server in servers.servers.items()}

    root = _root(receiver.spans)
    spans = _by_trace(receiver.spans, root.trace_id)
    assert {s.service for s in spans.values()} == {"Recommender", "Retrieval", "Ranking"}
    assert root.parent_id == ""  # the gateway's server span starts the trace
    # client span in the gateway -> server span in the stage -> work spans inside it
    # (retrieval is called through the gateway's micro-batcher: /retrieve_batch)
    for stage, call, endpoint, work in (
        ("Retrieval", "retrieve", "POST /retrieve_batch", ("ann_search", "popular_candidates")),
        ("Ranking", "rank", "POST /rank", ("feature_assembly", "model_prediction")),
    ):
        client = spans[f"Recommender:{stage}.{call}"]
        server = spans[f"{stage}:{endpoint}"]
        assert client.parent_id == root.span_id and client.kind == 3  # SPAN_KIND_CLIENT
        assert server.parent_id == client.span_id and server.kind == 2  # SPAN_KIND_SERVER
        for name in work:
            assert spans[f"{stage}:{name}"].parent_id == server.span_id
    assert spans["Recommender:rerank"].parent_id == root.span_id
    attrs = root.attributes
    assert attrs["recsys.k"] == 5 and attrs["recsys.candidates"] == 200
    assert attrs["recsys.degraded"] is False
    assert attrs["recsys.model_version.ranking"] == saved_tags["ranking"]
    assert spans["Retrieval:ann_search"].attributes["recsys.found"] > 0
    assert spans["Ranking:model_prediction"].attributes["recsys.rows"] == 200
    # the same keyed hash in every service; the raw id nowhere in spans or logs
    hashes = {s.attributes.get("recsys.user_hash") for s in spans.values()} - {None}
    assert len(hashes) == 1 and SECRET_USER not in hashes
    assert not any(SECRET_USER.encode() in body for body in receiver.raw)
    assert not any(SECRET_USER in log for log in logs.values())
    for span in receiver.spans:
        values = [str(v) for v in span.attributes.values()] + [span.name]
        assert warm_user not in values and SECRET_USER not in values
    assert root.resource["service.version"] == "9.9.9"
    assert root.resource["deployment.environment.name"] == "ci"


def test_ranking_failure_shows_as_error_span_and_fallback(saved_tags, bentoml_home, receiver):
    env = _trace_env(bentoml_home, receiver)
    faulty_ranking = {"Ranking": {"RECSYS_FAULT_ERROR_RATE": "1"}}
    with serve_stack(env=env, form="split", stage_env=faulty_ranking) as servers:
        answer = httpx.post(
            f"{servers['Recommender'].url}/recommend",
            json={"user_id": SECRET_USER, "k": 5},
            timeout=20,
        ).json()
        assert answer["degraded"] is True

        def has_failed_rank(spans):
            root = _root(spans)
            return root is not None and "Recommender:Ranking.rank" in _by_trace(
                spans, root.trace_id
            )

        receiver.wait_for(has_failed_rank)
        gateway_log = servers["Recommender"].log()
    root = _root(receiver.spans)
    spans = _by_trace(receiver.spans, root.trace_id)
    client = spans["Recommender:Ranking.rank"]
    assert client.status_code == 2  # STATUS_CODE_ERROR
    assert "exception" in client.events
    assert root.attributes["recsys.degraded"] is True
    assert root.attributes["recsys.fallback_reason"] == "ranking:error"
    assert spans["Retrieval:POST /retrieve_batch"].status_code != 2
    # the fallback log line carries the trace id of that very request
    fallback_lines = [line for line in gateway_log.splitlines() if "fallback: ranking" in line]
    assert fallback_lines and f"trace={root.trace_id}" in fallback_lines[-1]
    assert not any(SECRET_USER.encode() in body for body in receiver.raw)


def test_sample_rate_zero_exports_nothing(saved_tags, bentoml_home, receiver):
    with serve_stack(env=_trace_env(bentoml_home, receiver, rate="0")) as server:
        for _ in range(5):
            response = httpx.post(
                f"{server.url}/recommend", json={"user_id": "u1", "k": 3}, timeout=20
            )
            assert response.status_code == 200
        time.sleep(2)  # five times the export delay
    assert receiver.raw == []
