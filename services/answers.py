"""How every API of every service answers: the answer as orjson, or the error mapped to its
status by `recsys.errors.http_status`, with the one error body (`Error` in `services.openapi`)."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from starlette.responses import Response

from recsys.errors import http_status
from recsys.serving.faults import inject_faults
from services.config import SETTINGS

logger = logging.getLogger(__name__)
JSON_HEADERS = ((b"content-type", b"application/json"),)


def error_body(message: str, kind: str, loc: tuple = ()) -> dict:
    """The body of every error answer: the message, and one detail item shaped like pydantic's
    validation errors (what a 400 lists)."""
    return {"error": message, "detail": [{"type": kind, "loc": list(loc), "msg": message}]}


def error_kind(exc: BaseException) -> str:
    """The machine-readable kind of an error: its class name in snake case
    (`ModelNotReady` -> `model_not_ready`)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


async def send_json(send, status: int, body: bytes, headers: tuple = ()) -> None:
    """Send a whole JSON answer over ASGI, in one body with its length."""
    start_headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


async def refuse(
    send, status: int, message: str, kind: str, loc: tuple = (), headers: tuple = ()
) -> None:
    """Answer a request refused before it reached an API (401, 413, 415, 503 shed)."""
    await send_json(send, status, orjson.dumps(error_body(message, kind, loc)), headers)


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
    """How every API answers: `answer(**arguments)` as JSON, or the error it raised as the
    status `recsys.errors.http_status` names, with the error body every service uses."""
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
        message, kind = str(exc), error_kind(exc)
    return Response(
        orjson.dumps(error_body(message, kind)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
