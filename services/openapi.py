"""The OpenAPI document every service serves at `/docs.json`: BentoML's, made to say what the
service really answers.

BentoML 1.4 builds the document from the API signatures (`Service.openapi_spec`) and has no hook
to amend it. Its document is wrong for these services in three ways, each fixed here:

1. Error bodies. BentoML declares `detail` a string; its validation errors put a list of objects
   there, and our refusals (`services.front_door`) answered `{"error"}` alone. Every error of every
   service now has one body, `Error` below: `{"error": message, "detail": [{type, loc, msg}]}`.
2. Request bodies are not marked required, so an empty body counts as valid although it is read
   as `{}` and refused: a body whose schema has required fields is marked required.
3. Statuses answered before or around BentoML (`services.front_door`: 401 without the stage token,
   413 over the size limit, 415 not JSON, 503 shed or model not ready, with `Retry-After`) are
   declared; 404, which no API answers, is not. A 200 answer is declared with its fields when
   the service names an answer model (`answers`): the model only describes the answer, which is
   still encoded by `json_answer` (never validated or dumped through pydantic).

The front door (`services.front_door`) serves the amended document in place of BentoML's; it is
built once per worker.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

SCHEMAS = "#/components/schemas/"
ERROR_DETAIL = {
    "type": "object",
    "title": "ErrorDetail",
    "description": "One problem with a request: pydantic's validation error items for a 400, one "
    "item naming the refusal otherwise.",
    "required": ["type", "loc", "msg"],
    "properties": {
        "type": {"type": "string", "description": "Machine-readable kind of problem."},
        "loc": {
            "type": "array",
            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "description": "Where: body fields and list positions, or a header name.",
        },
        "msg": {"type": "string", "description": "What is wrong, for a human."},
        "url": {"type": "string", "description": "pydantic's documentation of the error type."},
    },
}
ERROR = {
    "type": "object",
    "title": "Error",
    "description": "The body of every error answer of every service.",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong, in one line."},
        "detail": {"type": "array", "items": {"$ref": SCHEMAS + "ErrorDetail"}},
    },
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (RECSYS_RETRY_AFTER_S).",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "The scheme a stage expects: `RecsysStageToken`.",
        "required": True,
        "schema": {"type": "string"},
    }
}


def error_response(description: str, headers: dict | None = None) -> dict:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": SCHEMAS + "Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


API_ERRORS = {
    "400": error_response(
        "Invalid request: not JSON, or a field missing, of the wrong type or out of range; "
        "`detail` has one item per problem (pydantic's `type`, `loc`, `msg`)."
    ),
    "413": error_response("Request body over RECSYS_MAX_REQUEST_BYTES, refused unread."),
    "415": error_response("Body not `application/json` (or several content-type headers)."),
    "500": error_response("Unexpected error (the server log has the traceback)."),
    "503": error_response(
        "Overloaded (too many requests in flight) or the model is not loaded yet; retry.",
        RETRY_AFTER,
    ),
}
STAGE_ERRORS = {
    "401": error_response(
        "Stage token missing or wrong (X-Recsys-Stage-Token): stages answer only the gateway.",
        WWW_AUTHENTICATE,
    ),
}
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")


def answer_schemas(answers: dict[str, type[BaseModel]]) -> tuple[dict, dict]:
    """JSON schemas of the answer models, by API name, and the components they refer to."""
    by_api, components = {}, {}
    for api, model in answers.items():
        schema = model.model_json_schema(ref_template=SCHEMAS + "{model}", mode="serialization")
        components.update(schema.pop("$defs", {}))
        by_api[api] = schema
    return by_api, components


def served_document(
    document: dict, *, stage: bool, answers: dict[str, type[BaseModel]] | None = None
) -> dict:
    """BentoML's document (`Service.openapi_spec.asdict()`) amended as the module says."""
    document = json.loads(json.dumps(document))  # a deep copy, of plain JSON values
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    answer_schema, answer_components = answer_schemas(answers or {})
    schemas.update(answer_components)
    for name in BENTOML_ERROR_SCHEMAS:
        schemas.pop(name, None)
    schemas["Error"], schemas["ErrorDetail"] = ERROR, ERROR_DETAIL
    for path, operations in document["paths"].items():
        for operation in operations.values():
            api = operation.get("x-bentoml-name")
            responses = operation.setdefault("responses", {})
            if api is None:  # BentoML's probes and /metrics
                if path == "/readyz":
                    responses["503"] = {"description": "Not ready: a model is still loading."}
                continue
            body = operation.get("requestBody")
            if body and body["content"]["application/json"]["schema"].get("required"):
                body["required"] = True
            for status in ("404", *BENTOML_ERROR_SCHEMAS):
                responses.pop(status, None)
            responses.update(API_ERRORS)
            if stage:
                responses.update(STAGE_ERRORS)
            if api in answer_schema:
                responses["200"]["content"]["application/json"]["schema"] = answer_schema[api]
    if SCHEMAS + "TaskStatusResponse" not in json.dumps(document["paths"]):
        schemas.pop("TaskStatusResponse", None)  # no task APIs here
    return document
