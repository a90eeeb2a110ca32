"""The few calls canary analysis makes to the Prometheus HTTP API (`/api/v1/query`).

Standard library only, so `recsys rollout analyze` starts fast and needs no extra package.
Every call has a timeout; a refused connection, a timeout or a non-Prometheus answer is a
`PrometheusUnreachableError`, a query Prometheus rejects a `PrometheusQueryError`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from recsys.rollout.analysis import (
    AnalysisReport,
    AnalysisTarget,
    Thresholds,
    build_report,
)
from recsys.rollout.errors import PrometheusQueryError, PrometheusUnreachableError


class PrometheusClient:
    """Instant queries against one Prometheus server.

    Args:
        url: base URL, e.g. http://prometheus-operated.monitoring.svc:9090.
        timeout_s: per-request timeout (also sent to Prometheus as the query timeout).
    """

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise PrometheusUnreachableError(
                f"--prometheus-url must be an http(s) URL like http://127.0.0.1:9090, got {url!r}"
            )
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        request = urllib.request.Request(f"{self.url}{path}?{query}", method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            # Prometheus answers 400/422/503 with a JSON error body.
            body = exc.read()
            payload = _json_or_none(body)
            if payload and payload.get("status") == "error":
                raise PrometheusQueryError(
                    f"Prometheus at {self.url} rejected the query "
                    f"({payload.get('errorType', exc.code)}): {payload.get('error', '')}; "
                    f"query: {params.get('query', '')}"
                ) from exc
            raise PrometheusUnreachableError(
                f"Prometheus at {self.url} answered HTTP {exc.code} to {path}: is this "
                "the Prometheus server URL?"
            ) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusUnreachableError(
                f"cannot reach Prometheus at {self.url} ({reason}); check --prometheus-url "
                "or RECSYS_PROMETHEUS_URL (e.g. kubectl -n monitoring port-forward "
                "svc/prometheus-operated 9090)"
            ) from exc
        payload = _json_or_none(body)
        if not payload or "status" not in payload:
            raise PrometheusUnreachableError(
                f"{self.url}{path} did not answer like the Prometheus HTTP API"
            )
        if payload["status"] != "success":
            raise PrometheusQueryError(
                f"Prometheus rejected the query: {payload.get('error', payload)}"
            )
        return payload["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant vector query; returns Prometheus' `result` list (metric + value)."""
        params = {"query": promql, "timeout": f"{max(1, int(self.timeout_s))}s"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data.get("resultType") != "vector":
            raise PrometheusQueryError(
                f"expected a vector from {promql!r}, got {data.get('resultType')}"
            )
        return data["result"]

    def by_label(self, promql: str, label: str, at: float | None = None) -> dict[str, float]:
        """Query and map each result's `label` value to its sample value (NaN kept)."""
        values: dict[str, float] = {}
        for sample in self.query(promql, at):
            key = sample["metric"].get(label, "")
            values[key] = float(sample["value"][1])
        return values


def _json_or_none(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def analyze(
    client: PrometheusClient, target: AnalysisTarget, limits: Thresholds, at: float | None = None
) -> AnalysisReport:
    """Run every query of `target` at one instant and decide.

    Args:
        client: the Prometheus to ask.
        target: component, window and label selector.
        limits: thresholds (see Thresholds.from_slo).
        at: evaluation time (Unix seconds); default now. The window ends there.

    Returns:
        The report with its verdict, checks, numbers and queries.
    """
    at = time.time() if at is None else at
    per_query: dict[str, dict[str, float | None]] = {}
    versions: list[dict[str, str]] = []
    for name, promql in target.queries().items():
        if name == "model_info":
            versions = [
                {
                    k: v
                    for k, v in s["metric"].items()
                    if k in {"track", "component", "model_version"}
                }
                for s in client.query(promql, at)
            ]
            continue
        per_query[name] = dict(client.by_label(promql, "track", at))
    return build_report(target, per_query, limits, evaluated_at=at, model_versions=versions)
