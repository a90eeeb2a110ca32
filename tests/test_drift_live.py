"""Drift and age metrics on real servers: they move when the request mix shifts.

The tiny models are stored with their training snapshot and served in the chart's default form
(the gateway with Ranking in its process, Retrieval as its own server, both on 127.0.0.1), with
a short drift window. Each server's /metrics is read: Retrieval's and the gateway's (Ranking).
"""

from __future__ import annotations

import re
import time

import httpx
import pandas as pd
import pytest

from recsys.ops.stack import serve_stack

pytestmark = pytest.mark.serving
WINDOW = 40


@pytest.fixture(scope="module")
def health_tags(tiny_result, tiny_data) -> dict[str, str]:
    from recsys.model.artifacts import save_models
    from recsys.model.health import snapshot_for

    return save_models(tiny_result, snapshot=snapshot_for(tiny_result, tiny_data.interactions))


@pytest.fixture(scope="module")
def stack(health_tags, bentoml_home):
    env = {
        "BENTOML_HOME": str(bentoml_home),
        "RECSYS_RETRIEVAL_MODEL_TAG": health_tags["retrieval"],
        "RECSYS_RANKING_MODEL_TAG": health_tags["ranking"],
        "RECSYS_DRIFT_WINDOW": str(WINDOW),
        "RECSYS_DRIFT_PUBLISH_EVERY": "5",
        "RECSYS_ACCESS_LOG": "false",
    }
    with (
        serve_stack(env=env, form="default") as served,
        httpx.Client(base_url=served.url, timeout=20) as http,
    ):
        yield http, served["Retrieval"].url


def _gauges(text: str, name: str, **labels: str) -> list[float]:
    values = []
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            values.append(float(match.group(2)))
    return values


def _send(stack, users: list[str]) -> dict[str, float]:
    http, retrieval_url = stack
    for user in users:
        response = http.post("/recommend", json={"user_id": user, "k": 10})
        assert response.status_code == 200, response.text
    text = http.get("/metrics").text + httpx.get(f"{retrieval_url}/metrics", timeout=20).text
    return {
        "unknown_live": max(
            _gauges(text, "recsys_drift_share", signal="unknown_users", window="live")
        ),
        "unknown_training": max(
            _gauges(text, "recsys_drift_share", signal="unknown_users", window="training")
        ),
        "retrieval_psi": max(_gauges(text, "recsys_drift_psi", signal="retrieval_score")),
        "ranking_psi": max(_gauges(text, "recsys_drift_psi", signal="ranking_score")),
        "category_psi": max(_gauges(text, "recsys_drift_psi", signal="category_mix")),
        "age": min(_gauges(text, "recsys_model_age_seconds", component="Ranking")),
        "requests": max(_gauges(text, "recsys_drift_window_requests")),
    }


def test_drift_metrics_move_when_the_request_mix_shifts(stack, tiny_data):
    log = tiny_data.interactions
    recent = log[log["timestamp"] > log["timestamp"].max() - pd.Timedelta(days=10)]
    usual = recent["user_id"].sample(WINDOW + 10, random_state=3).tolist()
    calm = _send(stack, usual)
    shifted = _send(stack, [f"new-user-{i}" for i in range(WINDOW + 10)])
    print(f"calm {calm}\nshifted {shifted}")
    assert calm["requests"] == shifted["requests"] == WINDOW
    assert shifted["unknown_live"] == 1.0 > calm["unknown_live"]
    assert calm["unknown_training"] == shifted["unknown_training"]
    assert shifted["retrieval_psi"] > calm["retrieval_psi"]
    assert shifted["category_psi"] > calm["category_psi"]
    # the snapshot's data window ended when the tiny log did: the age is counted from there
    expected_age = time.time() - log["timestamp"].max().timestamp()
    assert shifted["age"] == pytest.approx(expected_age, abs=120)
