"""Why a stage call failed, as a short bounded label (`fallback_reason`) for metrics, traces and
the `degraded_reasons` of an answer."""

from __future__ import annotations

import asyncio

from recsys.errors import ModelNotReady


class StageFailure(Exception):
    """A stage answered with an error status: the status, and the error's kind as the stage's
    error body names it (`detail[0].type`: `overloaded`, `model_not_ready`, ...)."""

    def __init__(self, stage: str, status: int, kind: str, message: str) -> None:
        super().__init__(f"{stage} answered {status} ({kind}): {message}")
        self.status, self.kind = status, kind


# A stage's error kinds (the `type` of its error body) -> the fallback reason they mean.
REASON_OF_KIND = {
    "overloaded": "overloaded",  # shed: too many requests in flight
    "model_not_ready": "not_ready",  # its model is loading, or failed to load
    "stage_token_missing": "unauthorized",
    "stage_token_invalid": "unauthorized",
}
# A status whose kind is not one of the above (e.g. a proxy's answer in between).
REASON_OF_STATUS = {503: "not_ready", 401: "unauthorized", 403: "unauthorized"}


def fallback_reason(exc: BaseException) -> str:
    """timeout, not_ready, overloaded, unauthorized, unavailable (no connection) or error."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ModelNotReady):  # an in-process stage whose model is not loaded
        return "not_ready"
    if isinstance(exc, StageFailure):
        return REASON_OF_KIND.get(exc.kind) or REASON_OF_STATUS.get(exc.status, "error")
    if isinstance(exc, ConnectionError | OSError) or "connect" in type(exc).__name__.lower():
        return "unavailable"
    return "error"
