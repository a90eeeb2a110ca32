"""A small OTLP/HTTP trace receiver: for looking at traces locally and for the tracing tests.

It accepts `POST /v1/traces` with an `ExportTraceServiceRequest` protobuf (what the
OpenTelemetry SDK's OTLP/HTTP exporter sends) and keeps the decoded spans.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

KIND_NAMES = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass
class ReceivedSpan:
    """One decoded span with its resource's service name and attributes."""

    service: str
    resource: dict
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict
    status_code: int
    events: list[str]
    duration_ms: float


def _value(any_value) -> object:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def decode(body: bytes) -> list[ReceivedSpan]:
    """Spans of one ExportTraceServiceRequest."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        resource=resource,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status_code=span.status.code,
                        events=[event.name for event in span.events],
                        duration_ms=(span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
                    )
                )
    return spans


@dataclass
class OtlpReceiver:
    """Collected export requests (raw bytes) and their decoded spans."""

    raw: list[bytes] = field(default_factory=list)
    spans: list[ReceivedSpan] = field(default_factory=list)
    port: int = 0
    on_spans: Callable[[list[ReceivedSpan]], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, body: bytes) -> None:
        spans = decode(body)
        with self._lock:
            self.raw.append(body)
            self.spans.extend(spans)
        if self.on_spans:
            self.on_spans(spans)

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0):
        """Block until `predicate(spans)` holds; AssertionError listing what arrived otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(list(self.spans)):
                    return
            time.sleep(0.2)
        names = sorted({(s.service, s.name) for s in self.spans})
        raise AssertionError(f"spans never matched; received {names}")


@contextlib.contextmanager
def run_receiver(port: int = 0, host: str = "127.0.0.1", on_spans=None) -> Iterator[OtlpReceiver]:
    """Serve an OTLP/HTTP trace endpoint in a background thread."""
    receiver = OtlpReceiver(on_spans=on_spans)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status = 200
            if self.path.rstrip("/") == "/v1/traces":
                try:
                    receiver.handle(body)
                except Exception:  # a malformed export must not kill the receiver
                    status = 400
            self.send_response(status)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            return

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def format_span(span: ReceivedSpan) -> str:
    """One line: trace, service, kind, name, duration, status and recsys.* attributes."""
    attributes = " ".join(
        f"{k.removeprefix('recsys.')}={v}"
        for k, v in span.attributes.items()
        if k.startswith("recsys.")
    )
    status = " ERROR" if span.status_code == 2 else ""
    return (
        f"{span.trace_id[:12]} {span.service:<12} {KIND_NAMES.get(span.kind, '?'):<8} "
        f"{span.name:<24} {span.duration_ms:8.2f} ms{status} {attributes}"
    )
