"""`python -m bench.run [--quick] [--items 100000] [--out bench/results]`: the whole benchmark.

Sections (one module each): 1 in process (`inprocess`), 2 + 3 + 5 over HTTP under wrk
(`http_load`, servers from `servers`, the KServe peers in `kserve_peer`, the equal-CPU
comparison and cost in `equal_cpu`), head of line (`head_of_line`), py-spy layers (`profile`),
4 retrieval indexes (`ann`). Writes benchmark.json, benchmark.md and PNG plots into --out.
Figures, not assertions: the exit code is 0 whenever the run completed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

from bench import config as bench_config
from bench.models import load_models, prepare_models, request_users

REPO_ROOT = Path(__file__).resolve().parent.parent
ANSWER_CHECK_USERS = 20
PACKAGES = ("bentoml", "kserve", "scann", "faiss-cpu", "xgboost-cpu", "implicit", "numpy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark the recommender: in process, over HTTP (default, split, single, "
        "KServe peer), capacity at the SLO, and ScaNN vs brute force vs FAISS HNSW.",
    )
    parser.add_argument("--quick", action="store_true", help="Tiny sizes (the smoke test).")
    parser.add_argument("--items", type=int, help="Catalog size (default 100000).")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results", help="Output directory."
    )
    parser.add_argument(
        "--variants",
        help="Served forms, comma-separated (default: default,default-nobatch,split,single,"
        "kserve,kserve-w2,kserve-w3; e.g. add single-w2). Each BentoML form is compared with the "
        "KServe peer with as many processes.",
    )
    parser.add_argument(
        "--vcpu-hour-usd",
        type=float,
        help="Price of one vCPU-hour for the cost per 1,000 recommendations (default: "
        f"{bench_config.BenchConfig.vcpu_hour_usd}, {bench_config.BenchConfig.vcpu_price_source}).",
    )
    parser.add_argument("--skip-http", action="store_true", help="Skip sections 2, 3 and 5.")
    parser.add_argument("--skip-ann", action="store_true", help="Skip section 4.")
    return parser


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    try:
        revision = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = "unknown"
    try:
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5)
        wrk_version = (wrk.stdout or wrk.stderr).splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        wrk_version = None
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_revision": revision or "unknown",
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
        "packages": {name: _version(name) for name in PACKAGES},
        "wrk": wrk_version,
    }


def load_slo() -> dict:
    from recsys.ops.slo import load_slo as read_slo

    recommend = read_slo().endpoints["recommend"]
    return {"p95_ms": recommend.p95_ms, "min_rps": recommend.min_rps}


def run(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = bench_config.quick() if args.quick else bench_config.BenchConfig()
    if args.items:
        sizes = tuple(sorted({args.items, *config.ann_sizes[1:]}))
        config = replace(config, items=args.items, ann_sizes=sizes)
    if args.variants:
        config = replace(config, variants=tuple(v.strip() for v in args.variants.split(",")))
    if args.vcpu_hour_usd is not None:
        config = replace(
            config, vcpu_hour_usd=args.vcpu_hour_usd, vcpu_price_source="--vcpu-hour-usd"
        )
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "bench.log").open("w")
    started = time.perf_counter()

    def log(message: str) -> None:
        line = f"[{time.perf_counter() - started:7.1f}s] {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    results: dict = {"machine": machine_info(), "config": config.to_dict(), "slo": load_slo()}
    log(f"load average before: {results['machine']['loadavg_before']}")
    models = prepare_models(config, out, log)
    results["models"] = {
        "retrieval_tag": models.retrieval_tag,
        "ranking_tag": models.ranking_tag,
        "reused": models.reused,
        "train_seconds": models.train_seconds,
        "index_stats": models.index_stats,
    }
    retrieval, ranker = load_models(models)
    users, users_file = request_users(retrieval, config.request_users, config.seed, out)

    from bench.inprocess import recommend_in_process, run_inprocess

    log("section 1: in process")
    results["inprocess"] = run_inprocess(
        retrieval, ranker, users, config.inprocess_requests, config.k
    )
    total = results["inprocess"]["stages_ms"]["total"]
    log(f"  total p50 {total['p50']:.2f} ms p95 {total['p95']:.2f} ms")

    if not args.skip_http:
        from bench import equal_cpu, http_load
        from bench.loadgen import SharedMachine
        from bench.servers import start_variants, stop_variants

        machine = SharedMachine(config.patience_seconds, http_load.CONTAMINATED_OTHER_CORES)
        log(f"starting {', '.join(config.variants)}")
        variants = start_variants(list(config.variants), models, out / "logs", log)
        try:
            reference = {
                user: [
                    item["item_id"]
                    for item in recommend_in_process(retrieval, ranker, user, config.k, 200, 3)
                ]
                for user in users[:ANSWER_CHECK_USERS]
            }
            results["answer_agreement"] = http_load.check_answers(variants, reference, config.k)
            results["answer_check_users"] = len(reference)
            log(f"  answers identical to in-process: {results['answer_agreement']}")
            http_load.warm_up(variants, users_file, config)
            log("section 2: sequential over HTTP")
            results["sequential"] = http_load.run_sequential(
                variants, users_file, config, total["p50"], machine
            )
            for name, seq in results["sequential"].items():
                lat = seq["latency_ms"]
                log(
                    f"  {name:10s} p50 {lat['p50']:.2f} p95 {lat['p95']:.2f} p99 {lat['p99']:.2f}"
                    f" ms, overhead x{seq['overhead_ratio_p50']}"
                )
            log("section 3: capacity steps")
            results["capacity"] = http_load.run_capacity(
                variants, users_file, config, results["slo"]["p95_ms"], machine, log
            )
            log(
                f"section 5: saturation ({config.saturation_rounds} alternating rounds) and the "
                "equal-process KServe peers"
            )
            results["saturation"] = http_load.run_saturation(variants, users_file, config, machine)
            equal_cpu.add_costs(results["saturation"], config.vcpu_hour_usd)
            for name, sat in results["saturation"].items():
                log(
                    f"  {name:12s} {sat['achieved_rps']:.0f} req/s p99 "
                    f"{sat['latency_ms']['p99']:.1f} ms, {sat['server_cpu_ms_per_request']:.2f} "
                    f"CPU ms/req, server {sat['server_cpu_cores']:.2f} cores, wrk "
                    f"{sat['generator_cpu_cores']:.3f} cores"
                )
            results["peer"] = equal_cpu.compare_with_peer(
                results["sequential"], results["capacity"], results["saturation"]
            )
            if config.hol_form in variants and config.hol_rounds > 0:
                from bench.head_of_line import run_head_of_line

                log(f"head of line: {config.hol_form} /recommend at {config.hol_rate:g} req/s")
                hol = run_head_of_line(variants[config.hol_form], users_file, config)
                results["head_of_line"] = hol
                log(
                    f"  p95 alone {hol['alone_p95_ms']:.1f} ms, with batch "
                    f"{hol['with_batch_p95_ms']:.1f} ms ({hol['ratio']}x)"
                )
            if config.profile_seconds > 0:
                from bench.profile import run_profiles

                log(f"profiles: py-spy at {config.profile_rate:g} req/s")
                results["profiles"] = run_profiles(
                    variants, users_file, config.profile_rate, config.profile_seconds, config.k
                )
        finally:
            stop_variants(variants)
            results["shared_machine"] = machine.summary()
            log(f"shared machine: {results['shared_machine']}")

    if not args.skip_ann:
        from bench.ann import run_ann

        log("section 4: ScaNN vs brute force vs FAISS HNSW")
        results["ann"] = run_ann(retrieval.item_factors, retrieval.user_factors, config, log)

    results["machine"]["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    results["machine"]["run_seconds"] = round(time.perf_counter() - started, 1)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2))
    from bench.report import write_report

    for path in write_report(results, out):
        log(f"wrote {path}")
    log(f"done in {results['machine']['run_seconds']:.0f}s")
    log_file.close()
    return results


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`: the servers are stopped


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
