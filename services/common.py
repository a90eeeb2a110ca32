"""Pieces every service shares: settings, metrics, request-size limit, error responses."""

from __future__ import annotations

import json
import logging
import os

import bentoml

from recsys.serving import ServingSettings

SETTINGS = ServingSettings()
logger = logging.getLogger("recsys.services")

FALLBACKS = bentoml.metrics.Counter(
    name="recsys_fallback_total",
    documentation="Responses served by a fallback, by failed stage and reason.",
    labelnames=["stage", "reason"],
)
CIRCUIT_STATE = bentoml.metrics.Gauge(
    name="recsys_circuit_state",
    documentation="Gateway circuit breaker per stage: 0 closed, 1 open, 2 half-open.",
    labelnames=["stage"],
)
SHED = bentoml.metrics.Counter(
    name="recsys_shed_total",
    documentation="Requests refused with 503 because too many were in flight.",
    labelnames=["component"],
)
MODEL_INFO = bentoml.metrics.Gauge(
    name="recsys_model_info",
    documentation="1 for the model version a service is serving, by service and track.",
    labelnames=["component", "model_version", "track"],
)


# Latency buckets fine enough around the SLOs (tens of milliseconds) for p95/p99 estimates.
LATENCY_BUCKETS = [
    0.002,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.06,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
]


def tracing_config() -> dict:
    """BentoML tracing options from the standard OTEL_* variables plus our sample rate.

    BentoML's sample rate defaults to 0 and ignores OTEL_TRACES_SAMPLER, so it is set here from
    RECSYS_TRACE_SAMPLE_RATE. Without an OTLP endpoint no exporter is configured at all.
    """
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint or SETTINGS.trace_sample_rate <= 0:
        return {"sample_rate": 0.0}
    # The exporter reads the endpoint, headers and timeout from the OTEL_* variables itself.
    return {
        "exporter_type": "otlp",
        "sample_rate": SETTINGS.trace_sample_rate,
        "excluded_urls": ["/metrics", "/readyz", "/livez", "/healthz", "/docs.json"],
        "otlp": {"protocol": "http"},
    }


def install_tracing() -> None:
    """Make BentoML's tracer provider the global one, so `recsys.tracing` spans are exported.

    BentoML builds its provider from the `tracing` config but keeps it to itself; our stage
    spans (ANN search, features, prediction, re-ranking) use the global OpenTelemetry API.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer
    from opentelemetry import trace

    if SETTINGS.trace_sample_rate > 0:
        trace.set_tracer_provider(BentoMLContainer.tracer_provider.get())


def service_config(**extra) -> dict:
    """BentoML service options every service shares (workers, timeout, metric buckets)."""
    return {
        "workers": SETTINGS.workers,
        "tracing": tracing_config(),
        "traffic": {"timeout": SETTINGS.request_timeout_s},
        "metrics": {"enabled": True, "duration": {"buckets": LATENCY_BUCKETS}},
        "logging": {"access": {"enabled": SETTINGS.access_log}},
        **extra,
    }


def packed_model(tag: str):
    """Reference a stored model so `bentoml build` packs it into the Bento.

    A tag that is not in the store yields None instead of failing the import: the service
    then starts, reports the missing model in its log and stays unready.
    """
    reference = bentoml.models.BentoModel(tag)
    return reference if reference.stored is not None else None


class RequestSizeLimit:
    """ASGI middleware: bodies over the limit get 413 before they are read."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                body = json.dumps(
                    {
                        "error": f"request body is {int(length)} bytes; the limit is "
                        f"{self.max_bytes} bytes (RECSYS_MAX_REQUEST_BYTES)"
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class ConcurrencyLimit:
    """ASGI middleware: past `limit` requests in flight, answer 503 + Retry-After at once.

    Shedding early keeps the latency of admitted requests bounded instead of queueing without
    end. Probes and /metrics are never shed. A limit of 0 disables it.
    """

    BYPASS = frozenset({"/metrics", "/readyz", "/livez", "/healthz", "/stages"})

    def __init__(self, app, limit: int, component: str) -> None:
        self.app = app
        self.limit = limit
        self.component = component
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.limit <= 0 or scope["path"] in self.BYPASS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            SHED.labels(self.component).inc()
            message = (
                f"overloaded: {self.in_flight} requests in flight, limit {self.limit}; "
                f"retry after {SETTINGS.retry_after_s} s"
            )
            body = json.dumps({"error": message}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"retry-after", str(SETTINGS.retry_after_s).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def bad_request(ctx: bentoml.Context, message: str, status: int = 400) -> dict:
    """Set an error status on the response and return the error body."""
    ctx.response.status_code = status
    return {"error": message}
