"""Fixtures of the container tests: the Docker engine, the image built from this working tree
(with the default-size models of `default_workdir`), the chart rendered by the real helm, and
stacks of containers run as the rendered pods specify (see pod_runner.py).

Without a Docker engine (or helm) the tests skip with one reason; under CI=true they fail.
The engine and the local base image are prepared by `make test` (scripts/install-docker.sh,
scripts/base-image.sh); the image itself is built here, from the code under test.

Figures (image size and build time, each container's time to ready and memory, /recommend
latency through the containers) are printed at the end (`pytest -s`) and written to
reports/containers/figures.json.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pod_runner import ContainerPlan, Docker, PodPlan, Readiness, wait_until_ready

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "recsys"
SCENARIOS = CHART_DIR / "ci"
REPORT_DIR = REPO_ROOT / "reports" / "containers"
RELEASE = "recsys"
NAMESPACE = "recsys"
IMAGE_REPOSITORY = "recsys-containers-test"
FIGURES: dict[str, Any] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(message: str) -> None:
    """Skip locally, fail under CI=true, where the project promises these tests run."""
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_bin() -> str:
    """The docker client, once the engine answers (Debian's client matches Debian's engine)."""
    candidates = [os.environ.get("DOCKER"), "/usr/bin/docker", shutil.which("docker")]
    client = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    hint = "run scripts/install-docker.sh (as root) or `make test`, which does"
    if client is None:
        unavailable(f"no Docker client on this machine; {hint}")
    try:
        info = subprocess.run(
            [client, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        info = None
    if info is None or info.returncode != 0 or not info.stdout.strip():
        reason = (info.stderr.strip().splitlines() or ["no answer"])[-1] if info else "timed out"
        unavailable(f"the Docker engine does not answer ({reason}); {hint}")
    return client


@pytest.fixture(scope="session")
def helm_bin() -> str:
    found = shutil.which("helm") or str(REPO_ROOT / ".tools" / "bin" / "helm")
    if not os.access(found, os.X_OK):
        unavailable("helm not found on PATH or in .tools/bin; run scripts/install-helm.sh")
    return found


@dataclass(frozen=True)
class BuiltImage:
    """The image built from this working tree, and the model versions inside it."""

    tag: str
    size_mb: float
    build_s: float
    model_tags: dict[str, str]  # {"retrieval": "recsys-retrieval:<v>", "ranking": ...}


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, Any]]:
    """Figures of the run; printed and written to reports/containers/figures.json at the end."""
    yield FIGURES
    if not FIGURES:
        return
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")
    print("\n== container figures (reports/containers/figures.json) ==")
    print(json.dumps(FIGURES, indent=2))


@pytest.fixture(scope="session")
def built_image(request, docker_bin, figures) -> BuiltImage:
    """`scripts/build-image.sh` (bentoml build + containerize on the local base image) with the
    default-size models that `recsys train` stored in the user working directory.

    RECSYS_CONTAINERS_BENTOML_HOME=<store> reuses a store that already holds default-size
    models instead of training them (a shortcut for iterating on these tests).
    """
    reuse = os.environ.get("RECSYS_CONTAINERS_BENTOML_HOME")
    if reuse:
        home = Path(reuse).resolve()
    else:
        home = Path(request.getfixturevalue("default_workdir").bentoml_home).resolve()
    models = {}
    for stage in ("retrieval", "ranking"):
        version = (home / "models" / f"recsys-{stage}" / "latest").read_text().strip()
        models[stage] = f"recsys-{stage}:{version}"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    tag = f"{IMAGE_REPOSITORY}:{commit or 'dev'}-{os.getpid()}"
    report = REPORT_DIR / "image.json"
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "DOCKER": docker_bin,
        "RECSYS_IMAGE_TAG": tag,
        "RECSYS_IMAGE_REPORT": str(report),
        "RECSYS_RETRIEVAL_MODEL_TAG": models["retrieval"],
        "RECSYS_RANKING_MODEL_TAG": models["ranking"],
    }
    env.setdefault("RECSYS_BASE_IMAGE", "local")
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build-image.sh")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, f"make image failed:\n{done.stdout[-2000:]}\n{done.stderr[-6000:]}"
    built = json.loads(report.read_text())
    image = BuiltImage(
        tag=tag,
        size_mb=round(built["size_bytes"] / 1e6, 1),
        build_s=built["build_seconds"],
        model_tags=models,
    )
    figures["image"] = {
        "tag": tag,
        "base_image": built["base_image"],
        "size_mb": image.size_mb,
        "build_seconds": image.build_s,
        "models": models,
    }
    print(f"\n{done.stdout.strip()}")
    yield image
    subprocess.run([docker_bin, "rmi", tag], capture_output=True, check=False)


def render(helm: str, values_files: list[Path], sets: list[str]) -> list[dict[str, Any]]:
    """`helm template` of the chart (test hooks included) as objects."""
    args = [helm, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE]
    for path in values_files:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"helm template failed: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@dataclass
class Stack:
    """A rendered release's Deployments running as containers; one container per Deployment."""

    name: str
    plan: PodPlan
    docker: Docker
    names: dict[str, str] = field(default_factory=dict)  # Deployment -> container name
    started_at: dict[str, float] = field(default_factory=dict)
    readiness: dict[str, Readiness] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)  # containers run to completion

    def container(self, deployment: str) -> ContainerPlan:
        return self.plan.containers[deployment]

    def start(self, deployment: str) -> None:
        """Run the pod's init containers to completion, in order, then start its container;
        the probes' clock starts then, as the kubelet's does."""
        plan = self.plan.containers[deployment]
        failed = self.run_init_containers(plan)
        if failed is not None:
            name, code, log = failed
            raise RuntimeError(f"{deployment}: init container {name} exited {code}:\n{log[-3000:]}")
        self.names[deployment] = self.docker.start(plan)
        self.started_at[deployment] = time.monotonic()

    def run_to_completion(self, plan: ContainerPlan, timeout: float) -> tuple[int, str]:
        """Run one container until it exits: (exit code, log)."""
        name = self.docker.start(plan)
        code = self.docker.wait_exit(name, timeout)
        log = self.docker.logs(name, tail=400)
        self.logs[plan.pod] = log
        return code, log

    def run_job(self, cronjob: str, timeout: float = 900) -> tuple[int, str]:
        """One run of a CronJob's pod (init containers first): (exit code, log)."""
        plan = self.plan.jobs[cronjob]
        failed = self.run_init_containers(plan)
        if failed is not None:
            return failed[1:]
        return self.run_to_completion(plan, timeout)

    def run_init_containers(self, plan: ContainerPlan) -> tuple[str, int, str] | None:
        """Run a pod's init containers in order, each to completion; the first that fails
        stops the pod: (its name, exit code, log), or None when all succeeded."""
        for init in plan.init:
            code, log = self.run_to_completion(init, timeout=300)
            if code != 0:
                return init.name, code, log
        return None

    def wait_ready(self, deployment: str, budget_s: float | None = None) -> Readiness:
        name = self.names[deployment]
        result = wait_until_ready(
            self.plan.containers[deployment],
            lambda: self.docker.running(name),
            self.started_at[deployment],
            budget_s=budget_s,
        )
        self.readiness[deployment] = result
        return result

    def wait_all_ready(self) -> dict[str, Readiness]:
        """Probe every container in parallel, as the kubelets of a fresh install would."""
        with concurrent.futures.ThreadPoolExecutor(len(self.names)) as pool:
            futures = {d: pool.submit(self.wait_ready, d) for d in self.names}
            return {d: f.result() for d, f in futures.items()}

    def run_test_pods(self, timeout: float = 120) -> dict[str, tuple[int, str]]:
        """Run each `helm test` hook pod to completion: {pod: (exit code, log)}."""
        results = {}
        for pod, plan in self.plan.tests.items():
            name = self.docker.start(plan)
            code = self.docker.wait_exit(name, timeout)
            results[pod] = (code, self.docker.logs(name))
        return results

    def memory(self) -> dict[str, float]:
        return {d: self.docker.memory_mib(n) for d, n in self.names.items()}


@contextlib.contextmanager
def running_stack(
    name: str,
    objects: list[dict[str, Any]],
    docker_bin: str,
    image: BuiltImage,
    only: list[str] | None = None,
    claims: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start the rendered Deployments (all of them, or `only`) from the built image, tagged as
    the manifests reference it; remove containers and tags afterwards. `claims` names the host
    directory of each PersistentVolumeClaim."""
    plan = PodPlan.from_manifests(objects, claims=claims)
    docker = Docker(docker_bin, f"recsys-ct-{name}")
    pods = [*plan.containers.values(), *plan.tests.values(), *plan.jobs.values()]
    refs = {c.image for pod in pods for c in [pod, *pod.init]}
    for ref in refs:
        docker.run("tag", image.tag, ref)
    stack = Stack(name, plan, docker)
    try:
        for deployment in list(plan.containers) if only is None else only:
            stack.start(deployment)
        yield stack
    finally:
        for deployment, container in stack.names.items():
            log = docker.logs(container, tail=400)
            log_dir = REPORT_DIR / "logs" / name
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / f"{deployment}.log").write_text(log)
        for pod, log in stack.logs.items():
            log_dir = REPORT_DIR / "logs" / name
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / f"{pod}.log").write_text(log)
        docker.cleanup()
        scratch = tempfile.gettempdir()
        for host, _ in {b for pod in pods for c in [pod, *pod.init] for b in c.binds.values()}:
            if Path(host).name.startswith("recsys-pod-") and str(Path(host).parent) == scratch:
                shutil.rmtree(host, ignore_errors=True)
        for ref in refs:
            docker.run("rmi", ref, check=False)


@pytest.fixture(scope="session")
def chart_render(helm_bin):
    """render(values_files, sets) with the real helm."""

    def _render(values_files: list[Path] = (), sets: list[str] = ()) -> list[dict[str, Any]]:
        return render(helm_bin, list(values_files), list(sets))

    return _render


def model_sets(image: BuiltImage, *keys: str) -> list[str]:
    """--set pairs pinning model tags (values keys like retrieval.canary.modelTag, or
    gateway.canary.rankingModelTag for the ranker inside the gateway) to the versions inside the
    image, in place of the scenario files' placeholders."""
    stage = {"gateway": "ranking"}
    return [
        f"{key}={image.model_tags[stage.get(key.split('.')[0], key.split('.')[0])]}" for key in keys
    ]
