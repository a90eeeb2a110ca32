"""The served variants under test, each started as real processes on a free 127.0.0.1 port.

- default: the chart's two deployments - Retrieval in its own process, the gateway with Ranking
           inside it, HTTP between them (what `recsys serve` runs);
- split:   gateway, Retrieval and Ranking as three processes (the chart's `ranking.separate`);
- single:  the same API with both stages inside the gateway (one process);
- kserve:  the peer, one KServe `ModelServer` model (`bench.kserve_peer`); `kserve-wN` runs N
           KServe worker processes.

The BentoML forms are started by `recsys.ops.stack.start_stack`, as the image runs each service
(`start-http-server`). A `-wN` suffix runs N workers per service (e.g. `single-w2`), `-nobatch`
turns the micro-batching off (e.g. `default-nobatch`). All of
them load the same stored models, freeze the garbage collector's heap after loading them (the
services do it in `recsys.serving.models.BackgroundModel`, the peer in its own `load`), log no line
per request and shed no load (RECSYS_*_MAX_IN_FLIGHT=0), so capacity is limited by the work,
not by a limit.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.kserve_peer import MODEL_NAME
from bench.models import TrainedModels
from recsys.model.artifacts import RANKING_MODEL, RETRIEVAL_MODEL, model_path
from recsys.ops.processes import kill_processes, process_tree, start_logged
from recsys.ops.stack import REPO_ROOT, ServerProcess, Stack, free_port, start_stack

READY_TIMEOUT_S = 300.0

LABELS = {
    "default": "BentoML default (gateway with Ranking + Retrieval)",
    "split": "BentoML split (gateway + Retrieval + Ranking)",
    "single": "BentoML single (gateway with both stages)",
    "kserve": "KServe ModelServer peer",
}
# Services (one process each per worker) of each form.
SERVICES = {"default": 2, "split": 3, "single": 1, "kserve": 1}
PEER_FORM = "kserve"
# uvicorn's line once a worker serves: a multi-worker peer is ready when every worker wrote it.
WORKER_READY_LINE = "Application startup complete"


@dataclass(frozen=True)
class VariantSpec:
    """A variant name parsed: form and workers per service."""

    form: str
    workers: int
    batching: bool = True

    @classmethod
    def parse(cls, name: str) -> VariantSpec:
        form, *flags = name.split("-")
        if form not in LABELS:
            raise ValueError(f"unknown form {form!r} in variant {name!r}: one of {list(LABELS)}")
        workers, batching = 1, True
        for flag in flags:
            if flag == "nobatch" and form != "kserve":
                batching = False
            elif flag.startswith("w") and flag[1:].isdigit():
                workers = int(flag[1:])
            else:
                raise ValueError(
                    f"unknown suffix -{flag} in variant {name!r}: -wN or -nobatch (BentoML forms)"
                )
        return cls(form, workers, batching)

    @property
    def processes(self) -> int:
        """Processes that serve requests: services x workers (supervisors do no request work)."""
        return SERVICES[self.form] * self.workers

    @property
    def is_peer(self) -> bool:
        return self.form == PEER_FORM

    def label(self) -> str:
        count = self.processes
        text = f"{LABELS[self.form]}, {count} process{'es' if count > 1 else ''}"
        if self.workers != 1:
            text += f" ({self.workers} workers per service)" if not self.is_peer else " (workers)"
        return text if self.batching else f"{text}, batching off"


@dataclass
class Variant:
    """One running server: where to send recommend requests and which processes to charge."""

    name: str
    server: ServerProcess | Stack
    path: str
    body_format: str
    workers: int
    wait: Callable[[float], None] = field(repr=False, default=lambda timeout: None)

    @property
    def label(self) -> str:
        return VariantSpec.parse(self.name).label()

    @property
    def processes(self) -> int:
        return VariantSpec.parse(self.name).processes

    @property
    def url(self) -> str:
        return f"{self.server.url}{self.path}"

    def pids(self) -> list[int]:
        """The root process of each server (the gateway and every stage apart from it)."""
        if isinstance(self.server, Stack):
            return [server.process.pid for server in self.server.servers.values()]
        return [self.server.process.pid]

    def recommend(self, user_id: str, k: int, timeout: float = 10.0) -> list[dict]:
        """One request through this variant; the returned items (for answer checks)."""
        body = {"user_id": user_id, "k": k}
        if self.body_format == "kserve":
            body = {"instances": [body]}
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
        if self.body_format == "kserve":
            return answer["predictions"][0]["items"]
        if answer.get("degraded"):
            raise RuntimeError(f"{self.name} answered degraded: {answer['degraded_reasons']}")
        return answer["items"]

    def stop(self) -> None:
        self.server.stop()


def bento_env(models: TrainedModels, workers: int, batching: bool = True) -> dict[str, str]:
    return {
        "RECSYS_BATCHING": str(batching).lower(),
        **models.service_env(),
        "OPENBLAS_NUM_THREADS": "1",
        "RECSYS_WORKERS": str(workers),
        "RECSYS_ACCESS_LOG": "false",
        "RECSYS_GATEWAY_MAX_IN_FLIGHT": "0",
        "RECSYS_STAGE_MAX_IN_FLIGHT": "0",
        "RECSYS_NUM_CANDIDATES": "200",
        "RECSYS_TRACE_SAMPLE_RATE": "0",
    }


def start_bento(
    name: str, models: TrainedModels, log_dir: Path, workers: int = 1, batching: bool = True
) -> Variant:
    """Start a BentoML form (returns at once; `wait` blocks until ready)."""
    env = bento_env(models, workers, batching)
    server = start_stack(free_port(), env, log_dir=log_dir, form=name)

    def wait(timeout: float) -> None:
        server.wait_ready(timeout)
        server.wait_stages(timeout)

    return Variant(name, server, "/recommend", "bento", workers, wait)


def _wait_http_ok(server: ServerProcess, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited early:\n{server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{server.name} not ready after {timeout}s:\n{server.log()[-3000:]}")


def _wait_workers_serving(server: ServerProcess, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while server.log().count(WORKER_READY_LINE) < workers:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited early:\n{server.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name}: not every worker serves after {timeout}s")
        time.sleep(0.25)


def start_kserve(models: TrainedModels, log_dir: Path, workers: int = 1) -> Variant:
    """Start the KServe peer (returns at once; `wait` blocks until every worker serves)."""
    os.environ["BENTOML_HOME"] = models.bentoml_home
    retrieval_dir, _ = model_path(models.retrieval_tag, RETRIEVAL_MODEL)
    ranking_dir, _ = model_path(models.ranking_tag, RANKING_MODEL)
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"kserve-{port}.log"
    args = [
        sys.executable,
        "-m",
        "bench.kserve_peer",
        "--port",
        str(port),
        "--retrieval-dir",
        str(retrieval_dir),
        "--ranking-dir",
        str(ranking_dir),
        "--server-workers",
        str(workers),
        "--num-candidates",
        "200",
    ]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    process = start_logged(args, log_path, env, cwd=REPO_ROOT)  # stop() takes the workers too
    server = ServerProcess("kserve", port, process, log_path)

    def wait(timeout: float) -> None:
        _wait_http_ok(server, f"/v1/models/{MODEL_NAME}", timeout)
        if workers > 1:  # the first worker up answers the check above: wait for the others
            _wait_workers_serving(server, workers, timeout)

    return Variant("kserve", server, f"/v1/models/{MODEL_NAME}:predict", "kserve", workers, wait)


def start_variants(
    names: list[str], models: TrainedModels, log_dir: Path, log=print
) -> dict[str, Variant]:
    """Start every variant at once (they load in parallel), then wait for each to be ready."""
    variants: dict[str, Variant] = {}
    try:
        for name in names:
            spec = VariantSpec.parse(name)
            if spec.form == "kserve":
                variant = start_kserve(models, log_dir, spec.workers)
            else:
                variant = start_bento(spec.form, models, log_dir, spec.workers, spec.batching)
            variant.name = name
            variants[name] = variant
        for name, variant in variants.items():
            start = time.monotonic()
            variant.wait(READY_TIMEOUT_S)
            log(f"  {name} ready on {variant.server.url} ({time.monotonic() - start:.0f}s more)")
    except BaseException:
        stop_variants(variants)
        raise
    return variants


def stop_variants(variants: dict[str, Variant]) -> None:
    """Stop every variant, then kill any of its processes that outlived the group stop.

    Server workers can sit in process groups of their own; the tree is listed before the
    stop so that such a worker is still found (psutil checks the PID was not reused).
    """
    for variant in variants.values():
        tree = [process for pid in variant.pids() for process in process_tree(pid)]
        variant.stop()
        kill_processes(tree)
