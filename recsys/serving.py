"""Serving logic shared by the BentoML services, free of any framework import.

Settings, request field types, the re-ranking step and the fault-injection knobs live here so
they can be unit tested without a server; `services/` only wires them to HTTP.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field, SecretStr, StringConstraints
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.errors import ModelNotReady

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
    access_log: bool = Field(True, description="Log one line per request (BentoML access log).")
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


class InjectedFault(RuntimeError):
    """A failure produced on purpose by the fault-injection settings."""


async def inject_faults(settings: ServingSettings) -> None:
    """Apply the test-only latency and error settings (no-ops at their defaults)."""
    if settings.fault_latency_ms > 0:
        await asyncio.sleep(settings.fault_latency_ms / 1000.0)
    if settings.fault_error_rate > 0 and random.random() < settings.fault_error_rate:
        raise InjectedFault("injected fault (RECSYS_FAULT_ERROR_RATE)")


def cap_categories(categories: Sequence[str], k: int, cap: int) -> list[int]:
    """Positions of the top k of a ranked list with at most `cap` items per category.

    `categories` is the ranked list's category column. Items over the cap are set aside and
    used, in rank order, only when the list would otherwise be shorter than k: diversity never
    costs the caller items. `cap=0` disables it.
    """
    if cap <= 0:
        return list(range(min(k, len(categories))))
    taken: list[int] = []
    overflow: list[int] = []
    per_category: Counter[str] = Counter()
    for position, category in enumerate(categories):
        if len(taken) == k:
            break
        if category and per_category[category] >= cap:
            overflow.append(position)
            continue
        per_category[category] += 1
        taken.append(position)
    if len(taken) < k:
        taken.extend(overflow[: k - len(taken)])
    return taken


def top_k_items(
    candidates: dict[str, list], order: Sequence[int], scores: Sequence[float], k: int, cap: int
) -> list[dict]:
    """The answer's items: candidates in `order` (with their `scores`), category-capped, top k."""
    item_ids, categories = candidates["item_ids"], candidates["categories"]
    ranked_categories = [categories[position] for position in order]
    return [
        {
            "item_id": item_ids[order[rank]],
            "score": scores[rank],
            "category": ranked_categories[rank],
        }
        for rank in cap_categories(ranked_categories, k, cap)
    ]


class BackgroundModel:
    """Loads a model in a thread and runs a self-test; ready only when both succeeded.

    The server answers `/livez` while the index loads, and `/readyz` turns true only after
    the self-test query passed, so Kubernetes sends no traffic to a half-loaded model.
    """

    def __init__(self, name: str, load, self_test, delay_s: float = 0.0) -> None:
        import gc
        import logging
        import threading

        self.name = name
        self.model = None
        self.version = ""
        self.error: str | None = None
        self._ready = threading.Event()
        self._log = logging.getLogger(f"recsys.{name}")

        def run() -> None:
            import time

            try:
                if delay_s:
                    time.sleep(delay_s)
                from recsys.tracing import untraced

                model, version = load()
                with untraced():
                    self_test(model)
                # The loaded model's objects live as long as the process: moving them out of
                # the collector's reach keeps full collections from pausing requests (the
                # benchmark measured ~100 ms pauses on 100k-item models without it).
                gc.collect()
                gc.freeze()
            except Exception as exc:  # stays unready; the reason is logged once and kept
                self.error = f"{type(exc).__name__}: {exc}"
                self._log.error("%s model failed to load, staying unready: %s", name, self.error)
                return
            self.model, self.version = model, version
            self._ready.set()
            self._log.info("%s model %s loaded and self-tested", name, version)

        self._thread = threading.Thread(target=run, name=f"load-{name}", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def get(self):
        """The loaded model, or ModelNotReady saying why there is none."""
        if not self._ready.is_set():
            why = self.error or "still loading"
            raise ModelNotReady(f"{self.name} model is not ready: {why}")
        return self.model


def rank_columns(ranker, user_id: str, candidates: dict[str, list]) -> dict[str, list]:
    """The ranker's verdict on candidate columns: `order` (positions in `candidates`, best
    first) and their `scores`. Items the ranker does not know are left out."""
    return rank_columns_many(ranker, [(user_id, candidates)])[0]


def rank_columns_many(ranker, requests: list[tuple[str, dict[str, list]]]) -> list[dict]:
    """`rank_columns` for several requests with one model prediction."""
    import numpy as np

    verdicts = []
    for scores in ranker.score_columns_many(requests):
        order = np.argsort(-scores, kind="stable")
        order = order[np.isfinite(scores[order])]
        verdicts.append({"order": order.tolist(), "scores": scores[order].tolist()})
    return verdicts


def fallback_reason(exc: BaseException) -> str:
    """A short, bounded label for why a dependency call failed (used in metrics).

    A stage's own refusals carry its HTTP status (`error_code` of BentoML's client errors): 503
    is `overloaded` when it shed the call and `not_ready` while its model loads or failed to
    load; 401/403 is `unauthorized` (a stage token mismatch).
    """
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ModelNotReady):  # an in-process stage whose model is not loaded
        return "not_ready"
    status = getattr(exc, "error_code", None)
    if status == 503:
        return "overloaded" if "overloaded" in str(exc) else "not_ready"
    if status in (401, 403):
        return "unauthorized"
    name = type(exc).__name__.lower()
    if "connect" in name or isinstance(exc, ConnectionError | OSError):
        return "unavailable"
    return "error"
