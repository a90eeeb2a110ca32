"""OpenTelemetry spans for the work inside each stage, and privacy-safe user references.

Only the OpenTelemetry API is used here: without a configured tracer provider every span is a
no-op, so tracing off costs next to nothing. Raw user ids never go into spans or logs; they are
replaced by a keyed hash (HMAC-SHA256) that correlates requests of one user without revealing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)


class _RecsysTracer:
    """The `recsys` tracer, free when tracing is off.

    Without a tracer provider OpenTelemetry's no-op span still builds a context manager and
    attaches a context: about 8 us a span, eight spans a `/recommend`. Here that case is one
    shared null context (1.4 us); with a provider installed (`services.config.install_tracing`,
    a test's in-memory exporter), spans are OpenTelemetry's.
    """

    _no_span = contextlib.nullcontext(trace.INVALID_SPAN)

    def __init__(self) -> None:
        self._tracer = trace.get_tracer("recsys")

    def start_as_current_span(
        self, name: str, **options: Any
    ) -> contextlib.AbstractContextManager[trace.Span]:
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return self._no_span
        return self._tracer.start_as_current_span(name, **options)


tracer = _RecsysTracer()

# RECSYS_TRACE_HASH_KEY: the HMAC key of user ids in spans (random per process when unset). Read
# here, once per process, by the one function that hashes ids (`hash_id`).
_HASH_KEY = (os.environ.get("RECSYS_TRACE_HASH_KEY") or secrets.token_hex(32)).encode()

__all__ = ["SpanKind", "hash_id", "mark_error", "set_attributes", "tracer", "untraced"]


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Run a block under a non-sampled parent: its spans are dropped (self-tests, warm-ups)."""
    parent = NonRecordingSpan(
        SpanContext(trace_id=1, span_id=1, is_remote=False, trace_flags=TraceFlags(0))
    )
    with trace.use_span(parent):
        yield


def hash_id(value: str) -> str:
    """A keyed 16-hex-digit hash of an id (stable across services sharing the key)."""
    return hmac.new(_HASH_KEY, value.encode(), hashlib.sha256).hexdigest()[:16]


def set_attributes(span: trace.Span | None = None, **attributes: object) -> None:
    """Set `recsys.<name>` attributes on a span (the current one by default), skipping None.

    A value that costs something to compute can be given as a function of no arguments
    (`user_hash=lambda: hash_id(user_id)`): it is called only when the span records.
    """
    span = span or trace.get_current_span()
    if not span.is_recording():
        return
    for name, value in attributes.items():
        if callable(value):
            value = value()
        if value is not None:
            span.set_attribute(f"recsys.{name}", value)


def mark_error(span: trace.Span, exc: BaseException) -> None:
    """Record an exception on a span and set its status to error."""
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
