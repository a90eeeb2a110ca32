"""The services' Prometheus metrics (BentoML's multiprocess registry), and the model-health
gauges wired to `recsys.model.health.ModelHealth`."""

from __future__ import annotations

import bentoml

from recsys.model.artifacts import stored_model
from recsys.model.health import DriftReading, ModelHealth
from services.config import SETTINGS

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
