"""The services' configuration: the serving settings (RECSYS_* variables) and the BentoML
options every service shares (workers, timeout, metrics, tracing, access log)."""

from __future__ import annotations

import os

import bentoml

from recsys.serving.settings import ServingSettings

SETTINGS = ServingSettings()
# Paths answered by BentoML itself for Kubernetes and Prometheus: open to all (no stage token),
# never shed, never traced.
PROBE_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/metrics"})

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
    RECSYS_TRACE_SAMPLE_RATE. Without an OTLP endpoint no exporter is configured, and every path
    is excluded from BentoML's OpenTelemetry middleware: its sampler records a span for every
    request even at rate 0 (by design), which costs CPU and exports nothing.
    """
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint or SETTINGS.trace_sample_rate <= 0:
        return {"sample_rate": 0.0, "excluded_urls": [".*"]}
    # The exporter reads the endpoint, headers and timeout from the OTEL_* variables itself.
    return {
        "exporter_type": "otlp",
        "sample_rate": SETTINGS.trace_sample_rate,
        "excluded_urls": sorted(PROBE_PATHS | {"/docs.json"}),
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


def service_config(stage: bool = True, **extra) -> dict:
    """BentoML service options every service shares (workers, timeout, metric buckets, access
    log: `RECSYS_ACCESS_LOG` for the gateway, `RECSYS_STAGE_ACCESS_LOG` for a stage)."""
    access_log = SETTINGS.stage_access_log if stage else SETTINGS.access_log
    return {
        "workers": SETTINGS.workers,
        "tracing": tracing_config(),
        "traffic": {"timeout": SETTINGS.request_timeout_s},
        "metrics": {"enabled": True, "duration": {"buckets": LATENCY_BUCKETS}},
        "logging": {"access": {"enabled": access_log}},
        **extra,
    }


def packed_model(tag: str):
    """Reference a stored model so `bentoml build` packs it into the Bento.

    A tag that is not in the store yields None instead of failing the import: the service
    then starts, reports the missing model in its log and stays unready.
    """
    reference = bentoml.models.BentoModel(tag)
    return reference if reference.stored is not None else None
