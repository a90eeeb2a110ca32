"""Our forms against the KServe peer at equal CPU: ratios, cost per 1,000 and the targets.

Each BentoML form is held against the KServe peer that runs as many serving processes
(`VariantSpec.processes`: default 2 -> `kserve-w2`, single 1 -> `kserve`, split 3 ->
`kserve-w3`), so both sides may use the same number of cores. When no such peer was run, the
closest one is used and the comparison says so (`equal_processes: false`).

Cost of 1,000 recommendations = the server processes' CPU seconds per 1,000 requests at
saturation (numerically the CPU milliseconds per request), priced at a stated $ per vCPU-hour.
"""

from __future__ import annotations

from bench.servers import VariantSpec

# Targets of the serving-architecture issue per variant; other BentoML forms get DEFAULT_TARGETS.
# Ratios are ours / the equal-process peer's, at saturation.
FORM_TARGETS = {
    "default": {"throughput_ratio": 1.0, "p99_ratio": 1.2, "cpu_ratio": 1.0},
    "single": {"throughput_ratio": 1.2, "p99_ratio": 1.5, "cpu_ratio": 1.0},
}
DEFAULT_TARGETS = {"throughput_ratio": 1.0, "cpu_ratio": 1.0}
HEAD_OF_LINE_RATIO = 1.2  # /recommend p95 with batch traffic beside it / alone, at most


def peer_for(name: str, names: list[str]) -> str | None:
    """The KServe variant with as many serving processes as `name` (else the closest).

    Ties in distance go to the peer with fewer processes, then to the shorter name.
    """
    processes = VariantSpec.parse(name).processes
    peers = {n: VariantSpec.parse(n).processes for n in names if VariantSpec.parse(n).is_peer}
    if not peers:
        return None
    return min(peers, key=lambda p: (abs(peers[p] - processes), peers[p], len(p), p))


def cost_per_thousand(cpu_ms_per_request: float, vcpu_hour_usd: float) -> dict:
    """CPU seconds and dollars per 1,000 recommendations from CPU ms per request."""
    cpu_seconds = cpu_ms_per_request  # ms/request x 1,000 requests / 1,000 ms/s
    return {
        "cpu_seconds_per_1000": round(cpu_seconds, 3),
        "usd_per_1000": cpu_seconds / 3600 * vcpu_hour_usd,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def compare_with_peer(sequential: dict, capacity: dict, saturation: dict) -> dict:
    """Each BentoML form against its equal-process peer (ours / peer) and its cost per 1,000."""
    names = list(saturation)
    comparison = {}
    for name in names:
        peer = peer_for(name, names)
        if VariantSpec.parse(name).is_peer or peer is None:
            continue
        ours, theirs = saturation[name], saturation[peer]
        peer_steps = {
            s["offered_rps"]: s
            for s in capacity["variants"][peer]["steps"]
            if s["passed"] and not s["repeated"]
        }
        common = [
            {
                "rate": s["offered_rps"],
                "ours_ms": s["latency_ms"]["p95"],
                "peer_ms": peer_steps[s["offered_rps"]]["latency_ms"]["p95"],
            }
            for s in capacity["variants"][name]["steps"]
            if s["passed"] and not s["repeated"] and s["offered_rps"] in peer_steps
        ]
        comparison[name] = {
            "peer": peer,
            "processes": VariantSpec.parse(name).processes,
            "peer_processes": VariantSpec.parse(peer).processes,
            "equal_processes": VariantSpec.parse(name).processes
            == VariantSpec.parse(peer).processes,
            "capacity_ratio": _ratio(
                capacity["variants"][name]["capacity_rps"],
                capacity["variants"][peer]["capacity_rps"],
            ),
            "saturation_throughput_ratio": _ratio(ours["achieved_rps"], theirs["achieved_rps"]),
            "saturation_p95_ratio": _ratio(ours["latency_ms"]["p95"], theirs["latency_ms"]["p95"]),
            "saturation_p99_ratio": _ratio(ours["latency_ms"]["p99"], theirs["latency_ms"]["p99"]),
            "server_cpu_ms_per_request_ratio": _ratio(
                ours["server_cpu_ms_per_request"], theirs["server_cpu_ms_per_request"]
            ),
            "sequential_p50_ratio": _ratio(
                sequential[name]["latency_ms"]["p50"], sequential[peer]["latency_ms"]["p50"]
            ),
            "sequential_p95_ratio": _ratio(
                sequential[name]["latency_ms"]["p95"], sequential[peer]["latency_ms"]["p95"]
            ),
            "p95_ratio_at_common_rates": [
                {**point, "ratio": _ratio(point["ours_ms"], point["peer_ms"])} for point in common
            ],
        }
    return comparison


def add_costs(saturation: dict, vcpu_hour_usd: float) -> None:
    """Add CPU seconds and dollars per 1,000 recommendations to each saturation summary."""
    for summary in saturation.values():
        summary.update(cost_per_thousand(summary["server_cpu_ms_per_request"], vcpu_hour_usd))


def _row(target: str, measured: float | None, limit: float, at_least: bool, text: str) -> dict:
    met = measured is not None and (measured >= limit if at_least else measured <= limit)
    return {"target": target, "value": measured, "limit": limit, "measured": text, "met": met}


def targets(results: dict) -> list[dict]:
    """The equal-CPU and head-of-line targets, each with its measured figure and verdict."""
    rows = []
    saturation = results.get("saturation", {})
    for name, c in results.get("peer", {}).items():
        wanted = FORM_TARGETS.get(name, DEFAULT_TARGETS)
        versus = f"{c['peer']} ({c['peer_processes']} vs {c['processes']} processes)"
        ours, theirs = saturation[name], saturation[c["peer"]]
        throughput = c["saturation_throughput_ratio"]
        rows.append(
            _row(
                f"{name}: saturation req/s >= {wanted['throughput_ratio']:g}x {versus}",
                throughput,
                wanted["throughput_ratio"],
                True,
                f"{throughput}x ({ours['achieved_rps']:.0f} vs {theirs['achieved_rps']:.0f} req/s)",
            )
        )
        if "p99_ratio" in wanted:
            tail = c["saturation_p99_ratio"]
            rows.append(
                _row(
                    f"{name}: saturation p99 <= {wanted['p99_ratio']:g}x {c['peer']}'s",
                    tail,
                    wanted["p99_ratio"],
                    False,
                    f"{tail}x ({ours['latency_ms']['p99']:.1f} vs "
                    f"{theirs['latency_ms']['p99']:.1f} ms)",
                )
            )
        cpu = c["server_cpu_ms_per_request_ratio"]
        rows.append(
            _row(
                f"{name}: server CPU per request <= {wanted['cpu_ratio']:g}x {c['peer']}'s",
                cpu,
                wanted["cpu_ratio"],
                False,
                f"{cpu}x ({ours['server_cpu_ms_per_request']:.2f} vs "
                f"{theirs['server_cpu_ms_per_request']:.2f} ms)",
            )
        )
    hol = results.get("head_of_line")
    if hol and "ratio" in hol:
        rows.append(
            _row(
                f"{hol['form']}: /recommend p95 at {hol['rate']:g} req/s with "
                f"{hol['batch_rate']:g} req/s of /recommend_batch <= {HEAD_OF_LINE_RATIO:g}x alone",
                hol["ratio"],
                HEAD_OF_LINE_RATIO,
                False,
                f"{hol['ratio']}x ({hol['with_batch_p95_ms']:.1f} vs {hol['alone_p95_ms']:.1f} ms)",
            )
        )
    return rows
