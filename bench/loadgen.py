"""The load generator: wrk (C, one thread) driven by `recommend.lua`, plus CPU accounting.

wrk is used because it shares the 2 cores with the servers: at a few hundred requests/s it
needs a few percent of one core, where a Python generator would take a large share of the
machine. Every variant is measured with the same generator, settings and user list.

CPU accounting per measurement: wrk's own CPU time (from `wait4`), the server process trees'
CPU time, and the whole machine's busy time (recsys.ops.cpu), so what other work on the
machine took during the step is visible too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recsys.ops import cpu
from recsys.ops.cpu import machine_cpu_seconds, tree_cpu_seconds

LUA_SCRIPT = Path(__file__).resolve().parent / "recommend.lua"
WRK_TIMEOUT_S = 5


class LoadGeneratorMissing(RuntimeError):
    """wrk is not installed (Debian: `apt-get install wrk`)."""


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise LoadGeneratorMissing("wrk is not on PATH: install it with `apt-get install -y wrk`")
    return path


class SharedMachine:
    """Bounded patience with the other work on a shared machine.

    Before a measurement, `wait_for_quiet` waits (at most `max_wait_s`) for the rest of the
    machine to use no more than `threshold_cores`; `may_repeat` allows repeating a disturbed
    measurement. Both draw on one budget of `patience_s` seconds per run, so a busy machine
    makes the run noisier, never endless.
    """

    def __init__(self, patience_s: float, threshold_cores: float, max_wait_s: float = 15.0):
        self.left_s = patience_s
        self.threshold_cores = threshold_cores
        self.max_wait_s = max_wait_s
        self.waited_s = 0.0
        self.repeats = 0

    def other_cores(self, window_s: float = 0.5) -> float:
        """Cores used by everything but this process tree (benchmark, servers, wrk) just now."""
        mine_before = tree_cpu_seconds([os.getpid()])
        busy_before, total_before = machine_cpu_seconds()
        time.sleep(window_s)
        busy_after, total_after = machine_cpu_seconds()
        mine = (tree_cpu_seconds([os.getpid()]) - mine_before) / window_s
        cores = cpu.cores()
        busy = (busy_after - busy_before) / max(total_after - total_before, 1e-9) * cores
        return max(busy - mine, 0.0)

    def wait_for_quiet(self) -> float:
        """Wait while other work is above the threshold (within limits); the last reading."""
        if self.left_s <= 0:
            return -1.0  # no patience left (or none configured): no reading either
        waited = 0.0
        while True:
            other = self.other_cores()
            if other <= self.threshold_cores or self.left_s <= 0 or waited >= self.max_wait_s:
                return other
            time.sleep(1.0)
            waited += 1.5
            self.left_s -= 1.5
            self.waited_s += 1.5

    def may_repeat(self, cost_s: float) -> bool:
        if self.left_s < cost_s:
            return False
        self.left_s -= cost_s
        self.repeats += 1
        return True

    def summary(self) -> dict:
        return {
            "threshold_other_cores": self.threshold_cores,
            "waited_for_quiet_s": round(self.waited_s, 1),
            "repeated_measurements": self.repeats,
            "patience_left_s": round(self.left_s, 1),
        }


@dataclass
class LoadResult:
    """One wrk run against one variant: throughput, latency and who used the CPU."""

    variant: str
    offered_rps: float  # 0 = closed loop
    connections: int
    seconds: float
    requests: int
    achieved_rps: float
    errors: dict[str, int]
    error_count: int
    latency_ms: dict[str, float]
    generator_cpu_cores: float  # wrk CPU seconds / wall seconds (1.0 = one full core)
    server_cpu_cores: float
    machine_busy_cores: float
    other_cpu_cores: float  # machine busy minus server and generator: everything else
    server_cpu_seconds: float  # the server process trees' CPU time during the run
    server_cpu_ms_per_request: float
    extra: dict = field(default_factory=dict)

    @property
    def p95_ms(self) -> float:
        return self.latency_ms["p95"]

    def to_dict(self) -> dict:
        return asdict(self)


def run_wrk(
    variant: str,
    url: str,
    body_format: str,
    users_file: Path,
    seconds: float,
    connections: int,
    rate: float = 0.0,
    k: int = 10,
    server_pids: list[int] | None = None,
    seed: int = 1,
) -> LoadResult:
    """Run wrk once (one thread) and return its figures with the CPU use around it.

    Args:
        variant: Name recorded with the result.
        url: Full URL of the recommend endpoint on 127.0.0.1.
        body_format: "bento" or "kserve" (see recommend.lua).
        users_file: User ids, one per line.
        seconds: Duration of the run (whole seconds; wrk's resolution).
        connections: Most requests in flight at once.
        rate: Offered requests/s (Poisson arrivals); 0 for a closed loop.
        k: Items per answer.
        server_pids: Processes whose CPU time (with descendants) is charged to the server.
        seed: Seed of the arrival times and the first user.

    Returns:
        The run's LoadResult.
    """
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError(f"load goes to the loopback address only, not {url}")
    duration = max(1, round(seconds))
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    env = {
        **os.environ,
        "BENCH_USERS_FILE": str(users_file),
        "BENCH_BODY": body_format,
        "BENCH_K": str(k),
        "BENCH_RATE": str(rate),
        "BENCH_SEED": str(seed),
        "BENCH_RESULT": str(result_path),
    }
    args = [
        wrk_path(),
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    pids = server_pids or []
    server_before = tree_cpu_seconds(pids)
    busy_before, total_before = machine_cpu_seconds()
    start = time.perf_counter()
    process = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        if process.poll() is None:
            process.kill()
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    busy_after, total_after = machine_cpu_seconds()
    server_cpu = tree_cpu_seconds(pids) - server_before
    try:
        if process.returncode != 0 or not result_path.exists() or not result_path.stat().st_size:
            raise RuntimeError(f"wrk failed ({process.returncode}): {output.decode()[-2000:]}")
        summary = json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)
    cores = cpu.cores()
    machine_busy = (busy_after - busy_before) / max(total_after - total_before, 1e-9) * cores
    generator = (usage.ru_utime + usage.ru_stime) / wall
    run_seconds = summary["duration_us"] / 1e6
    requests = summary["requests"]
    errors = summary["errors"]
    percentiles = summary["latency_us"]["percentiles"]
    latency = {
        "p50": percentiles["50"] / 1000,
        "p90": percentiles["90"] / 1000,
        "p95": percentiles["95"] / 1000,
        "p99": percentiles["99"] / 1000,
        "p99.9": percentiles["99.9"] / 1000,
        "mean": summary["latency_us"]["mean"] / 1000,
        "max": summary["latency_us"]["max"] / 1000,
    }
    return LoadResult(
        variant=variant,
        offered_rps=rate,
        connections=connections,
        seconds=round(run_seconds, 2),
        requests=requests,
        achieved_rps=round(requests / max(run_seconds, 1e-9), 1),
        errors=errors,
        error_count=sum(errors.values()),
        latency_ms={key: round(value, 2) for key, value in latency.items()},
        generator_cpu_cores=round(generator, 3),
        server_cpu_cores=round(server_cpu / wall, 3),
        machine_busy_cores=round(machine_busy, 3),
        other_cpu_cores=round(max(machine_busy - generator - server_cpu / wall, 0.0), 3),
        server_cpu_seconds=round(server_cpu, 3),
        server_cpu_ms_per_request=round(server_cpu * 1000 / max(requests, 1), 2),
    )
