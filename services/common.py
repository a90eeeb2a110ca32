"""Pieces every service shares: settings, metrics, request-size limit, the way every API
answers (`respond`: the answer, or the error mapped to its status), the error body."""

from __future__ import annotations

import hmac
import inspect
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import attrs
import bentoml
import orjson
from _bentoml_sdk.service.dependency import Dependency
from pydantic import BaseModel, SecretStr
from starlette.responses import Response

from recsys.errors import http_status
from recsys.model.health import ModelHealth
from recsys.serving.batching import MicroBatcher
from recsys.serving.faults import inject_faults
from recsys.serving.models import BackgroundModel
from recsys.serving.settings import ServingSettings
from services.openapi import ServedContract, served_document
from services.stage_client import StageClient

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
BATCH_SIZE = bentoml.metrics.Histogram(
    name="recsys_batch_size",
    documentation="Requests served together by one batch (micro-batching): one ranking "
    "prediction, or one gateway call to a remote Retrieval.",
    labelnames=["stage"],
    buckets=[1, 2, 3, 4, 6, 8, 12, 16, 32, 64],
)
MODEL_INFO = bentoml.metrics.Gauge(
    name="recsys_model_info",
    documentation="1 for the model version a service is serving, by service and track.",
    labelnames=["component", "model_version", "track"],
)


WORKER_READY = bentoml.metrics.Gauge(
    name="recsys_worker_ready",
    documentation="1 once a worker's models have loaded and passed their self-test, by service "
    "and worker (the latest value of each worker).",
    labelnames=["component", "worker"],
    multiprocess_mode="mostrecent",
)

# ---- model health (issue 15): age and drift against the snapshot saved with the model ----------
MODEL_AGE = bentoml.metrics.Gauge(
    name="recsys_model_age_seconds",
    documentation="Seconds since the end of the served model's data window.",
    labelnames=["component", "model_version", "track"],
)
MODEL_DATA_END = bentoml.metrics.Gauge(
    name="recsys_model_data_end_timestamp_seconds",
    documentation="Unix time of the newest event in the served model's data window.",
    labelnames=["component", "model_version", "track"],
)
DRIFT_PSI = bentoml.metrics.Gauge(
    name="recsys_drift_psi",
    documentation="PSI of a served distribution over the sliding window vs the training snapshot "
    "(retrieval_score, ranking_score, category_mix).",
    labelnames=["component", "model_version", "track", "signal"],
)
DRIFT_SHARE = bentoml.metrics.Gauge(
    name="recsys_drift_share",
    documentation="Share of unknown users / named items unknown to the model, live (sliding "
    "window) and in the training snapshot.",
    labelnames=["component", "model_version", "track", "signal", "window"],
)
DRIFT_REQUESTS = bentoml.metrics.Gauge(
    name="recsys_drift_window_requests",
    documentation="Requests in the drift sliding window (signals mean little below a few hundred).",
    labelnames=["component", "model_version", "track"],
)


def model_health(component: str, model_name: str):
    """The ModelHealth of one served model (recsys.model.health), wired to the gauges above."""
    from recsys.model.artifacts import stored_model
    from recsys.model.health import DriftReading, ModelHealth

    def locate(version: str):
        try:
            model = stored_model(version, model_name, store_dir=SETTINGS.model_dir or None)
            return model.path, model.created
        except Exception:  # a model from elsewhere (tests): no snapshot, no age
            return None, None

    def on_age(version: str, data_end: float, age: float) -> None:
        MODEL_AGE.labels(component, version, SETTINGS.track).set(age)
        MODEL_DATA_END.labels(component, version, SETTINGS.track).set(data_end)

    def on_drift(version: str, reading: DriftReading) -> None:
        labels = (component, version, SETTINGS.track)
        DRIFT_REQUESTS.labels(*labels).set(reading.requests)
        for signal, value in reading.psi.items():
            DRIFT_PSI.labels(*labels, signal).set(value)
        for signal, (live, training) in reading.shares.items():
            DRIFT_SHARE.labels(*labels, signal, "live").set(live)
            DRIFT_SHARE.labels(*labels, signal, "training").set(training)

    return ModelHealth(locate, on_age, on_drift)


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


# Media types a request body may have: data only. BentoML decodes `application/vnd.bentoml+pickle`
# with pickle.loads, which runs whatever code the bytes name, and only refuses it on the entry
# service of a process, so a stage would run it (upstream: bentoml/BentoML#5610). Forms and
# multipart would reach BentoML's form parser, whose errors surface as 500. A later data-only
# format (a columnar body between gateway and stages) is added here, never a code-executing one.
DATA_ONLY_MEDIA_TYPES = frozenset({"application/json"})
# Named in the refusal so a caller sees why; refused like every type not in the list above.
CODE_EXECUTING_MEDIA_TYPES = frozenset(
    {
        "application/vnd.bentoml+pickle",
        "application/python-pickle",
        "application/x-python-pickle",
        "application/x-pickle",
    }
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Paths anyone may call on a stage: Kubernetes probes and Prometheus. Everything else (the APIs,
# the OpenAPI document, the docs UI) needs the stage token.
OPEN_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/metrics"})
STAGE_TOKEN_HEADER = "x-recsys-stage-token"
STAGE_AUTH_FAILURES = bentoml.metrics.Counter(
    name="recsys_stage_auth_failures_total",
    documentation="Stage calls refused with 401: stage token missing or wrong.",
    labelnames=["component", "reason"],
)
REFUSED_MEDIA_TYPES = bentoml.metrics.Counter(
    name="recsys_refused_media_type_total",
    documentation="Requests refused with 415 before decoding, by component and whether the "
    "media type can run code (pickle).",
    labelnames=["component", "code_executing"],
)


def error_body(message: str, kind: str, loc: tuple = ()) -> dict:
    """The body of every error answer (`Error` in `services.openapi`): the message, and one
    detail item shaped like pydantic's validation errors, which BentoML answers for a 400."""
    return {"error": message, "detail": [{"type": kind, "loc": list(loc), "msg": message}]}


async def _refuse(
    send, status: int, message: str, kind: str, loc: tuple = (), headers: tuple = ()
) -> None:
    body = orjson.dumps(error_body(message, kind, loc))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class DataOnlyBodies:
    """ASGI middleware: refuse (415) any request whose body is not a data-only format, before a
    byte of it is read. Outermost of our middlewares on every service, gateway and stages alike.

    Every Content-Type header is checked, not only the first or the last: BentoML reads the
    first, so a request with two of them must not pass with an acceptable second one.
    """

    def __init__(self, app, component: str) -> None:
        self.app = app
        self.component = component

    @staticmethod
    def _has_body(scope, headers) -> bool:
        """POST/PUT/PATCH, or any request announcing a body. A GET with an empty body is let
        through whatever its type (proxies add `application/octet-stream` to probes)."""
        if scope["method"] in BODY_METHODS:
            return True
        if any(name == b"transfer-encoding" for name, _ in headers):
            return True
        length = next((value for name, value in headers if name == b"content-length"), b"0")
        return length.strip() not in (b"", b"0")

    def _refusal(self, scope) -> str | None:
        headers = scope.get("headers") or []
        if not self._has_body(scope, headers):
            return None
        types = [value for name, value in headers if name == b"content-type"]
        if len(types) > 1:
            return "more than one content-type header; send exactly one: application/json"
        if not types:  # BentoML reads a body without a type as JSON
            return None
        media_type = types[0].decode("latin-1").split(";")[0].strip().lower()
        if media_type in DATA_ONLY_MEDIA_TYPES:
            return None
        code = media_type in CODE_EXECUTING_MEDIA_TYPES or "pickle" in media_type
        REFUSED_MEDIA_TYPES.labels(self.component, str(code).lower()).inc()
        if code:
            return (
                f"content type {media_type!r} is refused: decoding it would run code sent over "
                "the network; send application/json"
            )
        return f"content type {media_type!r} is not accepted; send JSON (application/json)"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                loc = ("header", "content-type")
                await _refuse(send, 415, refusal, "unsupported_media_type", loc)
                return
        await self.app(scope, receive, send)


def stage_token() -> bytes:
    """This process's stage token (RECSYS_STAGE_TOKEN), as bytes for the constant-time check;
    never empty (see ensure_stage_token)."""
    ensure_stage_token()
    return SETTINGS.stage_token.get_secret_value().encode()


def ensure_stage_token() -> None:
    """Give this process tree a random stage token when none is configured.

    `bentoml serve` starts the stages as children of the process importing this module, and
    children inherit the environment: gateway and stages then share the token, which no one
    else knows. A stage started on its own (the split form) gets a token of its own instead, so
    it refuses every call until all services are given the same RECSYS_STAGE_TOKEN: secure by
    default, never open to all.
    """
    if SETTINGS.stage_token.get_secret_value():
        return
    token = secrets.token_urlsafe(32)
    os.environ["RECSYS_STAGE_TOKEN"] = token
    SETTINGS.stage_token = SecretStr(token)
    logger.warning(
        "RECSYS_STAGE_TOKEN is not set: generated a random stage token for this process and the "
        "ones it starts. Services started separately (split form, Kubernetes) must all be given "
        "the same RECSYS_STAGE_TOKEN, or the stages refuse the gateway's calls (401)."
    )


class StageTokenRequired:
    """ASGI middleware of a stage: every route but the probes and /metrics needs the stage token
    in the X-Recsys-Stage-Token header (compared in constant time); otherwise 401, counted.

    Independent of the network: a NetworkPolicy that the cluster's network plugin does not
    enforce, or a pod of another release, still cannot call a stage.
    """

    def __init__(self, app, component: str) -> None:
        self.app = app
        self.component = component
        previous = SETTINGS.stage_token_previous.get_secret_value().encode()
        # The current token, and while a rotation is under way the previous one.
        self.accepted = tuple(token for token in (stage_token(), previous) if token)
        self.header = STAGE_TOKEN_HEADER.encode()

    def _valid(self, presented: bytes) -> bool:
        # Every accepted token is compared, so the time taken does not tell which one matched.
        matches = [hmac.compare_digest(presented, token) for token in self.accepted]
        return any(matches)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented = [value for name, value in scope.get("headers") or [] if name == self.header]
        if len(presented) == 1 and self._valid(presented[0]):
            await self.app(scope, receive, send)
            return
        reason = "missing" if not presented else "invalid"
        STAGE_AUTH_FAILURES.labels(self.component, reason).inc()
        message = (
            f"stage token {reason}: {self.component} answers only the gateway, which sends the "
            f"shared secret RECSYS_STAGE_TOKEN in the {STAGE_TOKEN_HEADER} header"
        )
        await _refuse(
            send,
            401,
            message,
            f"stage_token_{reason}",
            ("header", STAGE_TOKEN_HEADER),
            ((b"www-authenticate", b"RecsysStageToken"),),
        )


class RequestSizeLimit:
    """ASGI middleware: before BentoML parses a body, refuse one over the limit (413), with or
    without a Content-Length header."""

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
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await _refuse(send, 413, self._too_large(int(length)), "body_too_large", ("body",))
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
                message = self._too_large(size) + " (at least)"
                await _refuse(send, 413, message, "body_too_large", ("body",))
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
            retry_after = (b"retry-after", str(SETTINGS.retry_after_s).encode())
            await _refuse(send, 503, message, "overloaded", headers=(retry_after,))
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class WorkerReadiness:
    """Readiness of the server, not only of the worker a probe happens to reach.

    BentoML's workers share one socket, so a readiness probe reaches any one of them. A pod
    whose first worker has loaded its models would be marked ready while another worker still
    loads, and that worker's requests would get the fallbacks. Each worker publishes its own
    state (`recsys_worker_ready`, in BentoML's Prometheus multiprocess directory) and answers
    ready once every worker of its service (RECSYS_WORKERS) has. Outside a BentoML server (no
    multiprocess directory) the worker's own readiness decides.
    """

    def __init__(self, component: str, own_ready: Callable[[], bool]) -> None:
        self.component, self.own_ready = component, own_ready
        self.worker = str(bentoml.server_context.worker_index or 0)
        self.directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.every_worker_seen = not self.directory
        WORKER_READY.labels(component, self.worker).set(0)
        threading.Thread(target=self._publish, name=f"{component}-ready", daemon=True).start()

    def _publish(self) -> None:
        while not self.own_ready():
            time.sleep(0.1)
        WORKER_READY.labels(self.component, self.worker).set(1)

    def __call__(self) -> bool:
        if not self.own_ready():
            return False
        if not self.every_worker_seen:
            # Once every worker has been ready, each worker's own state decides (a few ms of
            # file reads per probe only until then).
            self.every_worker_seen = len(self._ready_workers()) >= SETTINGS.workers
        return self.every_worker_seen

    def _ready_workers(self) -> set[str]:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, self.directory)
        return {
            sample.labels["worker"]
            for family in registry.collect()
            if family.name == "recsys_worker_ready"
            for sample in family.samples
            if sample.labels.get("component") == self.component and sample.value == 1
        }


def micro_batcher(batch, stage: str) -> MicroBatcher | None:
    """The process's micro-batcher for one stage's calls (`RECSYS_BATCHING`, `BATCH_MAX`,
    `BATCH_WAIT_MS`), with its batch sizes in `recsys_batch_size{stage}`; None when off."""
    if not SETTINGS.batching:
        return None
    return MicroBatcher(
        batch,
        SETTINGS.batch_max,
        SETTINGS.batch_wait_ms / 1000,
        on_batch=BATCH_SIZE.labels(stage).observe,
    )


class LocalStageHandle:
    """A stage in the gateway's process, as the pipeline sees it: its service object, whose
    `answer_` methods the subclass calls directly (no HTTP hop, serialisation or validation)."""

    in_process = True

    def __init__(self, service: StageService) -> None:
        self.service = service

    @property
    def ready(self) -> bool:
        return self.service.model_ready()

    async def is_ready(self, timeout: float | None = None) -> bool:
        return self.ready


class RemoteStageHandle:
    """A stage in its own process, as the pipeline sees it: reached over HTTP (`StageClient`:
    JSON bodies, the stage token, W3C trace context)."""

    in_process = False

    def __init__(self, http: StageClient) -> None:
        self.http = http

    async def is_ready(self, timeout: float | None = None) -> bool:
        return await self.http.is_ready(timeout)

    async def close(self) -> None:
        await self.http.close()


class StageService:
    """A stage serving one model that loads in the background; ready after its self-test.

    Each API is a plain `answer_<api>` method (arguments in, dict out, ModelNotReady while the
    model is not loaded) wrapped by a thin `@bentoml.api` method that answers with `respond`:
    the gateway calls the `answer_` methods directly when the stage runs in its process
    (`LocalRetrieval`, `LocalRanking`).
    """

    component: str  # Retrieval / Ranking
    loaded: BackgroundModel
    health: ModelHealth

    def start_loading(self, load, self_test, model_name: str) -> None:
        install_tracing()
        self.health = model_health(self.component, model_name)
        self.loaded = BackgroundModel(
            self.component.lower(), load, self_test, SETTINGS.fault_load_delay_s
        )
        self.readiness = WorkerReadiness(self.component, self.model_ready)

    def __is_ready__(self) -> bool:
        return self.readiness()

    def model_ready(self) -> bool:
        """This worker's model has loaded and passed its self-test."""
        if self.loaded.ready:
            MODEL_INFO.labels(self.component, self.loaded.version, SETTINGS.track).set(1)
            self.health.refresh(self.loaded.version)  # the age gauge moves with the probes
        return self.loaded.ready


async def settled(answer):
    """The value of an `answer_` method: returned as is, or awaited when it is a coroutine."""
    return await answer if inspect.isawaitable(answer) else answer


def json_answer(payload: dict, status: int = 200) -> Response:
    """An answer encoded with orjson, in one body with its length. BentoML would validate and
    dump it through pydantic, encode it with the standard library, build a JSON schema to find
    its media type and stream it in chunks: about a third of a request's CPU. The declared
    return type, and so the OpenAPI document, stay what the API says."""
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


async def respond(answer: Callable[..., dict | Awaitable[dict]], **arguments: Any) -> Response:
    """How every API of every service answers: `answer(**arguments)` as JSON, or the error it
    raised as the status `recsys.errors.http_status` names (the one error -> status mapping),
    with the error body every service uses."""
    try:
        await inject_faults(SETTINGS)
        return json_answer(await settled(answer(**arguments)))
    except Exception as exc:
        return error_answer(exc)


def error_answer(exc: Exception) -> Response:
    """The HTTP answer to an error raised while serving (see `respond`)."""
    status = http_status(exc)
    headers = {}
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        headers["retry-after"] = str(SETTINGS.retry_after_s)
    if status >= 500 and status != HTTPStatus.SERVICE_UNAVAILABLE:
        logger.exception("unexpected error while serving a request")
        message, kind = "unexpected error; the server log has the details", "internal_error"
    else:
        message = str(exc)
        kind = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
    return Response(
        orjson.dumps(error_body(message, kind)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


@attrs.define
class StageDependency(Dependency):
    """`bentoml.depends` for a stage, reached with JSON and the stage token.

    Declaring the dependency is what makes `bentoml serve` start the stages and `--depends
    Name=url` point at them. A remote stage is then called through `remote(StageClient(url))`
    (e.g. `RetrievalClient`: JSON, the X-Recsys-Stage-Token header, trace context) instead of
    BentoML's proxy, which speaks pickle by default and spends a third of the gateway's CPU on
    per-call schema work in JSON mode. A dependency left out of `--depends` runs in this
    process, wrapped by `local(instance)` (e.g. `LocalRetrieval`), with no HTTP.
    """

    local: Callable[[Any], Any] | None = None  # wraps the stage's instance in this process
    remote: Callable[[StageClient], Any] | None = None  # wraps an HTTP client of the stage

    def get(self, *args, **kwargs):
        from bentoml._internal.configuration.containers import BentoMLContainer

        if self._resolved is not None:
            return self._resolved
        url = BentoMLContainer.remote_runner_mapping.get().get(self.on.name)
        if url is None:
            return self.local(super().get(*args, **kwargs))
        token = {STAGE_TOKEN_HEADER: stage_token().decode()}
        return self.remote(StageClient(self.on.name, url, token))


def depends_on_stage(stage, local: Callable[[Any], Any], remote: Callable[[StageClient], Any]):
    """The gateway's handle on a stage service: `local(instance)` when the stage runs in this
    process, `remote(StageClient(url))` when `--depends` names it (see StageDependency)."""
    return StageDependency(on=stage, local=local, remote=remote)


def protect(
    service,
    component: str,
    *,
    stage: bool,
    max_in_flight: int,
    answers: dict[str, type[BaseModel]] | None = None,
) -> None:
    """Add every service's ASGI middlewares, outermost first: refuse code-executing bodies (415),
    then (stages) calls without the stage token (401), then oversized bodies (413), then shed
    load past `max_in_flight` (503). Each check runs before BentoML reads the body. Innermost,
    `/docs.json` serves the contract as it is (`services.openapi`; `answers`: the declared
    answer of each API, by name)."""
    ensure_stage_token()
    service.add_asgi_middleware(DataOnlyBodies, component=component)
    if stage:
        service.add_asgi_middleware(StageTokenRequired, component=component)
    service.add_asgi_middleware(RequestSizeLimit, max_bytes=SETTINGS.max_request_bytes)
    service.add_asgi_middleware(ConcurrencyLimit, limit=max_in_flight, component=component)

    def document() -> dict:
        return served_document(service.openapi_spec.asdict(), stage=stage, answers=answers)

    service.add_asgi_middleware(ServedContract, build=document)
