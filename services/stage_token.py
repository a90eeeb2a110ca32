"""The stage token: the shared secret a stage asks of every caller but the probes, so that a
stage answers only the gateway, whatever the network lets through."""

from __future__ import annotations

import hmac
import logging
import os
import secrets

from pydantic import SecretStr

from services.config import SETTINGS

STAGE_TOKEN_HEADER = "x-recsys-stage-token"
logger = logging.getLogger(__name__)


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


class TokenCheck:
    """Whether the X-Recsys-Stage-Token headers of a request hold an accepted token: the current
    one, or during a rotation the previous one (RECSYS_STAGE_TOKEN_PREVIOUS)."""

    header = STAGE_TOKEN_HEADER.encode()

    def __init__(self) -> None:
        previous = SETTINGS.stage_token_previous.get_secret_value().encode()
        self.accepted = tuple(token for token in (stage_token(), previous) if token)

    def refusal(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """None when exactly one token header holds an accepted token; else `missing` or
        `invalid`."""
        presented = [value for name, value in headers if name == self.header]
        if not presented:
            return "missing"
        # Every accepted token is compared, so the time taken does not tell which one matched.
        matches = [hmac.compare_digest(presented[0], token) for token in self.accepted]
        return None if len(presented) == 1 and any(matches) else "invalid"
