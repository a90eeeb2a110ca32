"""Fixtures of the rollout tests: tools (helm, prometheus), stub servers, base chart values.

A missing helm or prometheus skips the tests that need it locally, and fails them under
CI=true, where the project promises they run (scripts/install-helm.sh and
scripts/install-prometheus.sh install them).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "recsys"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _require(name: str, path: str | None, hint: str) -> str:
    if path:
        return path
    message = f"{name} not found; {hint}"
    if _in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm_path() -> str:
    """The helm binary (PATH or .tools/bin/helm)."""
    local = REPO_ROOT / ".tools" / "bin" / "helm"
    found = shutil.which("helm") or (str(local) if os.access(local, os.X_OK) else None)
    return _require("helm", found, "run scripts/install-helm.sh")


@pytest.fixture(scope="session")
def prometheus_path() -> str:
    """The Prometheus server binary (Debian package `prometheus`)."""
    from recsys.rollout.localstack import find_prometheus

    return _require("prometheus", find_prometheus(), "run scripts/install-prometheus.sh (as root)")


class StubServer:
    """A real HTTP server on 127.0.0.1 whose GET answers come from a Python function.

    `respond(path_with_query) -> (status, json_body)`; every request path is recorded.
    """

    def __init__(self, respond: Callable[[str], tuple[int, Any]]) -> None:
        self.requests: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.requests.append(self.path)
                status, body = respond(self.path)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def stub_server() -> Iterator[Callable[[Callable[[str], tuple[int, Any]]], StubServer]]:
    """Factory of StubServers, all shut down after the test."""
    started: list[StubServer] = []

    def make(respond: Callable[[str], tuple[int, Any]]) -> StubServer:
        server = StubServer(respond).__enter__()
        started.append(server)
        return server

    yield make
    for server in started:
        server.__exit__()


def vector(by_track: dict[str, float]) -> dict[str, Any]:
    """A Prometheus instant-query answer with one sample per track."""
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"track": track}, "value": [1_700_000_000.0, repr(float(value))]}
                for track, value in by_track.items()
            ],
        },
    }


def prometheus_answers(numbers: dict[str, dict[str, float]]) -> Callable[[str], tuple[int, Any]]:
    """Stub Prometheus answering each analysis query from {signal: {track: value}}.

    The query is recognised by what it asks for (see AnalysisTarget.queries).
    """
    from urllib.parse import parse_qs, urlparse

    def respond(path: str) -> tuple[int, Any]:
        url = urlparse(path)
        if url.path != "/api/v1/query":
            return 404, {"status": "error", "error": "not found"}
        query = parse_qs(url.query).get("query", [""])[0]
        if query == "vector(1)":
            return 200, vector({"": 1})
        if "recsys_model_info" in query:
            return 200, {"status": "success", "data": {"resultType": "vector", "result": []}}
        for marker, signal in (
            ("histogram_quantile(0.95", "p95"),
            ("histogram_quantile(0.99", "p99"),
            ('http_response_code=~"5.."', "errors"),
            ("recsys_fallback_total", "fallbacks"),
            ("endpoint=~", "api_requests"),
        ):
            if marker in query:
                return 200, vector(numbers.get(signal, {}))
        return 200, vector(numbers.get("requests", {}))

    return respond


HEALTHY = {
    "requests": {"stable": 2000, "canary": 500},
    "api_requests": {"stable": 2000, "canary": 500},
    "errors": {"stable": 0, "canary": 0},
    "p95": {"stable": 0.020, "canary": 0.021},
    "p99": {"stable": 0.045, "canary": 0.047},
    "fallbacks": {"stable": 2, "canary": 1},
}


@pytest.fixture(scope="session")
def healthy_numbers() -> dict[str, dict[str, float]]:
    """Prometheus numbers of a healthy canary (pass against the real slo.yaml)."""
    return json.loads(json.dumps(HEALTHY))


@pytest.fixture(scope="session")
def prometheus_stub():
    """prometheus_answers, for tests that build a stub Prometheus."""
    return prometheus_answers
