"""The stages as services and as the gateway holds them: a stage serving one model that loads in
the background (`StageService`), readiness across a server's workers, the handles of a stage in
the gateway's process or over HTTP, and the `bentoml.depends` that picks between them."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import bentoml
from _bentoml_sdk.service.dependency import Dependency

from recsys.model.health import ModelHealth
from recsys.serving.batching import MicroBatcher
from recsys.serving.models import BackgroundModel
from services.config import SETTINGS, install_tracing
from services.metrics import BATCH_SIZE, MODEL_INFO, WORKER_READY, model_health
from services.stage_client import StageClient
from services.stage_token import STAGE_TOKEN_HEADER, stage_token


class WorkerReadiness:
    """Readiness of the server, not only of the worker a probe happens to reach.

    BentoML's workers share one socket, so a readiness probe reaches any one of them. A pod
    whose first worker has loaded its models would be marked ready while another worker still
    loads, and that worker's requests would get the fallbacks. Each worker publishes its own
    state (`recsys_worker_ready`, in BentoML's Prometheus multiprocess directory) and answers
    ready once every worker of its service (RECSYS_WORKERS) has. Outside a BentoML server (no
    multiprocess directory) the worker's own readiness decides.
    """

    def __init__(self, component: str, own_ready: Callable[[], bool]) -> None:
        self.component, self.own_ready = component, own_ready
        self.worker = str(bentoml.server_context.worker_index or 0)
        self.directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.every_worker_seen = not self.directory
        WORKER_READY.labels(component, self.worker).set(0)
        threading.Thread(target=self._publish, name=f"{component}-ready", daemon=True).start()

    def _publish(self) -> None:
        while not self.own_ready():
            time.sleep(0.1)
        WORKER_READY.labels(self.component, self.worker).set(1)

    def __call__(self) -> bool:
        if not self.own_ready():
            return False
        if not self.every_worker_seen:
            # Once every worker has been ready, each worker's own state decides (a few ms of
            # file reads per probe only until then).
            self.every_worker_seen = len(self._ready_workers()) >= SETTINGS.workers
        return self.every_worker_seen

    def _ready_workers(self) -> set[str]:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, self.directory)
        return {
            sample.labels["worker"]
            for family in registry.collect()
            if family.name == "recsys_worker_ready"
            for sample in family.samples
            if sample.labels.get("component") == self.component and sample.value == 1
        }


def micro_batcher(batch, stage: str) -> MicroBatcher | None:
    """The process's micro-batcher for one stage's calls (`RECSYS_BATCHING`, `BATCH_MAX`,
    `BATCH_WAIT_MS`), with its batch sizes in `recsys_batch_size{stage}`; None when off."""
    if not SETTINGS.batching:
        return None
    return MicroBatcher(
        batch,
        SETTINGS.batch_max,
        SETTINGS.batch_wait_ms / 1000,
        on_batch=BATCH_SIZE.labels(stage).observe,
    )


class LocalStageHandle:
    """A stage in the gateway's process, as the pipeline sees it: its service object, whose
    `answer_` methods the subclass calls directly (no HTTP hop, serialisation or validation)."""

    in_process = True

    def __init__(self, service: StageService) -> None:
        self.service = service

    @property
    def ready(self) -> bool:
        return self.service.model_ready()

    async def is_ready(self, timeout: float | None = None) -> bool:
        return self.ready


class RemoteStageHandle:
    """A stage in its own process, as the pipeline sees it: reached over HTTP (`StageClient`:
    JSON bodies, the stage token, W3C trace context)."""

    in_process = False

    def __init__(self, http: StageClient) -> None:
        self.http = http

    async def is_ready(self, timeout: float | None = None) -> bool:
        return await self.http.is_ready(timeout)

    async def close(self) -> None:
        await self.http.close()


class StageService:
    """A stage serving one model that loads in the background; ready after its self-test.

    Each API is a plain `answer_<api>` method (arguments in, dict out, ModelNotReady while the
    model is not loaded) wrapped by a thin `@bentoml.api` method that answers with `respond`:
    the gateway calls the `answer_` methods directly when the stage runs in its process
    (`LocalRetrieval`, `LocalRanking`).
    """

    component: str  # Retrieval / Ranking
    loaded: BackgroundModel
    health: ModelHealth

    def start_loading(self, load, self_test, model_name: str) -> None:
        install_tracing()
        self.health = model_health(self.component, model_name)
        self.loaded = BackgroundModel(
            self.component.lower(), load, self_test, SETTINGS.fault_load_delay_s
        )
        self.readiness = WorkerReadiness(self.component, self.model_ready)

    def __is_ready__(self) -> bool:
        return self.readiness()

    def model_ready(self) -> bool:
        """This worker's model has loaded and passed its self-test."""
        if self.loaded.ready:
            MODEL_INFO.labels(self.component, self.loaded.version, SETTINGS.track).set(1)
            self.health.refresh(self.loaded.version)  # the age gauge moves with the probes
        return self.loaded.ready


@attrs.define
class StageDependency(Dependency):
    """`bentoml.depends` for a stage, reached with JSON and the stage token.

    Declaring the dependency is what makes `bentoml serve` start the stages and `--depends
    Name=url` point at them. A remote stage is then called through `remote(StageClient(url))`
    (e.g. `RetrievalClient`: JSON, the X-Recsys-Stage-Token header, trace context) instead of
    BentoML's proxy, which speaks pickle by default and spends a third of the gateway's CPU on
    per-call schema work in JSON mode. A dependency left out of `--depends` runs in this
    process, wrapped by `local(instance)` (e.g. `LocalRetrieval`), with no HTTP.
    """

    local: Callable[[Any], Any] | None = None  # wraps the stage's instance in this process
    remote: Callable[[StageClient], Any] | None = None  # wraps an HTTP client of the stage

    def get(self, *args, **kwargs):
        from bentoml._internal.configuration.containers import BentoMLContainer

        if self._resolved is not None:
            return self._resolved
        url = BentoMLContainer.remote_runner_mapping.get().get(self.on.name)
        if url is None:
            return self.local(super().get(*args, **kwargs))
        token = {STAGE_TOKEN_HEADER: stage_token().decode()}
        return self.remote(StageClient(self.on.name, url, token))
