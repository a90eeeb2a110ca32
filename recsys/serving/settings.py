"""Serving settings (`RECSYS_*` environment variables) and the id types requests carry."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, StringConstraints
from pydantic_settings import BaseSettings, SettingsConfigDict

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]*$"


MAX_ID_LENGTH = 128


UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN),
    Field(description="User id: letters, digits and _ . : @ -, at most 128 characters."),
]


ItemId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN),
    Field(description="Item id: letters, digits and _ . : @ -, at most 128 characters."),
]


class ServingSettings(BaseSettings):
    """Every serving knob, overridable by a `RECSYS_<NAME>` environment variable."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore")

    retrieval_model_tag: str = Field(
        "recsys-retrieval:latest", description="BentoML tag of the retrieval model."
    )
    ranking_model_tag: str = Field(
        "recsys-ranking:latest", description="BentoML tag of the ranking model."
    )
    model_dir: str = Field(
        "",
        description="A BentoML model store directory searched before the default store (the"
        " Bento's models in the image): the chart's init container imports the pod's model tags"
        " there from the shared model store (`recsys models import --into`).",
    )
    num_candidates: int = Field(
        200, ge=10, le=2000, description="Candidates retrieved per request."
    )
    category_cap: int = Field(
        3, ge=0, description="Most items of one category in a top-k list (0 turns the cap off)."
    )
    max_k: int = Field(100, ge=1, le=1000, description="Largest k a caller may ask for.")
    max_exclude_items: int = Field(500, ge=0, description="Longest exclude_items list accepted.")
    max_batch_users: int = Field(64, ge=1, description="Most users in one recommend_batch call.")
    batch_slice_users: int = Field(
        4,
        ge=1,
        description="Users of a recommend_batch call served together; the slices run one after"
        " the other, so a request arriving meanwhile waits for one slice, not the whole batch.",
    )
    batching: bool = Field(
        True,
        description="Micro-batching: concurrent requests share one ranking prediction, and one"
        " gateway call to a remote Retrieval.",
    )
    batch_max: int = Field(16, ge=1, description="Most requests in one batch.")
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long a batch waits for more requests (0: only those already waiting,"
        " at the event loop's next turn).",
    )
    max_request_bytes: int = Field(262_144, ge=1024, description="Largest request body accepted.")
    retrieval_timeout_s: float = Field(0.5, gt=0, description="Gateway timeout for retrieval.")
    ranking_timeout_s: float = Field(0.5, gt=0, description="Gateway timeout for ranking.")
    request_timeout_s: float = Field(10.0, gt=0, description="BentoML traffic timeout per request.")
    workers: int = Field(1, ge=1, description="BentoML worker processes per service.")
    trace_sample_rate: float = Field(
        0.0, ge=0, le=1, description="Share of requests traced (needs OTEL_EXPORTER_OTLP_ENDPOINT)."
    )
    stage_token: SecretStr = Field(
        SecretStr(""),
        description=(
            "Shared secret the gateway sends to the stages (header X-Recsys-Stage-Token) and the"
            " stages require on every API route. Empty: a random one for this process and its"
            " children (what `bentoml serve` starts), so separately started stages refuse calls."
        ),
    )
    stage_token_previous: SecretStr = Field(
        SecretStr(""),
        description=(
            "During a token rotation only: the old stage token, still accepted by the stages"
            " (never sent by the gateway), so gateway and stages can restart in any order."
        ),
    )
    access_log: bool = Field(
        True, description="The gateway logs one line per request (BentoML access log)."
    )
    stage_access_log: bool = Field(
        False,
        description="The stages log one line per call too. Off by default: their only caller is"
        " the gateway, whose access log already has a line per request, and the line took 8%"
        " of Retrieval's CPU in a profile of /retrieve_batch.",
    )
    track: str = Field("stable", description="Deployment track reported in responses and metrics.")
    # From measured capacity (docs/benchmark.md): one worker of the default form serves about
    # 440 req/s, so 32 requests in flight are ~70 ms of queue, about slo.yaml's p99 (60 ms):
    # past that, an admitted request would miss its objective anyway, so it is shed at once.
    gateway_max_in_flight: int = Field(
        32, ge=0, description="Requests in flight per gateway worker before 503 (0: no limit)."
    )
    stage_max_in_flight: int = Field(
        256, ge=0, description="Requests in flight per stage worker before 503 (0: no limit)."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds on a shed request.")
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive stage failures that open its circuit breaker."
    )
    breaker_reset_s: float = Field(
        2.0, gt=0, description="Seconds an open circuit waits before a half-open probe."
    )
    fault_latency_ms: float = Field(0.0, ge=0, description="TEST ONLY: added latency per call.")
    fault_error_rate: float = Field(
        0.0, ge=0, le=1, description="TEST ONLY: share of calls that fail with an error."
    )
    fault_load_delay_s: float = Field(
        0.0, ge=0, description="TEST ONLY: extra delay before the model counts as loaded."
    )
