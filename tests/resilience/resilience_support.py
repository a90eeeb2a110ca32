"""What the resilience scenarios share: the process topology, Locust runs, a readiness-gated
load balancer, the figures computed from the request log, and Prometheus text parsing.

Everything runs as real processes on 127.0.0.1. Nothing here is a test; `conftest.py` holds the
fixtures and prints the collected figures at the end of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recsys.stack import ServerProcess, free_port, http_status, start_service

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locust_resilience.py"
STAGES = ("Retrieval", "Ranking")

# Figures of every scenario in this session: (title, {name: value}); printed by conftest.py.
FIGURES: list[tuple[str, dict]] = []


def report(title: str, figures: Mapping[str, object]) -> None:
    """Keep a scenario's figures for the end-of-session summary (and print them now for -s)."""
    FIGURES.append((title, dict(figures)))
    print(f"\n{title}\n" + "\n".join(f"  {k:<34} {v}" for k, v in figures.items()))


# --- the process topology -------------------------------------------------------------------


def private_home(root: Path, models: Path, name: str) -> Path:
    """A BENTOML_HOME for one server process that shares the model store `models`.

    BentoML empties `<BENTOML_HOME>/prometheus_multiproc_dir` whenever a server starts, and every
    server's /metrics reads all the files in it: servers that share a home wipe and mix each
    other's metrics. In Kubernetes each pod has its own /tmp, so each server gets its own home.
    """
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    link = home / "models"
    if not link.exists():
        link.symlink_to(models, target_is_directory=True)
    return home


@dataclass
class Topology:
    """Retrieval, Ranking and the gateway, each its own process as in Kubernetes.

    A stage can be killed and started again on the same port, the way a pod is replaced behind
    its Service, so the gateway keeps its `--depends` URLs.
    """

    models: Path
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    servers: dict[str, ServerProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    starts: Counter = field(default_factory=Counter)
    started: list[ServerProcess] = field(default_factory=list)  # every process, for stop()

    def _start(self, name: str, extra_env=None, depends=None) -> ServerProcess:
        port = self.ports.setdefault(name, free_port())
        server = self.start_replica(name, extra_env, depends, port)
        self.servers[name] = server
        return server

    def start_replica(self, name: str, extra_env=None, depends=None, port=None) -> ServerProcess:
        """One more process of a service (its own home, log and, unless given, port)."""
        self.starts[name] += 1
        run = f"{name.lower()}-{self.starts[name]}"
        env = {
            **self.env,
            "BENTOML_HOME": str(private_home(self.root / "homes", self.models, run)),
            **(extra_env or {}),
        }
        port = port or free_port()
        server = start_service(name, port, env, depends, log_dir=self.root / "logs" / run)
        self.started.append(server)
        return server

    def start(self, timeout: float = 120.0, stage_env=None, gateway_env=None) -> None:
        """Both stages (in parallel), then the gateway once they are ready."""
        for stage in STAGES:
            self._start(stage, (stage_env or {}).get(stage))
        for stage in STAGES:
            self.servers[stage].wait_ready(timeout)
        depends = {stage: self.servers[stage].url for stage in STAGES}
        self._start("Recommender", gateway_env, depends).wait_ready(timeout)
        self.gateway.wait_stages(timeout)

    @property
    def gateway(self) -> ServerProcess:
        return self.servers["Recommender"]

    def kill(self, name: str) -> float:
        """SIGKILL every process of the service, as a crashed pod; returns when all are gone."""
        kill_tree(self.servers[name])
        return time.time()

    def restart(self, name: str, extra_env=None) -> ServerProcess:
        """Start the service again on its old port (not waiting for readiness)."""
        return self._start(name, extra_env)

    def stop(self) -> None:
        for server in reversed(self.started):
            stop_tree(server)


def _tree(server: ServerProcess) -> list:
    """The server's process and all its descendants. BentoML's workers run in sessions of their
    own, so signalling the server's process group does not reach them."""
    import psutil

    try:
        root = psutil.Process(server.process.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(server: ServerProcess) -> None:
    """SIGKILL a server and every descendant (an orphaned worker would keep the port)."""
    import psutil

    processes = _tree(server)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)
    server.process.wait(10)


def stop_tree(server: ServerProcess, timeout: float = 15.0) -> None:
    """Graceful stop (SIGTERM, as Kubernetes does), then SIGKILL whatever is left."""
    processes = _tree(server)
    server.stop(timeout)
    import psutil

    for process in psutil.wait_procs(processes, timeout=5)[1]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def wait_for(condition, timeout: float, interval: float = 0.1, what: str = "condition") -> float:
    """Poll `condition()` until true; returns the time.time() it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def is_ready(server: ServerProcess) -> bool:
    return http_status(f"{server.url}/readyz", timeout=1.0) == 200


# --- Locust ---------------------------------------------------------------------------------


@dataclass
class LoadRun:
    """One Locust process writing the request log; stop() ends it early (SIGTERM is graceful)."""

    process: subprocess.Popen
    log_path: Path
    output_path: Path

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def wait(self, timeout: float) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def records(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text().splitlines()
        # The last line of a run stopped mid-write may be cut: every complete one is kept.
        records = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
        return records


def start_load(
    host: str,
    out_dir: Path,
    users: int,
    rate: float,
    run_time_s: float,
    known_users: Iterable[str] = (),
    spike: tuple[int, int, float, float, float] | None = None,
    locustfile: Path = LOCUSTFILE,
) -> LoadRun:
    """Start Locust in its own process (it cannot share one with xgboost/kserve imports).

    Args:
        host: the gateway URL.
        out_dir: where the request log and Locust's output go.
        users: simulated users (ignored with `spike`, whose shape sets them).
        rate: requests per second per user (0: no wait between requests).
        run_time_s: upper bound of the run; `LoadRun.stop()` may end it earlier.
        known_users: user ids with history; cold ids are mixed in by the locustfile.
        spike: (base users, spike users, base s, spike s, after s) for a spike shape.

    Returns:
        The running LoadRun.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "requests.jsonl"
    log_path.unlink(missing_ok=True)
    output_path = out_dir / "locust.out"
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "RECSYS_RESILIENCE_LOG": str(log_path),
        "RECSYS_RESILIENCE_RATE": str(rate),
        "RECSYS_RESILIENCE_USERS": ",".join(known_users),
    }
    env.pop("RECSYS_RESILIENCE_SPIKE", None)
    if spike:
        env["RECSYS_RESILIENCE_SPIKE"] = ",".join(str(v) for v in spike)
    command = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary",
        "--host", host, "--users", str(users), "--spawn-rate", str(users),
        "--run-time", f"{int(run_time_s)}s", "--stop-timeout", "5", "--loglevel", "WARNING",
    ]  # fmt: skip
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=HERE,
        )
    run = LoadRun(process, log_path, output_path)
    # Locust needs a moment to import and spawn; wait for its first answers.
    try:
        wait_for(
            lambda: process.poll() is not None or (log_path.exists() and log_path.stat().st_size),
            60,
            0.1,
            "first answer",
        )
    except TimeoutError:
        run.stop()
        raise
    if not (log_path.exists() and log_path.stat().st_size):
        raise RuntimeError(f"Locust exited at once:\n{run.output()[-3000:]}")
    return run


# --- figures from the request log ---------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, round(q / 100.0 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def is_shed(record: dict) -> bool:
    """A load-shedding answer: 503 with a Retry-After header."""
    return record["status"] == 503 and bool(record.get("retry_after"))


def failures(records: Iterable[dict], shed_allowed: bool = False) -> list[dict]:
    """Requests that failed for the caller: any non-200 (but a shed 503 when `shed_allowed`),
    or a 200 whose answer was invalid."""
    return [
        r
        for r in records
        if (r["status"] != 200 and not (shed_allowed and is_shed(r)))
        or (r["status"] == 200 and r.get("error"))
    ]


def in_window(records: Iterable[dict], start: float, end: float) -> list[dict]:
    return [r for r in records if start <= r["t"] < end]


def stage_reasons(records: Iterable[dict], stage: str) -> Counter:
    """How often each fallback reason of `stage` appears in the answers."""
    reasons: Counter = Counter()
    for record in records:
        for reason in record.get("reasons", []):
            name, _, why = reason.partition(":")
            if name == stage:
                reasons[why] += 1
    return reasons


def dropped_calls(records: Iterable[dict]) -> list[dict]:
    """Answers degraded because a stage call failed outright (not merely timed out)."""
    return [r for r in records if any(not x.endswith(":timeout") for x in r.get("reasons", []))]


def timed_out(records: Iterable[dict]) -> list[dict]:
    """Answers degraded because a stage call ran past its timeout (a busy machine does that)."""
    return [r for r in records if any(x.endswith(":timeout") for x in r.get("reasons", []))]


def degraded_for(record: dict, stage: str) -> bool:
    return any(r.startswith(f"{stage}:") for r in record.get("reasons", []))


def latency_figures(records: list[dict], prefix: str = "") -> dict:
    latencies = [r["ms"] for r in records]
    return {
        f"{prefix}p50_ms": _round(percentile(latencies, 50)),
        f"{prefix}p95_ms": _round(percentile(latencies, 95)),
        f"{prefix}p99_ms": _round(percentile(latencies, 99)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# --- Prometheus text ----------------------------------------------------------------------------


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric in Prometheus' text format: [(labels, value)]."""
    samples = []
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        labels = {}
        for part in label_text.rstrip("}").split('",'):
            key, _, raw = part.partition("=")
            if key:
                labels[key.strip()] = raw.strip().strip('"')
        samples.append((labels, float(value)))
    return samples


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    return sum(
        value
        for sample_labels, value in metric_samples(text, name)
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


def scrape(server: ServerProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        return response.read().decode()


# --- the load balancer standing in for a Kubernetes Service ------------------------------------

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass
class Backend:
    """One replica behind the balancer, with what the balancer saw of it."""

    url: str
    ready: bool = False  # last readiness probe answered 200
    ready_since: float | None = None  # time.time() of the probe that found it ready
    terminating: bool = False  # removed from rotation (draining or gone)
    in_flight: int = 0
    served: int = 0
    upstream_errors: int = 0


class ReadinessBalancer:
    """An HTTP load balancer on 127.0.0.1 that routes only to replicas whose /readyz is 200.

    It stands in for a Kubernetes Service during a rolling update (no cluster here): a replica
    added to it is, like a new pod in the Endpoints, not ready until its readiness probe passes
    (polled every `probe_interval_s`); a replica being replaced is first taken out of rotation,
    then drained of its in-flight requests, then stopped. Requests are balanced one by one
    (round robin), as an ingress or a mesh does; kube-proxy balances connections instead.
    """

    def __init__(self, probe_interval_s: float = 0.25) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.probe_interval_s = probe_interval_s
        self.backends: dict[str, Backend] = {}
        self.no_endpoint = 0  # requests that found no ready replica
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="balancer", daemon=True)
        self._up = threading.Event()
        self._stopping: asyncio.Event | None = None

    def __enter__(self) -> ReadinessBalancer:
        self._thread.start()
        if not self._up.wait(30):
            raise RuntimeError("the balancer did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(15)

    def add(self, url: str) -> Backend:
        """A new replica: in the balancer at once, routed to once its readiness probe passes."""
        with self._lock:
            self.backends[url] = Backend(url)
            return self.backends[url]

    def routable(self) -> list[Backend]:
        with self._lock:
            return [b for b in self.backends.values() if b.ready and not b.terminating]

    def drain(self, url: str, timeout: float = 30.0) -> int:
        """Take a replica out of rotation and wait for its in-flight requests; returns how many
        were still in flight at the timeout (0 when drained)."""
        with self._lock:
            backend = self.backends[url]
            backend.terminating = True
        deadline = time.monotonic() + timeout
        while backend.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        return backend.in_flight

    def remove(self, url: str) -> Backend:
        with self._lock:
            backend = self.backends.pop(url)
            backend.terminating = True
            return backend

    def _pick(self) -> Backend | None:
        candidates = self.routable()
        if not candidates:
            return None
        return candidates[next(self._turn) % len(candidates)]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        import aiohttp
        from aiohttp import web

        self._stopping = asyncio.Event()
        # Idle connections are closed before the replicas' own 5 s keep-alive ends, so none is
        # reused at the moment the replica closes it.
        connector = aiohttp.TCPConnector(keepalive_timeout=2.0)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            self._session = session
            app = web.Application(client_max_size=16 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._forward)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            prober = asyncio.create_task(self._probe_forever())
            self._up.set()
            await self._stopping.wait()
            prober.cancel()
            await runner.cleanup()

    async def _probe_forever(self) -> None:
        import aiohttp

        probe_timeout = aiohttp.ClientTimeout(total=1.0)
        while True:
            with self._lock:
                backends = list(self.backends.values())
            for backend in backends:
                try:
                    async with self._session.get(
                        f"{backend.url}/readyz", timeout=probe_timeout
                    ) as response:
                        ready = response.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    ready = False
                if ready and not backend.ready:
                    backend.ready_since = time.time()
                backend.ready = ready
            await asyncio.sleep(self.probe_interval_s)

    async def _forward(self, request):
        import aiohttp
        from aiohttp import web

        backend = self._pick()
        if backend is None:
            self.no_endpoint += 1
            return web.json_response({"error": "no ready endpoint"}, status=503)
        backend.in_flight += 1
        backend.served += 1
        try:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            async with self._session.request(
                request.method, backend.url + request.path_qs, headers=headers, data=body
            ) as upstream:
                payload = await upstream.read()
                reply_headers = [
                    (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
                ]
                return web.Response(status=upstream.status, body=payload, headers=reply_headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            backend.upstream_errors += 1
            return web.json_response({"error": f"upstream failed: {exc!r}"}, status=502)
        finally:
            backend.in_flight -= 1
