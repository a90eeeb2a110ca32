"""Locust runs that log every request, and the figures taken from that log.

`start_load` runs loadtests/resilience_locustfile.py in its own process (Locust cannot share one
with the project's xgboost/kserve imports); the resilience scenarios (tests/resilience) and the
soak test (scripts/soak.py) read the JSON-lines log it writes, so every figure they report comes
from what callers saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from loadtests.gate_checks import percentile_of
from recsys.ops.polling import wait_for

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "resilience_locustfile.py"


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
    """Answers degraded because a stage call failed outright: not merely timed out, and not
    refused by a circuit breaker that timeouts opened (the stage's last failure before the
    refusal, in time order, was a timeout: a busy machine, not a dropped call)."""
    dropped, last_failure = [], {}
    for record in sorted(records, key=lambda r: r.get("t", 0.0)):
        outright = False
        for reason in record.get("reasons", []):
            stage, _, why = reason.partition(":")
            if why == "circuit_open":
                outright |= last_failure.get(stage) != "timeout"
            else:
                last_failure[stage] = why
                outright |= why != "timeout"
        if outright:
            dropped.append(record)
    return dropped


def timed_out(records: Iterable[dict]) -> list[dict]:
    """Answers degraded because a stage call ran past its timeout (a busy machine does that)."""
    return [r for r in records if any(x.endswith(":timeout") for x in r.get("reasons", []))]


def degraded_for(record: dict, stage: str) -> bool:
    return any(r.startswith(f"{stage}:") for r in record.get("reasons", []))


def latency_figures(records: list[dict], prefix: str = "") -> dict:
    """p50, p95 and p99 of the records' latencies (nearest rank, ms, one decimal)."""
    latencies = [r["ms"] for r in records]
    return {f"{prefix}p{q}_ms": _round(percentile_of(latencies, q / 100)) for q in (50, 95, 99)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
