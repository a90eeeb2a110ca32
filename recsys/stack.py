"""Start and stop the serving stack as real processes on 127.0.0.1.

Used by `recsys serve`, the tests, the load tests and the canary rehearsal. Two forms:

- `serve_all`: one `bentoml serve` that runs the gateway and both stages (local development).
- `serve_split`: each service in its own process, as in Kubernetes: the stages with
  `start-http-server --service-name <Name>`, the gateway with `--depends <Name>=<url>`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recsys.errors import StackNotReadyError

REPO_ROOT = Path(__file__).resolve().parent.parent
GATEWAY = "services.recommender:Recommender"
INLINE_GATEWAY = "services.inline:InlineRecommender"
STAGES = ("Retrieval", "Ranking")
# What `recsys.serving.BackgroundModel` logs when a model cannot be loaded.
_LOAD_FAILURE = re.compile(r"(?P<stage>\w+) model failed to load, staying unready: (?P<error>.*)")


@functools.cache
def stage_token() -> str:
    """The stage token of the servers this process starts: RECSYS_STAGE_TOKEN when set,
    otherwise a random one made once per process (so every stack it starts is locked)."""
    return os.environ.get("RECSYS_STAGE_TOKEN") or secrets.token_urlsafe(32)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status code of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class ServerProcess:
    """One server process (and its children), its port and its log file."""

    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    env: dict = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def load_failure(self) -> re.Match[str] | None:
        """The log line saying a model failed to load (`stage`, `error`): it never retries."""
        return _LOAD_FAILURE.search(self.log())

    def _not_ready(self, what: str) -> StackNotReadyError:
        """One line saying which stage is not ready and why, naming the log for the rest."""
        failure = self.load_failure()
        if failure:
            return StackNotReadyError(
                f"{self.name}: the {failure['stage']} stage never became ready: "
                f"{failure['error'].strip()} (log: {self.log_path})"
            )
        if not self.alive():
            lines = [line for line in self.log().splitlines() if line.strip()]
            last = lines[-1].strip() if lines else "no output"
            return StackNotReadyError(
                f"{self.name} exited with code {self.process.returncode}: {last} "
                f"(log: {self.log_path})"
            )
        return StackNotReadyError(f"{self.name}: {what} (log: {self.log_path})")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until /readyz answers 200; raise StackNotReadyError when it never will."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive() or self.load_failure():
                raise self._not_ready("not ready")
            if http_status(f"{self.url}/readyz") == 200:
                return
            time.sleep(0.25)
        raise self._not_ready(f"not ready after {timeout:g} s")

    def wait_stages(self, timeout: float = 90.0) -> None:
        """Block until the gateway reports every stage ready (its `/stages` endpoint).

        A model that failed to load stays unready for good, so that ends the wait at once.
        """
        import json

        deadline = time.monotonic() + timeout
        status: dict = {}
        while time.monotonic() < deadline:
            if not self.alive() or self.load_failure():
                raise self._not_ready("stages not ready")
            request = urllib.request.Request(
                f"{self.url}/stages", data=b"{}", headers={"content-type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    status = json.loads(response.read())
                if status and all(status.values()):
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.25)
        waiting = ", ".join(name for name, ready in status.items() if not ready) or "unknown"
        raise self._not_ready(f"stages not ready after {timeout:g} s (waiting for: {waiting})")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process tree, SIGKILL whatever is left after `timeout`.

        BentoML starts its workers in sessions of their own, so the process group alone misses
        them: the descendants are collected before signalling, and each is checked afterwards.
        """
        import psutil

        try:
            tree = [psutil.Process(self.process.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        for proc in tree[1:]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1)


def _own_home(env: Mapping[str, str], home: Path) -> Path:
    """A BENTOML_HOME for one server that shares the model store of the configured one.

    BentoML keeps its Prometheus multiprocess files under BENTOML_HOME and wipes them when a
    server starts, so two servers sharing a home would erase and mix each other's metrics.
    """
    models = Path(env.get("BENTOML_HOME") or Path.home() / "bentoml") / "models"
    models.mkdir(parents=True, exist_ok=True)
    models = models.resolve()
    home = home.resolve()  # the server runs in REPO_ROOT: a relative home would point elsewhere
    home.mkdir(parents=True, exist_ok=True)
    link = home / "models"
    if link.is_symlink() and link.resolve() != models:
        link.unlink()
    if not link.exists():
        link.symlink_to(models, target_is_directory=True)
    return home


def _launch(
    name: str, args: list[str], port: int, env: Mapping[str, str] | None, log_dir: Path
) -> ServerProcess:
    log_dir = log_dir.resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name.lower()}-{port}.log"
    full_env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        # One stage token for every server this process starts (the gateway sends it, the
        # stages require it); a caller's env can still set its own, e.g. a wrong one in a test.
        "RECSYS_STAGE_TOKEN": stage_token(),
        "BENTOML_DO_NOT_TRACK": "true",
        **(env or {}),
    }
    full_env["BENTOML_HOME"] = str(_own_home(full_env, log_dir / f"home-{name.lower()}-{port}"))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() takes the children too
        )
    return ServerProcess(name, port, process, log_path, dict(env or {}))


def start_all(
    port: int,
    env: Mapping[str, str] | None = None,
    log_dir: Path = Path("/tmp/recsys-logs"),
    gateway: str = GATEWAY,
) -> ServerProcess:
    """`bentoml serve` of a gateway: the split one starts both stages as local processes, the
    inline one (`INLINE_GATEWAY`) runs them inside its own process."""
    args = ["bentoml", "serve", gateway, "--host", "127.0.0.1", "--port", str(port)]
    return _launch("stack", args, port, env, log_dir)


def start_service(
    name: str,
    port: int,
    env: Mapping[str, str] | None = None,
    depends: Mapping[str, str] | None = None,
    log_dir: Path = Path("/tmp/recsys-logs"),
) -> ServerProcess:
    """One service as the Bento image runs it in Kubernetes (`start-http-server`)."""
    args = [
        "bentoml_cli._internal.start",
        "start-http-server",
        GATEWAY,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--working-dir",
        str(REPO_ROOT),
    ]
    if name != "Recommender":
        args += ["--service-name", name]
    for dependency, url in (depends or {}).items():
        args += ["--depends", f"{dependency}={url}"]
    return _launch(name, args, port, env, log_dir)


@contextlib.contextmanager
def serve_all(
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout: float = 120.0,
    gateway: str = GATEWAY,
) -> Iterator[ServerProcess]:
    """Run the whole stack in one `bentoml serve`; yields once the gateway and stages are ready."""
    server = start_all(port or free_port(), env, gateway=gateway)
    try:
        server.wait_ready(timeout)
        server.wait_stages(timeout)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serve_split(
    env: Mapping[str, str] | None = None,
    stage_env: Mapping[str, Mapping[str, str]] | None = None,
    depends: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[dict[str, ServerProcess]]:
    """Each service in its own process. `depends` overrides a stage's URL (e.g. a dead port)."""
    servers: dict[str, ServerProcess] = {}
    try:
        urls = dict(depends or {})
        for stage in STAGES:
            if stage in urls:
                continue
            stage_vars = {**(env or {}), **((stage_env or {}).get(stage, {}))}
            servers[stage] = start_service(stage, free_port(), stage_vars)
            urls[stage] = servers[stage].url
        for server in servers.values():
            server.wait_ready(timeout)
        gateway_env = {**(env or {}), **((stage_env or {}).get("Recommender", {}))}
        servers["Recommender"] = start_service("Recommender", free_port(), gateway_env, urls)
        servers["Recommender"].wait_ready(timeout)
        yield servers
    finally:
        for server in servers.values():
            server.stop()
