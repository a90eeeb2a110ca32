"""Pieces every service shares: settings, metrics, request-size limit, error responses."""

from __future__ import annotations

import json
import logging
import os

import bentoml

from recsys.serving import BackgroundModel, ServingSettings

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
        # Read by the *caller* of this service: BentoML's client otherwise closes its session,
        # in-flight calls included, after every 100 requests.
        "runner_connection": {"max_requests": 1_000_000_000},
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


# Media types the APIs take: JSON from callers, BentoML's pickle between gateway and stages
# (BentoML itself refuses pickle on the public gateway). Anything else, forms and multipart
# included, would reach BentoML's form parser, whose errors surface as 500.
ACCEPTED_MEDIA_TYPES = frozenset({"application/json", "application/vnd.bentoml+pickle"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def _refuse(send, status: int, message: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"error": message}).encode()})


class RequestSizeLimit:
    """ASGI middleware: before BentoML parses a body, refuse one over the limit (413), with or
    without a Content-Length header, and a media type the APIs do not take (415)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: int) -> str:
        return (
            f"request body is {size} bytes; the limit is "
            f"{self.max_bytes} bytes (RECSYS_MAX_REQUEST_BYTES)"
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"application/json").decode("latin-1")
        media_type = content_type.split(";")[0].strip().lower()
        if media_type not in ACCEPTED_MEDIA_TYPES:
            await _refuse(send, 415, f"content type {media_type!r} is not accepted; send JSON")
            return
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await _refuse(send, 413, self._too_large(int(length)))
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): read at most the limit here, then hand the body on.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await _refuse(send, 413, self._too_large(size) + " (at least)")
                return
            if not message.get("more_body"):
                break
        buffered = iter(messages)

        async def replay():
            return next(buffered, None) or await receive()

        await self.app(scope, replay, send)


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


class StageService:
    """A stage serving one model that loads in the background; ready after its self-test."""

    component: str  # Retrieval / Ranking
    loaded: BackgroundModel

    def start_loading(self, load, self_test) -> None:
        install_tracing()
        self.loaded = BackgroundModel(
            self.component.lower(), load, self_test, SETTINGS.fault_load_delay_s
        )

    def __is_ready__(self) -> bool:
        if self.loaded.ready:
            MODEL_INFO.labels(self.component, self.loaded.version, SETTINGS.track).set(1)
        return self.loaded.ready


def bad_request(ctx: bentoml.Context, message: str, status: int = 400) -> dict:
    """Set an error status on the response and return the error body."""
    ctx.response.status_code = status
    return {"error": message}
