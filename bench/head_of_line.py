"""Head of line: does batch traffic hold up single recommendations on the same form?

wrk offers `/recommend` at a fixed rate with Poisson arrivals (open loop: more connections
than the rate needs), once alone and once with `/recommend_batch` requests (several users
each) arriving beside it at a low Poisson rate from a small asyncio generator in this
process. Rounds alternate alone / with batch; the `/recommend` p95 of each is the median over
rounds, and their ratio is the head-of-line figure (target in `bench.equal_cpu`).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from pathlib import Path

import httpx

from bench.config import BenchConfig
from bench.loadgen import LoadResult, run_wrk
from bench.servers import Variant
from bench.stats import summarize_ms

BATCH_PATH = "/recommend_batch"
BATCH_TIMEOUT_S = 10.0


async def _batch_traffic(
    url: str, users: list[str], config: BenchConfig, seconds: float, seed: int
) -> dict:
    """POST /recommend_batch at Poisson arrivals for `seconds`; never waits for an answer."""
    rng = random.Random(seed)
    latencies: list[float] = []
    failures = 0

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        nonlocal failures
        start = time.perf_counter()
        try:
            response = await client.post(url, json=body)
            response.raise_for_status()
            latencies.append((time.perf_counter() - start) * 1000)
        except httpx.HTTPError:
            failures += 1

    async with httpx.AsyncClient(timeout=BATCH_TIMEOUT_S) as client:
        tasks = []
        deadline = time.perf_counter() + seconds
        next_arrival = time.perf_counter() + rng.expovariate(config.hol_batch_rate)
        while next_arrival < deadline:
            await asyncio.sleep(max(next_arrival - time.perf_counter(), 0.0))
            body = {"user_ids": rng.sample(users, config.hol_batch_users), "k": config.k}
            tasks.append(asyncio.create_task(one(client, body)))
            next_arrival += rng.expovariate(config.hol_batch_rate)
        await asyncio.gather(*tasks)
    return {"requests": len(tasks), "failures": failures, "latency_ms": summarize_ms(latencies)}


def _recommend_load(
    variant: Variant, users_file: Path, config: BenchConfig, seed: int
) -> LoadResult:
    return run_wrk(
        variant.name,
        variant.url,
        variant.body_format,
        users_file,
        config.hol_seconds,
        config.connections,
        rate=config.hol_rate,
        k=config.k,
        server_pids=variant.pids(),
        seed=seed,
    )


def _alone(variant: Variant, users_file: Path, config: BenchConfig, seed: int) -> dict:
    return _figures(_recommend_load(variant, users_file, config, seed))


def _with_batch(variant: Variant, users_file: Path, config: BenchConfig, seed: int) -> dict:
    users = [line for line in users_file.read_text().splitlines() if line]
    batch: dict = {}
    url = f"{variant.server.url}{BATCH_PATH}"

    def generate() -> None:
        batch.update(asyncio.run(_batch_traffic(url, users, config, config.hol_seconds, seed)))

    thread = threading.Thread(target=generate, name="batch-traffic")
    thread.start()
    try:
        load = _recommend_load(variant, users_file, config, seed)
    finally:
        thread.join()
    return {**_figures(load), "batch": batch}


def _figures(load: LoadResult) -> dict:
    return {
        "achieved_rps": load.achieved_rps,
        "error_count": load.error_count,
        "p50_ms": load.latency_ms["p50"],
        "p95_ms": load.p95_ms,
        "p99_ms": load.latency_ms["p99"],
        "server_cpu_cores": load.server_cpu_cores,
        "other_cpu_cores": load.other_cpu_cores,
    }


def run_head_of_line(variant: Variant, users_file: Path, config: BenchConfig) -> dict:
    """`/recommend` p95 alone and with batch traffic beside it, alternating rounds."""
    rounds = []
    for index in range(config.hol_rounds):
        seed = 1 + index
        alone_first = index % 2 == 0
        first, second = (_alone, _with_batch) if alone_first else (_with_batch, _alone)
        a = first(variant, users_file, config, seed)
        b = second(variant, users_file, config, seed)
        alone, with_batch = (a, b) if alone_first else (b, a)
        rounds.append({"alone": alone, "with_batch": with_batch})
    alone_p95 = statistics.median(r["alone"]["p95_ms"] for r in rounds)
    with_p95 = statistics.median(r["with_batch"]["p95_ms"] for r in rounds)
    return {
        "form": variant.name,
        "rate": config.hol_rate,
        "batch_rate": config.hol_batch_rate,
        "batch_users": config.hol_batch_users,
        "seconds": config.hol_seconds,
        "connections": config.connections,
        "alone_p95_ms": round(alone_p95, 2),
        "with_batch_p95_ms": round(with_p95, 2),
        "ratio": round(with_p95 / alone_p95, 3) if alone_p95 else None,
        "rounds": rounds,
    }
