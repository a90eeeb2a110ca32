"""The three BentoML services as real servers on 127.0.0.1, in every deployment form."""

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

from recsys.ops.stack import (
    REPO_ROOT,
    STAGES,
    free_port,
    http_status,
    serve_stack,
    stage_token,
    start_service,
)

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def stack(saved_tags, bentoml_home):
    with serve_stack(env={"BENTOML_HOME": str(bentoml_home)}) as server:
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
    ("/recommend", {"user_id": "u1", "k": 2.5}, 400, "k", "valid integer"),
    # Strict types, as the OpenAPI document states them: a numeric string is not an integer.
    ("/recommend", {"user_id": "u1", "k": "10"}, 400, "k", "valid integer"),
    ("/recommend", {"user_id": "u1", "k": True}, 400, "k", "valid integer"),
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


def test_concurrent_requests_are_batched_and_answered_alike(stack, client, tiny_result):
    """Every request passes through exactly one retrieval batch (one HTTP call to Retrieval
    for all requests waiting together) and one ranking batch, and gets the answer it gets
    alone."""
    from concurrent.futures import ThreadPoolExecutor

    model = tiny_result.retrieval
    users = [str(model.users.ids[u]) for u in range(24)]
    alone = {user: _recommend(client, user_id=user, k=5)["items"] for user in users}
    before = client.get("/metrics").text
    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(lambda user: _recommend(client, user_id=user, k=5)["items"], users)
        together = dict(zip(users, answers, strict=True))
    after = client.get("/metrics").text
    assert together == alone
    for stage in ("retrieval", "ranking"):
        summed = [
            _metric_total(text, "recsys_batch_size_sum", stage=stage) for text in (before, after)
        ]
        assert summed[1] - summed[0] == len(users), stage


def offline_top_k(tiny_result, user_ids: list[str], k: int) -> dict[str, list[str]]:
    """The evaluation's served top k (`recsys.model.evaluate.recommend_all`), as item ids."""
    from recsys.model.evaluate import recommend_all

    retrieval = tiny_result.retrieval
    lists, _ = recommend_all(retrieval, tiny_result.ranker, user_ids, k, num_candidates=200)
    return {
        user: retrieval.items.ids[order].tolist()
        for user, order in zip(user_ids, lists["served"], strict=True)
    }


def served_top_k(http: httpx.Client, user_ids: list[str], k: int) -> dict[str, list[str]]:
    answers = {}
    for user in user_ids:
        answer = http.post("/recommend", json={"user_id": user, "k": k}).json()
        assert answer["degraded"] is False, answer
        answers[user] = [item["item_id"] for item in answer["items"]]
    return answers


def _metric_total(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("form", ["split", "single"])
def test_every_form_serves_the_offline_top_k(saved_tags, bentoml_home, tiny_result, form):
    """Ranking over HTTP (split) and in the gateway (single) answer exactly what the offline
    evaluation ranks (category cap off, which evaluation does not apply)."""
    model = tiny_result.retrieval
    warm = [str(model.users.ids[u]) for u in range(len(model.users)) if not model.is_cold(u)]
    users = [*warm[:15], "a-user-nobody-knows"]
    env = {"BENTOML_HOME": str(bentoml_home), "RECSYS_CATEGORY_CAP": "0"}
    with (
        serve_stack(env=env, form=form) as stack,
        httpx.Client(base_url=stack.url, timeout=20) as http,
    ):
        assert set(stack.servers) == {"Recommender", *({"split": STAGES}.get(form, ()))}
        assert served_top_k(http, users, 10) == offline_top_k(tiny_result, users, 10)
        answer = http.post("/recommend", json={"user_id": users[0], "k": 5}).json()
        order = tiny_result.ranker.serving_order
        assert answer["model_versions"] == {
            "retrieval": saved_tags["retrieval"],
            "ranking": saved_tags["ranking"],
            **({} if order == "ranker" else {"ranking_order": f"{order} (ranker off)"}),
        }
        if form == "split":  # the gateway called the Ranking process, not a copy of its own
            ranked = http_get_metrics(stack["Ranking"].url)
            calls = _metric_total(ranked, "bentoml_service_request_total", endpoint="/rank")
            assert calls >= len(users) + 1
        similar = http.post("/similar_items", json={"item_id": users[0], "k": 3})
        assert similar.status_code == 200


def http_get_metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


@pytest.mark.parametrize(
    ("form", "dead_stage", "expected_versions"),
    [("split", "Ranking", {"retrieval"}), ("default", "Retrieval", {"popularity", "ranking"})],
)
def test_dead_stage_falls_back_without_5xx(
    saved_tags, bentoml_home, warm_user, form, dead_stage, expected_versions
):
    dead = {dead_stage: f"http://127.0.0.1:{free_port()}"}
    env = {"BENTOML_HOME": str(bentoml_home)}
    with (
        serve_stack(env=env, form=form, depends=dead, wait_stages=False) as stack,
        httpx.Client(base_url=stack.url, timeout=20) as http,
    ):
        assert http_status(f"{stack.url}/readyz") == 200
        before = _metric_total(
            http.get("/metrics").text, "recsys_fallback_total", stage=dead_stage.lower()
        )
        answers = [http.post("/recommend", json={"user_id": warm_user, "k": 5}) for _ in range(3)]
        assert all(a.status_code == 200 for a in answers)
        body = answers[0].json()
        assert body["degraded"] is True and len(body["items"]) == 5
        assert body["degraded_reasons"] == [{"stage": dead_stage.lower(), "reason": "unavailable"}]
        assert set(body["model_versions"]) == expected_versions
        after = _metric_total(
            http.get("/metrics").text, "recsys_fallback_total", stage=dead_stage.lower()
        )
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
        # As /docs.json declares it: the one error body, and when to come back.
        assert response.json()["detail"][0]["type"] == "model_not_ready"
        assert int(response.headers["retry-after"]) >= 1
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


# Last in the module: it stores another ranking model version (the store's `latest` changes).
@pytest.mark.parametrize("order", ["item", "ranker"])
def test_the_served_order_is_the_offline_one_for_every_choice(
    saved_tags, bentoml_home, tiny_result, order
):
    """Whatever order training chose (the ranker's or a source's with the ranker off), the
    split stack answers what the offline evaluation measures, and says which order it was."""
    import dataclasses

    from recsys.model.artifacts import save_models

    ranker = dataclasses.replace(
        tiny_result.ranker, info={**tiny_result.ranker.info, "serving_order": order}
    )
    result = dataclasses.replace(tiny_result, ranker=ranker)
    tags = save_models(result)
    model = tiny_result.retrieval
    warm = [str(model.users.ids[u]) for u in range(len(model.users)) if not model.is_cold(u)]
    users = [*warm[:15], "a-user-nobody-knows"]
    env = {
        "BENTOML_HOME": str(bentoml_home),
        "RECSYS_CATEGORY_CAP": "0",
        "RECSYS_RETRIEVAL_MODEL_TAG": tags["retrieval"],
        "RECSYS_RANKING_MODEL_TAG": tags["ranking"],
    }
    with (
        serve_stack(env=env, form="split") as stack,
        httpx.Client(base_url=stack.url, timeout=20) as http,
    ):
        assert served_top_k(http, users, 10) == offline_top_k(result, users, 10)
        versions = http.post("/recommend", json={"user_id": users[0], "k": 5}).json()[
            "model_versions"
        ]
    assert versions.get("ranking_order") == (None if order == "ranker" else "item (ranker off)")
    assert versions["ranking"] == tags["ranking"]
