"""Sizes and durations of one benchmark run: the full run and the `--quick` smoke run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class BenchConfig:
    """Everything that decides how big and how long a benchmark run is.

    The full run keeps the whole of `python -m bench.run` within about 20 minutes on the
    2-core machine (models cached after the first run); `quick()` shrinks every size and
    duration so the smoke test finishes in about two minutes, training included.
    """

    items: int = 100_000
    users: int = 40_000
    events: int = 2_000_000
    seed: int = 42
    # Training: the project's defaults, with the ranker's training users capped for run time.
    ranker_training_users: int = 4000
    max_eval_users: int = 2000
    quick: bool = False
    # Requests: the same seeded user sample feeds the in-process and the HTTP measurements.
    request_users: int = 5000
    k: int = 10
    inprocess_requests: int = 2000
    # Section 2: one connection, closed loop.
    sequential_seconds: float = 10.0
    # Section 3 and 5: offered-rate steps (req/s), each for `step_seconds`.
    rate_steps: tuple[int, ...] = (25, 50, 100, 150, 200, 250, 300, 400, 500, 600)
    step_seconds: float = 8.0
    refine_steps: int = 1
    warmup_seconds: float = 3.0
    connections: int = 32
    # Seconds the run may spend waiting for other work to calm down and repeating disturbed
    # measurements (the machine is shared); bounds the run's length on a busy machine.
    patience_seconds: float = 240.0
    # Section 5, saturation (closed loop, 8 connections): the variants take turns in each of
    # `saturation_rounds` rounds of `saturation_seconds`; medians over the rounds are reported.
    saturation_seconds: float = 6.0
    saturation_rounds: int = 3
    # Cost of a recommendation: dollars per vCPU-hour (override: --vcpu-hour-usd). Default: AWS
    # EC2 c6i.large (2 vCPU, compute optimised), on-demand Linux list price in us-east-1, $0.085
    # per hour as recalled, not checked against AWS's page (none is reachable here): about $0.04
    # per vCPU-hour. Override with --vcpu-hour-usd.
    vcpu_hour_usd: float = 0.0425
    vcpu_price_source: str = (
        "AWS EC2 c6i.large (2 vCPU, compute optimised) on-demand Linux list price, us-east-1: "
        "$0.085 per hour as recalled, not checked against AWS's page; not a quote: check the "
        "current price (--vcpu-hour-usd)"
    )
    # Head of line: /recommend at `hol_rate` req/s (Poisson) on `hol_form`, alone and with
    # `hol_batch_rate` req/s of /recommend_batch (`hol_batch_users` users each) beside it,
    # `hol_rounds` alternating rounds of `hol_seconds` each.
    hol_form: str = "default"
    hol_rate: float = 100.0
    hol_batch_rate: float = 5.0
    hol_batch_users: int = 10
    hol_seconds: float = 10.0
    hol_rounds: int = 2
    # Profiles (py-spy) of every server process at a fixed offered rate; 0 s skips them.
    profile_rate: float = 50.0
    profile_seconds: float = 8.0
    # Section 4: ANN trade-off curves.
    ann_sizes: tuple[int, ...] = (100_000, 1_000_000)
    ann_queries: int = 1000
    # HNSW: M=16 / efConstruction=40 keeps the 1M build near half a minute on 2 cores
    # (M=32 / efConstruction=80 took 4-5 minutes there).
    hnsw_m: int = 16
    hnsw_ef_construction: int = 40
    hnsw_ef_search: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    # ScaNN: one build per IndexConfig variant (overrides of the project's defaults), each
    # searched at every share of leaves x reorder depth.
    scann_builds: tuple[dict, ...] = ({}, {"leaves_per_sqrt_n": 0.5})
    scann_shares: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
    scann_reorder: tuple[int, ...] = (100, 250, 500, 1000, 2000)
    # Served variants (see bench/servers.py): the BentoML forms (the default one also with the
    # ranking micro-batching off) and a KServe peer with as many processes as each form
    # (single: 1, default: 2, split: 3), so every comparison is at equal CPU.
    variants: tuple[str, ...] = (
        "default",
        "default-nobatch",
        "split",
        "single",
        "kserve",
        "kserve-w2",
        "kserve-w3",
    )

    def to_dict(self) -> dict:
        return asdict(self)


def quick() -> BenchConfig:
    """Tiny sizes and short durations for the smoke test (brute-force ScaNN below 20k items)."""
    return replace(
        BenchConfig(),
        items=3000,
        users=800,
        events=40_000,
        ranker_training_users=400,
        max_eval_users=300,
        quick=True,
        request_users=300,
        inprocess_requests=100,
        sequential_seconds=2.0,
        rate_steps=(20, 40),
        step_seconds=2.0,
        refine_steps=0,
        warmup_seconds=1.0,
        connections=8,
        patience_seconds=0.0,
        saturation_seconds=1.0,
        saturation_rounds=2,
        hol_seconds=2.0,
        hol_rounds=1,
        profile_seconds=1.0,
        variants=("default", "single", "kserve", "kserve-w2"),
        ann_sizes=(3000,),
        ann_queries=100,
        hnsw_ef_search=(16, 64),
        scann_shares=(0.05, 0.2),
        scann_reorder=(50, 100),
    )
