"""Soak test: hold moderate load on the split stack for a long time; report errors and memory.

`make soak` runs it (never in CI). It starts Retrieval, Ranking and the gateway as separate
processes on 127.0.0.1 with the stored models (`make train` first), keeps a constant Locust load
(loadtests/resilience_locustfile.py) for --duration, samples the resident memory (RSS) of
every process of every service, and writes to --out:

- memory.csv: time_s, service, pid, role (server or worker), rss_mb; one row per process and sample
- requests.jsonl: one line per request, as Locust saw it
- summary.json: request, error and degraded counts, latency percentiles, and per service the RSS
  after warm-up, at the end, at its peak, its growth and its trend (least squares, MB per hour)

Exit code: 0; 1 when a request failed or a service grew more than --max-growth-mb; 2 when the
stack could not start.

Example: `python scripts/soak.py --duration 30m --users 8 --rate 5 --out reports/soak`
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import psutil

from recsys.errors import StackNotReadyError
from recsys.ops.bentoml_home import model_store
from recsys.ops.durations import DurationError, parse_duration
from recsys.ops.processes import process_tree
from recsys.stack import REPO_ROOT

MAX_DURATION_S = 24 * 3600
SERVICES = ("Retrieval", "Ranking", "Recommender")


def soak_duration(text: str) -> float:
    """An argparse type: seconds of a duration (recsys.ops.durations), at most 24 hours."""
    try:
        return parse_duration(text, maximum_s=MAX_DURATION_S)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def memory_trend(samples: list[tuple[float, float]]) -> dict:
    """Start, end, peak, growth and least-squares slope of (seconds, MB) samples.

    Args:
        samples: (time in seconds, RSS in MB), in time order.

    Returns:
        {"start_mb", "end_mb", "peak_mb", "growth_mb", "slope_mb_per_h"}; the slope is None
        for fewer than two samples.
    """
    if not samples:
        return {
            "start_mb": None,
            "end_mb": None,
            "peak_mb": None,
            "growth_mb": None,
            "slope_mb_per_h": None,
        }
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    slope = None
    if len(samples) >= 2 and max(times) > min(times):
        mean_t, mean_v = sum(times) / len(times), sum(values) / len(values)
        covariance = sum((t - mean_t) * (v - mean_v) for t, v in samples)
        variance = sum((t - mean_t) ** 2 for t in times)
        slope = round(covariance / variance * 3600, 2)
    return {
        "start_mb": round(values[0], 1),
        "end_mb": round(values[-1], 1),
        "peak_mb": round(max(values), 1),
        "growth_mb": round(values[-1] - values[0], 1),
        "slope_mb_per_h": slope,
    }


def process_rss(server) -> list[tuple[int, str, float]]:
    """(pid, role, RSS in MB) of a service's server process and its workers."""
    rows = []
    for index, process in enumerate(process_tree(server.process.pid)):
        try:
            rows.append((process.pid, "worker" if index else "server", process.memory_info().rss))
        except psutil.NoSuchProcess:
            continue
    return [(pid, role, rss / 2**20) for pid, role, rss in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration",
        type=soak_duration,
        default=soak_duration("10m"),
        help="How long to hold the load (90s, 15m, 2h; at most 24h).",
    )
    parser.add_argument("--users", type=int, default=8, help="Simulated Locust users.")
    parser.add_argument("--rate", type=float, default=5.0, help="Requests per second per user.")
    parser.add_argument(
        "--sample-every", type=float, default=10.0, help="Seconds between two RSS samples."
    )
    parser.add_argument(
        "--warmup",
        type=soak_duration,
        default=None,
        help="Left out of the memory trend (default: a fifth, at most 2 min).",
    )
    parser.add_argument(
        "--max-growth-mb",
        type=float,
        default=None,
        help="Fail when a service's RSS grows more than this after warm-up.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "reports" / "soak",
        help="Directory for memory.csv, requests.jsonl and summary.json.",
    )
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(120.0, args.duration / 5)

    # loadtests/ is a directory of the repository, not an installed package.
    sys.path.insert(0, str(REPO_ROOT))
    from loadtests.request_log import failures, latency_figures, start_load
    from recsys.ops.topology import Topology

    models = model_store()
    if not all(
        (models / name / "latest").exists() for name in ("recsys-retrieval", "recsys-ranking")
    ):
        print(f"no stored recsys models in {models}: run `make train` first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    stack = Topology(models, args.out / "stack")
    try:
        print(f"starting Retrieval, Ranking and the gateway (models from {models}) ...")
        try:
            stack.start()
        except (RuntimeError, TimeoutError, StackNotReadyError) as exc:
            print(f"the stack did not start: {exc}", file=sys.stderr)
            return 2
        print(
            f"load: {args.users} users x {args.rate} req/s for {args.duration:.0f} s "
            f"on {stack.gateway.url}; RSS every {args.sample_every:.0f} s"
        )
        load = start_load(stack.gateway.url, args.out, args.users, args.rate, args.duration + 60)
        started = time.monotonic()
        totals: dict[str, list[tuple[float, float]]] = {name: [] for name in SERVICES}
        with (args.out / "memory.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["time_s", "service", "pid", "role", "rss_mb"])
            while (elapsed := time.monotonic() - started) < args.duration:
                for name in SERVICES:
                    rows = process_rss(stack.servers[name])
                    for pid, role, rss in rows:
                        writer.writerow([round(elapsed, 1), name, pid, role, round(rss, 1)])
                    totals[name].append((elapsed, sum(rss for _, _, rss in rows)))
                handle.flush()
                if load.process.poll() is not None:
                    print("Locust ended early:\n" + load.output()[-2000:], file=sys.stderr)
                    break
                time.sleep(min(args.sample_every, max(0.0, args.duration - elapsed)))
        load.stop()
        alive = {name: stack.servers[name].alive() for name in SERVICES}
    finally:
        stack.stop()

    records = load.records()
    failed = failures(records)
    memory = {
        name: memory_trend([(t, v) for t, v in samples if t >= warmup])
        for name, samples in totals.items()
    }
    summary = {
        "duration_s": args.duration,
        "warmup_s": warmup,
        "offered_rps": args.users * args.rate,
        "requests": len(records),
        "errors": len(failed),
        "error_examples": failed[:5],
        "degraded": sum(bool(r.get("degraded")) for r in records),
        **latency_figures([r for r in records if r["status"] == 200]),
        "services_alive_at_end": alive,
        "memory": memory,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))

    print(
        f"\nrequests {summary['requests']}  errors {summary['errors']}  "
        f"degraded {summary['degraded']}  p50 {summary['p50_ms']} ms  "
        f"p95 {summary['p95_ms']} ms  p99 {summary['p99_ms']} ms"
    )
    print(f"RSS per service after {warmup:.0f} s of warm-up (whole process tree, MB):")
    print(f"  {'service':<12} {'start':>8} {'end':>8} {'peak':>8} {'growth':>8} {'MB/h':>8}")
    for name, trend in memory.items():
        print(
            f"  {name:<12} "
            + " ".join(
                f"{trend[k]!s:>8}"
                for k in ("start_mb", "end_mb", "peak_mb", "growth_mb", "slope_mb_per_h")
            )
        )
    print(f"written: {args.out}/summary.json, memory.csv, requests.jsonl")
    grew = [
        name
        for name, trend in memory.items()
        if args.max_growth_mb is not None and (trend["growth_mb"] or 0) > args.max_growth_mb
    ]
    if failed or grew or not all(alive.values()):
        print(
            f"SOAK FAILED: {len(failed)} errors; grew past the limit: {grew or 'none'}; "
            f"alive: {alive}",
            file=sys.stderr,
        )
        return 1
    print("SOAK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
