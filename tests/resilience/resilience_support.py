"""What the resilience scenarios share beyond recsys.ops.topology (the process topology) and
loadtests.request_log (Locust runs and the figures from their request log): the figures summary,
Prometheus samples of a server's /metrics, and a readiness-gated load balancer.

Everything runs as real processes on 127.0.0.1. Nothing here is a test; `conftest.py` holds the
fixtures and prints the collected figures at the end of the session.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from recsys.stack import ServerProcess, free_port, http_status

# Figures of every scenario in this session: (title, {name: value}); printed by conftest.py.
FIGURES: list[tuple[str, dict]] = []


def report(title: str, figures: Mapping[str, object]) -> None:
    """Keep a scenario's figures for the end-of-session summary (and print them now for -s)."""
    FIGURES.append((title, dict(figures)))
    print(f"\n{title}\n" + "\n".join(f"  {k:<34} {v}" for k, v in figures.items()))


def is_ready(server: ServerProcess) -> bool:
    return http_status(f"{server.url}/readyz", timeout=1.0) == 200


# --- Prometheus text ----------------------------------------------------------------------------


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric in Prometheus' text format: [(labels, value)]."""
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


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
