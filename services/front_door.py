"""The front door of every service: the one ASGI middleware between BentoML's server and its
router, which checks each request and answers the APIs itself.

In order, each before a byte of the body is read:
1. a body that is not data-only JSON: 415 (pickle would run code sent over the network);
2. on a stage, no valid stage token: 401 (`services.stage_token`);
3. a body over RECSYS_MAX_REQUEST_BYTES: 413;
4. past `max_in_flight` requests in flight: 503 + Retry-After at once (shed, counted).
Then `GET /docs.json` answers the served contract (`services.openapi`), and `POST /<api>` is
answered here: the body validated by the API's own input model (`model_validate_json`, exactly
as BentoML's JSON serde does), the API's function awaited with the values, its response sent.
No IO descriptor, serde, request object, router, context middleware or background task runs
per request. Probes, /metrics and the docs UI go on to BentoML.

BentoML's own middlewares stay outside: request metrics (the SLO's source), OpenTelemetry (a
server span per request only when an exporter is configured: `services.config.tracing_config`)
and the traffic timeout.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bentoml
import orjson
from pydantic import BaseModel, ValidationError

from services.answers import refuse, send_json
from services.config import PROBE_PATHS, SETTINGS
from services.metrics import REFUSED_MEDIA_TYPES, SHED, STAGE_AUTH_FAILURES
from services.openapi import served_document
from services.stage_token import STAGE_TOKEN_HEADER, TokenCheck, ensure_stage_token

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
DOCUMENT_PATH = "/docs.json"
# Never shed: the probes, /metrics and the gateway's own view of its stages.
NEVER_SHED = PROBE_PATHS | {"/stages"}


class BodyTooLarge(Exception):
    """A request body went over the limit while it was read (no Content-Length)."""


@dataclass(frozen=True)
class ServedAPI:
    """One `@bentoml.api` method as the front door calls it."""

    name: str
    validate: Callable[[bytes], BaseModel]  # the API's input model's `model_validate_json`
    fields: tuple[str, ...]
    function: Callable[..., Any]  # the undecorated method: (instance, **values) -> Response


class ServedAPIs:
    """The APIs of one service by path, and the service instance they run on: bound by the
    startup hook `install_front_door` adds, once BentoML has made the instance."""

    def __init__(self) -> None:
        self.by_path: dict[str, ServedAPI] = {}
        self.instance: Any = None

    @classmethod
    def of(cls, service) -> ServedAPIs:
        """The APIs of a `@bentoml.service` class."""
        apis = cls()
        for name, method in service.apis.items():
            if method.batchable or method.is_task or method.ctx_param is not None:
                raise TypeError(f"{name}: the front door serves plain async APIs only")
            if not inspect.iscoroutinefunction(method.func):
                raise TypeError(f"{name}: the front door serves async APIs only")
            spec = method.input_spec
            apis.by_path[method.route] = ServedAPI(
                name, spec.model_validate_json, tuple(spec.model_fields), method.func
            )
        return apis

    def bind(self, instance: Any) -> None:
        self.instance = instance


def media_type_refusal(scope, headers: list[tuple[bytes, bytes]], component: str) -> str | None:
    """Why a request's body type is refused (415), or None. Every Content-Type header is
    checked: BentoML reads the first, so a request with two must not pass on the second."""
    if not has_body(scope, headers):
        return None
    types = [value for name, value in headers if name == b"content-type"]
    if len(types) > 1:
        return "more than one content-type header; send exactly one: application/json"
    if not types:  # read as JSON, as BentoML does
        return None
    media_type = types[0].decode("latin-1").split(";")[0].strip().lower()
    if media_type in DATA_ONLY_MEDIA_TYPES:
        return None
    code = media_type in CODE_EXECUTING_MEDIA_TYPES or "pickle" in media_type
    REFUSED_MEDIA_TYPES.labels(component, str(code).lower()).inc()
    if code:
        return (
            f"content type {media_type!r} is refused: decoding it would run code sent over "
            "the network; send application/json"
        )
    return f"content type {media_type!r} is not accepted; send JSON (application/json)"


def has_body(scope, headers: list[tuple[bytes, bytes]]) -> bool:
    """POST/PUT/PATCH, or any request announcing a body. A GET with an empty body is let
    through whatever its type (proxies add `application/octet-stream` to probes)."""
    if scope["method"] in BODY_METHODS:
        return True
    if any(name == b"transfer-encoding" for name, _ in headers):
        return True
    length = next((value for name, value in headers if name == b"content-length"), b"0")
    return length.strip() not in (b"", b"0")


def too_large(size: int, limit: int, at_least: bool = False) -> str:
    qualifier = " (at least)" if at_least else ""
    return (
        f"request body is {size} bytes{qualifier}; the limit is {limit} bytes "
        "(RECSYS_MAX_REQUEST_BYTES)"
    )


async def read_body(receive, limit: int) -> tuple[bytes, list[dict]]:
    """The whole body and the messages it came in; BodyTooLarge past `limit` bytes."""
    chunks, messages, size = [], [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(too_large(size, limit, at_least=True))
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks), messages


def validation_failure(exc: ValidationError) -> bytes:
    """The 400 body for an invalid request: BentoML's own (pydantic's error items)."""
    return orjson.dumps(
        {
            "error": f"{exc.error_count()} validation error for {exc.title}",
            "detail": exc.errors(include_context=False, include_input=False),
        }
    )


class FrontDoor:
    """The ASGI middleware described in the module docstring, one per service and worker."""

    def __init__(
        self,
        app,
        *,
        component: str,
        stage: bool,
        max_in_flight: int,
        apis: ServedAPIs | None = None,
        document: Callable[[], dict] = dict,
    ) -> None:
        self.app = app
        self.component = component
        self.tokens = TokenCheck() if stage else None
        self.max_bytes = SETTINGS.max_request_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.apis = apis or ServedAPIs()
        self.document = document
        self.document_body: bytes | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket" and self.websocket_refused(scope):
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, headers = scope["path"], scope.get("headers") or []
        refusal = media_type_refusal(scope, headers, self.component)
        if refusal is not None:
            await refuse(send, 415, refusal, "unsupported_media_type", ("header", "content-type"))
            return
        if self.tokens is not None and path not in PROBE_PATHS:
            reason = self.tokens.refusal(headers)
            if reason is not None:
                await self.refuse_token(send, reason)
                return
        length = next((value for name, value in headers if name == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await refuse(
                send, 413, too_large(int(length), self.max_bytes), "body_too_large", ("body",)
            )
            return
        if path in NEVER_SHED or self.max_in_flight <= 0:
            await self.serve(scope, receive, send, path)
            return
        if self.in_flight >= self.max_in_flight:
            await self.shed(send)
            return
        self.in_flight += 1
        try:
            await self.serve(scope, receive, send, path)
        finally:
            self.in_flight -= 1

    def websocket_refused(self, scope) -> bool:
        """A stage takes no websocket without the token (BentoML's router would see it)."""
        if self.tokens is None:
            return False
        return self.tokens.refusal(scope.get("headers") or []) is not None

    async def serve(self, scope, receive, send, path: str) -> None:
        api = self.apis.by_path.get(path)
        if api is not None and scope["method"] == "POST":
            await self.answer(api, scope, receive, send)
        elif path == DOCUMENT_PATH and scope["method"] == "GET":
            if self.document_body is None:  # built once per worker
                self.document_body = orjson.dumps(self.document())
            await send_json(send, 200, self.document_body)
        elif scope["method"] in BODY_METHODS:
            await self.pass_body_on(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def answer(self, api: ServedAPI, scope, receive, send) -> None:
        try:
            body, _ = await read_body(receive, self.max_bytes)
        except BodyTooLarge as exc:
            await refuse(send, 413, str(exc), "body_too_large", ("body",))
            return
        try:
            values = api.validate(body or b"{}")
        except ValidationError as exc:
            await send_json(send, 400, validation_failure(exc))
            return
        arguments = {name: getattr(values, name) for name in api.fields}
        response = await api.function(self.apis.instance, **arguments)
        await response(scope, receive, send)

    async def pass_body_on(self, scope, receive, send) -> None:
        """Hand a request with a body to BentoML once it is known to be within the limit."""
        try:
            _, messages = await read_body(receive, self.max_bytes)
        except BodyTooLarge as exc:
            await refuse(send, 413, str(exc), "body_too_large", ("body",))
            return
        buffered = iter(messages)

        async def replay():
            return next(buffered, None) or await receive()

        await self.app(scope, replay, send)

    async def refuse_token(self, send, reason: str) -> None:
        STAGE_AUTH_FAILURES.labels(self.component, reason).inc()
        message = (
            f"stage token {reason}: {self.component} answers only the gateway, which sends the "
            f"shared secret RECSYS_STAGE_TOKEN in the {STAGE_TOKEN_HEADER} header"
        )
        loc = ("header", STAGE_TOKEN_HEADER)
        challenge = ((b"www-authenticate", b"RecsysStageToken"),)
        await refuse(send, 401, message, f"stage_token_{reason}", loc, challenge)

    async def shed(self, send) -> None:
        SHED.labels(self.component).inc()
        message = (
            f"overloaded: {self.in_flight} requests in flight, limit {self.max_in_flight}; "
            f"retry after {SETTINGS.retry_after_s} s"
        )
        retry_after = ((b"retry-after", str(SETTINGS.retry_after_s).encode()),)
        await refuse(send, 503, message, "overloaded", headers=retry_after)


def install_front_door(
    service,
    component: str,
    *,
    stage: bool,
    max_in_flight: int,
    answers: dict[str, type[BaseModel]] | None = None,
) -> None:
    """Put the front door before `service`'s router (`answers`: the declared answer of each API,
    by name, for /docs.json) and bind it to the service instance once BentoML has made it."""
    ensure_stage_token()
    apis = ServedAPIs.of(service)

    def document() -> dict:
        return served_document(service.openapi_spec.asdict(), stage=stage, answers=answers)

    def bind_front_door(instance) -> None:
        apis.bind(instance)

    # A startup hook of the service class: BentoML calls it with the new instance.
    service.inner.bind_front_door = bentoml.on_startup(bind_front_door)
    service.add_asgi_middleware(
        FrontDoor,
        component=component,
        stage=stage,
        max_in_flight=max_in_flight,
        apis=apis,
        document=document,
    )
