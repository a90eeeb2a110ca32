"""Markdown of the serving comparisons: equal CPU vs the KServe peers, head of line, py-spy.

Part of `bench.report` (which writes benchmark.md); the figures come from `bench.equal_cpu`,
`bench.head_of_line` and `bench.profile`.
"""

from __future__ import annotations

from bench import equal_cpu
from bench.markdown import fmt as _fmt
from bench.markdown import table as _table
from bench.profile import LAYERS, OTHER_GROUP


def usd_text(value: float) -> str:
    """Dollars to two significant figures, written out (0.000035, not 3.5e-05)."""
    return format(float(f"{value:.2g}"), "f").rstrip("0").rstrip(".") if value else "0"


def equal_cpu_table(results: dict, order: list[str]) -> list[str]:
    """One row per variant at saturation; ratio columns against its equal-process peer."""
    saturation, peers = results["saturation"], results.get("peer", {})
    rows = []
    for name in order:
        s = saturation[name]
        c = peers.get(name)
        compared = (
            f"{c['peer']} ({c['peer_processes']}){'' if c['equal_processes'] else ' unequal'}"
            if c
            else "-"
        )
        rows.append(
            [
                name,
                s["processes"],
                compared,
                s["achieved_rps"],
                s["latency_ms"]["p50"],
                s["latency_ms"]["p99"],
                s["server_cpu_ms_per_request"],
                s["cpu_seconds_per_1000"],
                usd_text(s["usd_per_1000"]),
                c and c["saturation_throughput_ratio"],
                c and c["saturation_p99_ratio"],
                c and c["server_cpu_ms_per_request_ratio"],
            ]
        )
    header = ["form", "processes", "peer (processes)", "req/s", "p50 ms", "p99 ms"]
    header += ["CPU ms/req", "CPU-s / 1,000", "$ / 1,000", "x peer req/s", "x peer p99"]
    return _table([*header, "x peer CPU/req"], rows)


def targets_block(results: dict) -> list[str]:
    rows = [
        [t["target"], t["measured"], "PASS" if t["met"] else "MISS"]
        for t in equal_cpu.targets(results)
    ]
    return ["Targets at equal CPU:", "", *_table(["target", "measured", "verdict"], rows)]


def section_peer(results: dict, order: list[str]) -> list[str]:
    config = results["config"]
    first = results["saturation"][order[0]]
    lines = [
        "## 5. Against the KServe peer at equal CPU (same models, same code, same load)",
        "",
        "Each BentoML form is compared with the KServe peer running as many serving processes "
        "(KServe workers), so both may use as many cores. Saturation: closed loop, "
        f"{first['connections']} connections, {first['rounds']} rounds of "
        f"{first['seconds_per_round']:g} s in which the forms take turns (order reversed every "
        "other round); medians over rounds, CPU per request pooled over them (server process "
        "CPU time / requests served). Cost of 1,000 recommendations: CPU-seconds per 1,000 "
        "requests (the same number as CPU ms per request), priced at "
        f"${config['vcpu_hour_usd']:g} per vCPU-hour "
        f"({config['vcpu_price_source']}). Ratios are ours / the peer's.",
        "",
        *equal_cpu_table(results, order),
        *targets_block(results),
    ]
    rows = [
        [
            f"{name} vs {c['peer']}",
            c["capacity_ratio"],
            c["saturation_p95_ratio"],
            c["sequential_p50_ratio"],
            c["sequential_p95_ratio"],
        ]
        for name, c in results["peer"].items()
    ]
    lines += ["Other ratios against the same peer:", ""]
    lines += _table(["ours", "capacity", "saturation p95", "sequential p50", "seq. p95"], rows)
    rows = [
        [f"{name} vs {c['peer']}", p["rate"], p["ours_ms"], p["peer_ms"], p["ratio"]]
        for name, c in results["peer"].items()
        for p in c["p95_ratio_at_common_rates"]
    ]
    lines += ["p95 at the offered rates both passed:", ""]
    return lines + _table(["ours", "offered/s", "ours p95 ms", "KServe p95 ms", "ratio"], rows)


def section_head_of_line(results: dict) -> list[str]:
    hol = results["head_of_line"]
    lines = [
        "## Head of line: single requests beside batch requests",
        "",
        f"`/recommend` on `{hol['form']}` at {hol['rate']:g} req/s (wrk, Poisson arrivals, "
        f"{hol['connections']} connections), {hol['seconds']:g} s alone and {hol['seconds']:g} s "
        f"with {hol['batch_rate']:g} req/s of `/recommend_batch` ({hol['batch_users']} users "
        f"each, Poisson, open loop) beside it; {len(hol['rounds'])} round(s), alone and with "
        "batch alternating. p95 (median over rounds): "
        f"alone {hol['alone_p95_ms']:g} ms, with batch {hol['with_batch_p95_ms']:g} ms: "
        f"{_fmt(hol['ratio'])}x (target <= {equal_cpu.HEAD_OF_LINE_RATIO:g}x).",
        "",
    ]
    rows = []
    for index, round_ in enumerate(hol["rounds"], 1):
        for case in ("alone", "with_batch"):
            r = round_[case]
            batch = r.get("batch", {})
            rows.append(
                [
                    index,
                    case.replace("_", " "),
                    r["achieved_rps"],
                    r["p50_ms"],
                    r["p95_ms"],
                    r["p99_ms"],
                    r["error_count"],
                    batch.get("requests", "-"),
                    batch.get("failures", "-"),
                    batch.get("latency_ms", {}).get("p95", "-"),
                    r["other_cpu_cores"],
                ]
            )
    header = ["round", "case", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "batches"]
    return lines + _table([*header, "batch failures", "batch p95 ms", "other cores"], rows)


def section_layers(results: dict, order: list[str]) -> list[str]:
    """CPU ms per request by layer, one row per form (the same columns in every run)."""
    profiles = results["profiles"]
    layers = [*LAYERS, OTHER_GROUP]
    rows, skipped = [], []
    for name in order:
        profile = profiles.get(name, {})
        if "layers_ms_per_request" not in profile:
            skipped.append(f"{name}: {profile.get('skipped', 'no samples')}")
            continue
        split = profile["layers_ms_per_request"]
        rows.append(
            [name, profile["server_cpu_ms_per_request"], *(split.get(layer) for layer in layers)]
        )
    lines = [
        "### CPU ms per request by layer",
        "",
        "py-spy samples of all of a form's processes, each charged to the innermost layer on its "
        "stack, times the server CPU per request measured meanwhile. Library code called from a "
        "layer (NumPy, ScaNN, XGBoost from our model code) counts to that layer.",
        "",
    ]
    lines += _table(["form", "CPU ms/req", *layers], rows)
    return lines + ([f"Not profiled: {'; '.join(skipped)}.", ""] if skipped else [])
