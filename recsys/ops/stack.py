"""Start and stop the serving stack as real processes on 127.0.0.1, as the chart runs it.

Used by `recsys serve`, the tests, the load tests, the benchmark and the canary rehearsal.
Every service runs as the image runs it in Kubernetes (`start-http-server`, stages with
`--service-name <Name>`, the gateway with `--depends <Name>=<url>` for each remote stage). The
forms (`FORMS`) differ in which stages run in processes of their own:

- `default`: Retrieval apart, Ranking inside the gateway (the chart's two deployments);
- `split`: Retrieval and Ranking apart (the chart's `ranking.separate` option);
- `single`: both stages inside the gateway (one process, no hop).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recsys import REPO_ROOT
from recsys.errors import StackNotReadyError
from recsys.ops.bentoml_home import model_store, private_home
from recsys.ops.processes import start_logged, stop_tree

GATEWAY = "services.recommender:Recommender"
STAGES = ("Retrieval", "Ranking")
# Stages that run in processes of their own, by form; the others run inside the gateway.
FORMS: dict[str, tuple[str, ...]] = {
    "default": ("Retrieval",),
    "split": ("Retrieval", "Ranking"),
    "single": (),
}
DEFAULT_FORM = "default"
# What `recsys.serving.models.BackgroundModel` logs when a model cannot be loaded.
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
        """SIGTERM the process tree, SIGKILL whatever is left after `timeout`."""
        stop_tree(self.process.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1)


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
    # A home of its own (see recsys.ops.bentoml_home), sharing the configured model store.
    home = log_dir / f"home-{name.lower()}-{port}"
    full_env["BENTOML_HOME"] = str(private_home(home, model_store(full_env)))
    process = start_logged([sys.executable, "-m", *args], log_path, full_env, cwd=REPO_ROOT)
    return ServerProcess(name, port, process, log_path, dict(env or {}))


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
    # Named even for the gateway: without --service-name, BentoML starts every stage left out of
    # --depends as a process of its own instead of running it inside the gateway.
    args += ["--service-name", name]
    for dependency, url in (depends or {}).items():
        args += ["--depends", f"{dependency}={url}"]
    return _launch(name, args, port, env, log_dir)


def start_all(
    port: int,
    env: Mapping[str, str] | None = None,
    log_dir: Path = Path("/tmp/recsys-logs"),
    service: str = GATEWAY,
) -> ServerProcess:
    """`bentoml serve` of a service, as in local development: for the gateway, BentoML starts
    both stages as processes of its own, reached over Unix sockets."""
    args = ["bentoml", "serve", service, "--host", "127.0.0.1", "--port", str(port)]
    return _launch("stack", args, port, env, log_dir)


@contextlib.contextmanager
def serve_all(
    env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> Iterator[ServerProcess]:
    """`start_all`, once the gateway and both stages are ready; stopped on exit."""
    server = start_all(free_port(), env)
    try:
        server.wait_ready(timeout)
        server.wait_stages(timeout)
        yield server
    finally:
        server.stop()


@dataclass
class Stack:
    """The processes of one serving stack: the gateway and the stages running apart from it.

    Reads like the gateway's `ServerProcess` (url, port, log, wait_ready, stop) while looking
    after every process: a stage that fails to load or exits is reported, and stop takes all.
    """

    form: str
    servers: dict[str, ServerProcess]

    def __getitem__(self, name: str) -> ServerProcess:
        return self.servers[name]

    @property
    def gateway(self) -> ServerProcess:
        return self.servers["Recommender"]

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def log_path(self) -> Path:
        return self.gateway.log_path

    def log(self) -> str:
        return self.gateway.log()

    def alive(self) -> bool:
        return all(server.alive() for server in self.servers.values())

    def load_failure(self) -> re.Match[str] | None:
        return next((m for server in self.servers.values() if (m := server.load_failure())), None)

    def _check(self) -> None:
        """Raise for the first process that exited or whose model failed to load."""
        for server in self.servers.values():
            if not server.alive() or server.load_failure():
                raise server._not_ready("not ready")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until every process answers /readyz 200 (stages first, then the gateway)."""
        deadline = time.monotonic() + timeout
        for server in self.servers.values():
            self._check()
            server.wait_ready(max(deadline - time.monotonic(), 0.1))

    def wait_stages(self, timeout: float = 90.0) -> None:
        self._check()
        self.gateway.wait_stages(timeout)

    def wait(self) -> int:
        """Block until one of the processes exits; its exit code."""
        while True:
            for server in self.servers.values():
                code = server.process.poll()
                if code is not None:
                    return code
            time.sleep(0.5)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the gateway first (no calls to stopped stages), then the stages."""
        for server in reversed(list(self.servers.values())):
            server.stop(timeout)


def start_stack(
    port: int,
    env: Mapping[str, str] | None = None,
    log_dir: Path = Path("/tmp/recsys-logs"),
    form: str = DEFAULT_FORM,
    stage_env: Mapping[str, Mapping[str, str]] | None = None,
    depends: Mapping[str, str] | None = None,
) -> Stack:
    """Start a stack in `form` with the gateway on `port` (returns at once; see wait_ready).

    `stage_env` adds variables per service ({"Ranking": {...}}: a stage in the gateway's
    process takes the gateway's); `depends` points a remote stage at a given URL (e.g. a dead
    port) instead of starting it.
    """
    if form not in FORMS:
        raise ValueError(f"unknown stack form {form!r}; one of {', '.join(FORMS)}")
    stage_env = stage_env or {}
    urls = dict(depends or {})
    servers: dict[str, ServerProcess] = {}
    try:
        for stage in FORMS[form]:
            if stage in urls:
                continue
            variables = {**(env or {}), **stage_env.get(stage, {})}
            servers[stage] = start_service(stage, free_port(), variables, log_dir=log_dir)
            urls[stage] = servers[stage].url
        gateway_env = {**(env or {}), **stage_env.get("Recommender", {})}
        servers["Recommender"] = start_service(
            "Recommender", port, gateway_env, urls, log_dir=log_dir
        )
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return Stack(form, servers)


@contextlib.contextmanager
def serve_stack(
    env: Mapping[str, str] | None = None,
    form: str = DEFAULT_FORM,
    stage_env: Mapping[str, Mapping[str, str]] | None = None,
    depends: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout: float = 120.0,
    wait_stages: bool = True,
) -> Iterator[Stack]:
    """A started stack, once every process is ready (and, by default, the gateway sees every
    stage ready); stopped on exit."""
    stack = start_stack(port or free_port(), env, form=form, stage_env=stage_env, depends=depends)
    try:
        stack.wait_ready(timeout)
        if wait_stages:
            stack.wait_stages(timeout)
        yield stack
    finally:
        stack.stop()
