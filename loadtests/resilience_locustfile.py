# ruff: noqa: I001  (locust must be imported first: gevent patches the standard library)
"""Locust traffic for the resilience scenarios and the soak: one JSON line per request.

The scenario tests (tests/resilience/) and scripts/soak.py run this file as its own process
(loadtests.request_log.start_load) and read the log afterwards, so every figure they report
(errors, degraded answers, latency during a fault, recovery time) comes from what callers saw.

Settings, from the environment:
- RECSYS_RESILIENCE_LOG: path of the JSON-lines request log (required).
- RECSYS_RESILIENCE_USERS: comma-separated known user ids; a share of cold ids is mixed in.
- RECSYS_RESILIENCE_RATE: requests per second per simulated user; 0 sends without waiting.
- RECSYS_RESILIENCE_SPIKE: `base_users,spike_users,base_s,spike_s,after_s` turns on a spike shape
  (base load, a sudden jump, back to base); without it Locust's -u/-r/-t apply.

A 503 with Retry-After is waited out before the next request, as a well-behaved client must; any
other non-200, an answer that is not valid JSON or holds the wrong number of items is a failure.
"""

import locust  # noqa: F401

import json
import os
import random
import time

import gevent
from locust import FastHttpUser, LoadTestShape, constant, constant_throughput, events, task

K = 10
COLD_SHARE = 0.15
KNOWN_USERS = [u for u in os.environ.get("RECSYS_RESILIENCE_USERS", "").split(",") if u] or [
    f"u{n}" for n in range(50)
]
RATE = float(os.environ.get("RECSYS_RESILIENCE_RATE", "5"))
_log = None


@events.test_start.add_listener
def open_log(environment, **_kwargs) -> None:
    global _log
    # Line-buffered: a run stopped by SIGTERM still leaves every finished request on disk.
    _log = open(os.environ["RECSYS_RESILIENCE_LOG"], "a", buffering=1)  # noqa: SIM115


@events.quitting.add_listener
def close_log(environment, **_kwargs) -> None:
    if _log is not None:
        _log.close()


def check_answer(endpoint: str, response) -> tuple[dict, str | None]:
    """The fields a scenario needs from a 200 answer, and why it is invalid (None when valid)."""
    try:
        body = response.json()
    except (ValueError, TypeError):
        return {}, "answer is not JSON"
    if not isinstance(body, dict):
        return {}, "answer is not a JSON object"
    items = body.get("items")
    fields = {
        "degraded": bool(body.get("degraded")),
        "reasons": [
            f"{r.get('stage')}:{r.get('reason')}" for r in body.get("degraded_reasons", [])
        ],
        "versions": body.get("model_versions", {}),
    }
    if not isinstance(items, list) or len(items) != K:
        return fields, f"{endpoint} returned {len(items or [])} items, expected {K}"
    return fields, None


class ResilienceClient(FastHttpUser):
    """Recommendations for known and cold users, and similar items, with every answer logged."""

    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)
    connection_timeout = 10.0
    network_timeout = 10.0

    def _call(self, endpoint: str, body: dict) -> None:
        started = time.time()
        with self.client.post(endpoint, json=body, catch_response=True) as response:
            elapsed_ms = (time.time() - started) * 1000.0
            status = response.status_code or 0
            retry_after = response.headers.get("retry-after") if response.headers else None
            record = {
                "t": started,
                "ms": round(elapsed_ms, 2),
                "ep": endpoint,
                "status": status,
                "users": self.environment.runner.user_count,
            }
            if status == 200:
                fields, problem = check_answer(endpoint, response)
                record.update(fields)
                if problem:
                    record["error"] = problem
                    response.failure(problem)
                else:
                    response.success()
            else:
                record["retry_after"] = retry_after
                record["error"] = (response.text or str(response.error) or "")[:200]
                # Shed requests are counted by the scenarios, not as Locust failures.
                if status == 503 and retry_after:
                    response.success()
                else:
                    response.failure(f"status {status}")
        if _log is not None:
            _log.write(json.dumps(record) + "\n")
        if status == 503 and retry_after:
            gevent.sleep(float(retry_after))

    def _user(self) -> str:
        if random.random() < COLD_SHARE:
            return f"cold-{random.randrange(10_000)}"
        return random.choice(KNOWN_USERS)

    @task(9)
    def recommend(self) -> None:
        self._call("/recommend", {"user_id": self._user(), "k": K})

    @task(1)
    def similar_items(self) -> None:
        self._call("/similar_items", {"item_id": f"i{random.randrange(1500)}", "k": K})


if os.environ.get("RECSYS_RESILIENCE_SPIKE"):

    class SpikeShape(LoadTestShape):
        """Base load, then a sudden jump to many users, then base load again."""

        base_users, spike_users, base_s, spike_s, after_s = (
            float(v) for v in os.environ["RECSYS_RESILIENCE_SPIKE"].split(",")
        )

        def tick(self):
            run_time = self.get_run_time()
            if run_time < self.base_s:
                return int(self.base_users), self.base_users
            if run_time < self.base_s + self.spike_s:
                return int(self.spike_users), self.spike_users  # all at once: a spike
            if run_time < self.base_s + self.spike_s + self.after_s:
                return int(self.base_users), self.spike_users
            return None
