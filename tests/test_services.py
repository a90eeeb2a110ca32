"""The three BentoML services as real servers on 127.0.0.1, in both deployment forms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from recsys.stack import (
    REPO_ROOT,
    free_port,
    http_status,
    serve_all,
    serve_split,
    stage_token,
    start_service,
)

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def stack(saved_tags, bentoml_home):
    with serve_all(env={"BENTOML_HOME": str(bentoml_home)}) as server:
        yield server


@pytest.fixture(scope="module")
def client(stack):
    with httpx.Client(base_url=stack.url, timeout=20) as http:
        yield http


def _recommend(client, **body):
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_happy_path_reports_versions(client, warm_user, saved_tags):
    answer = _recommend(client, user_id=warm_user, k=10)
    ids = [i["item_id"] for i in answer["items"]]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert answer["degraded"] is False and answer["degraded_reasons"] == []
    assert answer["model_versions"] == {
        "retrieval": saved_tags["retrieval"],
        "ranking": saved_tags["ranking"],
    }
    scores = [i["score"] for i in answer["items"]]
    assert all(isinstance(s, float) for s in scores)


def test_seen_items_are_not_recommended(client, warm_user, tiny_result):
    model = tiny_result.retrieval
    seen = set(model.items.ids[model.seen_items(model.users.index_of(warm_user))])
    answer = _recommend(client, user_id=warm_user, k=50)
    assert not seen & {i["item_id"] for i in answer["items"]}


def test_exclusions_are_honoured(client, warm_user):
    first = [i["item_id"] for i in _recommend(client, user_id=warm_user, k=10)["items"]]
    again = _recommend(client, user_id=warm_user, k=10, exclude_items=first[:5])
    assert not set(first[:5]) & {i["item_id"] for i in again["items"]}
    assert len(again["items"]) == 10


@pytest.mark.parametrize("k", [1, 7, 100])
def test_k_is_respected(client, warm_user, k):
    assert len(_recommend(client, user_id=warm_user, k=k)["items"]) == k


def test_category_cap_diversifies(client, warm_user):
    items = _recommend(client, user_id=warm_user, k=10)["items"]
    per_category: dict[str, int] = {}
    for item in items:
        per_category[item["category"]] = per_category.get(item["category"], 0) + 1
    assert max(per_category.values()) <= 3


def test_unknown_user_gets_cold_start_results(client, tiny_result):
    answer = _recommend(client, user_id="brand-new-user-42", k=5)
    assert len(answer["items"]) == 5 and answer["degraded"] is False
    popular = set(tiny_result.retrieval.items.ids[tiny_result.retrieval.popular_idx[:200]])
    assert {i["item_id"] for i in answer["items"]} <= popular


def test_batch_and_similar_items(client, warm_user, tiny_result):
    batch = client.post("/recommend_batch", json={"user_ids": [warm_user, "nobody"], "k": 3})
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert [r["user_id"] for r in results] == [warm_user, "nobody"]
    assert all(len(r["items"]) == 3 for r in results)
    item = str(tiny_result.retrieval.items.ids[0])
    similar = client.post("/similar_items", json={"item_id": item, "k": 5}).json()
    assert similar["source"] == "ann" and len(similar["items"]) == 5
    assert item not in {i["item_id"] for i in similar["items"]}
    unknown = client.post("/similar_items", json={"item_id": "not-an-item", "k": 4}).json()
    assert unknown["source"] == "popular" and len(unknown["items"]) == 4


BAD_REQUESTS = [
    ("/recommend", {"user_id": "u1", "k": 0}, 400, "k", "greater than or equal to 1"),
    ("/recommend", {"user_id": "u1", "k": 101}, 400, "k", "less than or equal to 100"),
    ("/recommend", {"user_id": "u1", "k": "ten"}, 400, "k", "valid integer"),
    ("/recommend", {"user_id": "u1", "k": 2.5}, 400, "k", "fractional part"),
    ("/recommend", {"k": 5}, 400, "user_id", "Field required"),
    ("/recommend", {"user_id": ""}, 400, "user_id", "at least 1 character"),
    ("/recommend", {"user_id": "bad id!"}, 400, "user_id", "should match pattern"),
    ("/recommend", {"user_id": "u" * 129}, 400, "user_id", "at most 128 characters"),
    ("/recommend", {"user_id": 123}, 400, "user_id", "valid string"),
    ("/recommend", {"user_id": None}, 400, "user_id", "valid string"),
    ("/recommend", {"user_id": "u1", "exclude_items": "i1"}, 400, "exclude_items", "valid array"),
    (
        "/recommend",
        {"user_id": "u1", "exclude_items": ["ok", "not ok"]},
        400,
        "exclude_items",
        "should match pattern",
    ),
    (
        "/recommend",
        {"user_id": "u1", "exclude_items": [f"i{n}" for n in range(501)]},
        400,
        "exclude_items",
        "at most 500 items",
    ),
    ("/recommend_batch", {"user_ids": []}, 400, "user_ids", "at least 1 item"),
    (
        "/recommend_batch",
        {"user_ids": [f"u{n}" for n in range(65)]},
        400,
        "user_ids",
        "at most 64 items",
    ),
    ("/recommend_batch", {"user_ids": "u1"}, 400, "user_ids", "valid array"),
    ("/similar_items", {"k": 3}, 400, "item_id", "Field required"),
    ("/similar_items", {"item_id": "i1", "k": -1}, 400, "k", "greater than or equal to 1"),
]


@pytest.mark.parametrize(("path", "body", "status", "field", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_clear_4xx(client, path, body, status, field, message):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert "Traceback" not in response.text
    details = payload["detail"]
    assert any(field in map(str, d["loc"]) and message in d["msg"] for d in details), payload


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "Invalid JSON"),
        (b"[1, 2, 3]", "Input should be an object"),
        (b"", "Field required"),
    ],
)
def test_malformed_bodies(client, content, expected):
    response = client.post(
        "/recommend", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert expected in response.text and "Traceback" not in response.text


def test_oversized_body_is_refused_before_parsing(client):
    body = json.dumps({"user_id": "u1", "exclude_items": ["x" * 100] * 3000})
    response = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "limit is 262144 bytes" in response.json()["error"]


def test_metrics_expose_requests_and_versions(client, warm_user, saved_tags):
    _recommend(client, user_id=warm_user)
    text = client.get("/metrics").text
    assert 'bentoml_service_request_duration_seconds_bucket{endpoint="/recommend"' in text
    assert f'model_version="{saved_tags["retrieval"]}"' in text


def _fallback_count(text: str, stage: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("recsys_fallback_total{") and f'stage="{stage}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_split_deployment_serves_normally(saved_tags, bentoml_home, warm_user):
    with (
        serve_split(env={"BENTOML_HOME": str(bentoml_home)}) as servers,
        httpx.Client(base_url=servers["Recommender"].url, timeout=20) as http,
    ):
        answer = http.post("/recommend", json={"user_id": warm_user, "k": 5}).json()
        assert answer["degraded"] is False and len(answer["items"]) == 5
        assert answer["model_versions"]["ranking"] == saved_tags["ranking"]
        log = servers["Recommender"].log()
        # the gateway called the remote stages instead of starting local copies
        assert f"Retrieval={servers['Retrieval'].url}" in log or servers["Retrieval"].alive()
        assert http_status(f"{servers['Ranking'].url}/readyz") == 200


@pytest.mark.parametrize(
    ("dead_stage", "expected_versions"),
    [("Ranking", {"retrieval"}), ("Retrieval", {"popularity", "ranking"})],
)
def test_dead_stage_falls_back_without_5xx(
    saved_tags, bentoml_home, warm_user, dead_stage, expected_versions
):
    dead = {dead_stage: f"http://127.0.0.1:{free_port()}"}
    with (
        serve_split(env={"BENTOML_HOME": str(bentoml_home)}, depends=dead) as servers,
        httpx.Client(base_url=servers["Recommender"].url, timeout=20) as http,
    ):
        assert http_status(f"{servers['Recommender'].url}/readyz") == 200
        before = _fallback_count(http.get("/metrics").text, dead_stage.lower())
        answers = [http.post("/recommend", json={"user_id": warm_user, "k": 5}) for _ in range(3)]
        assert all(a.status_code == 200 for a in answers)
        body = answers[0].json()
        assert body["degraded"] is True and len(body["items"]) == 5
        assert body["degraded_reasons"] == [{"stage": dead_stage.lower(), "reason": "unavailable"}]
        assert set(body["model_versions"]) == expected_versions
        after = _fallback_count(http.get("/metrics").text, dead_stage.lower())
        assert after - before == 3
        similar = http.post("/similar_items", json={"item_id": "i1", "k": 3})
        assert similar.status_code == 200


def test_readiness_waits_for_the_model(saved_tags, bentoml_home):
    env = {"BENTOML_HOME": str(bentoml_home), "RECSYS_FAULT_LOAD_DELAY_S": "4"}
    server = start_service("Retrieval", free_port(), env)
    try:
        deadline = time.monotonic() + 60
        while http_status(f"{server.url}/livez") != 200:
            assert time.monotonic() < deadline and server.alive(), server.log()[-2000:]
            time.sleep(0.1)
        assert http_status(f"{server.url}/readyz") == 503
        response = httpx.post(
            f"{server.url}/retrieve",
            json={"user_id": "u1"},
            headers={"x-recsys-stage-token": stage_token()},  # what the gateway sends
            timeout=10,
        )
        assert response.status_code == 503 and "still loading" in response.json()["error"]
        server.wait_ready(60)
    finally:
        server.stop()


def test_missing_model_keeps_service_unready(bentoml_home):
    env = {
        "BENTOML_HOME": str(bentoml_home),
        "RECSYS_RANKING_MODEL_TAG": "recsys-ranking:doesnotexist",
    }
    server = start_service("Ranking", free_port(), env)
    try:
        deadline = time.monotonic() + 60
        while "failed to load" not in server.log():
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.2)
        assert http_status(f"{server.url}/readyz") == 503
        assert "recsys-ranking:doesnotexist" in server.log()
    finally:
        server.stop()


def test_bentoml_build_packs_both_models(saved_tags, bentoml_home, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    build = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    info = subprocess.run(
        [sys.executable, "-m", "bentoml", "get", tag, "-o", "json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert info.returncode == 0, info.stderr[-2000:]
    manifest = json.loads(info.stdout)
    per_service = {svc["name"]: [m["tag"] for m in svc["models"]] for svc in manifest["services"]}
    assert per_service["Retrieval"] == [saved_tags["retrieval"]]
    assert per_service["Ranking"] == [saved_tags["ranking"]]
    assert "Recommender" in per_service
    # The exported Bento (what containerize and deployments consume) carries the model files.
    archive = tmp_path / "recsys.bento"
    export = subprocess.run(
        [sys.executable, "-m", "bentoml", "export", tag, str(archive)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr[-2000:]
    with tarfile.open(archive) as bundle:
        names = set(bundle.getnames())
    for model_tag in saved_tags.values():
        name, version = model_tag.split(":")
        assert f"./models/{name}/{version}/manifest.json" in names
    dockerfile = (
        Path(bentoml_home)
        / "bentos"
        / "recsys"
        / tag.split(":")[1]
        / "env"
        / "docker"
        / "Dockerfile"
    ).read_text()
    assert "\nUSER bentoml" in dockerfile  # the image runs as a non-root user


def test_inline_gateway_serves_the_same_api(saved_tags, bentoml_home, warm_user):
    from recsys.stack import INLINE_GATEWAY

    env = {"BENTOML_HOME": str(bentoml_home)}
    with (
        serve_all(env=env, gateway=INLINE_GATEWAY) as server,
        httpx.Client(base_url=server.url, timeout=20) as http,
    ):
        answer = http.post("/recommend", json={"user_id": warm_user, "k": 7}).json()
        assert len(answer["items"]) == 7 and answer["degraded"] is False
        assert answer["model_versions"] == {
            "retrieval": saved_tags["retrieval"],
            "ranking": saved_tags["ranking"],
        }
        bad = http.post("/recommend", json={"user_id": warm_user, "k": 0})
        assert bad.status_code == 400
        similar = http.post("/similar_items", json={"item_id": "i1", "k": 3}).json()
        assert len(similar["items"]) == 3
        assert http.post("/stages", json={}).json()["ranking"] is True
