"""Where the time goes in the served forms: py-spy samples of every server process under load.

While wrk offers a fixed rate to one variant, `py-spy record --nonblocking` samples each Python
process of its tree (gateway, stage workers, the KServe server). The collapsed stacks are
reduced to: active samples per process, the share spent inside the recommender's own code
(`recsys/` and `bench/inprocess.py` frames: retrieval, ranking, top k) versus the serving
framework around it, the share charged to each framework group (every sample goes to the
innermost group on its stack: pydantic, inter-service client, HTTP server, routing, BentoML,
event loop, ...), and the functions with the most own time.
Optional: skipped when py-spy is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.loadgen import run_wrk
from recsys.ops.processes import process_tree

SAMPLE_RATE_HZ = 250
TOP_FUNCTIONS = 12
OWN_CODE_MARKERS = ("(recsys/", "/recsys/", "inprocess.py")
# Each sample is charged to the innermost group its stack passes through (walking from the
# running function outwards), so the shares add up to 100 % of the active samples.
GROUPS = {
    "recsys compute (retrieve, rank, top k)": OWN_CODE_MARKERS,
    "pydantic (validation, dump)": ("pydantic/", "pydantic_core"),
    "inter-service HTTP client": ("aiohttp/", "httpx/", "httpcore/"),
    "json / pickle": ("json/", "orjson", "pickle", "serde.py"),
    "metrics / tracing": ("prometheus_client/", "opentelemetry/"),
    "HTTP server (uvicorn)": ("uvicorn/", "httptools", "h11/"),
    "routing (starlette / fastapi)": ("starlette/", "fastapi/"),
    "kserve": ("kserve/",),
    "bentoml": ("bentoml/", "_bentoml_impl/", "_bentoml_sdk/", "services/"),
    "event loop (asyncio)": ("asyncio/", "selectors.py", "uvloop"),
}
OTHER_GROUP = "other"


def py_spy_path() -> str | None:
    return shutil.which("py-spy")


def _python_processes(root_pid: int) -> list[psutil.Process]:
    processes = process_tree(root_pid)
    return [p for p in processes if "python" in (p.name() + " ".join(p.cmdline()[:1])).lower()]


def _role(process: psutil.Process) -> str:
    args = process.cmdline()
    if "--service-name" in args:
        return args[args.index("--service-name") + 1]
    if any("_bentoml_impl.worker" in a for a in args):
        return "gateway worker"
    if "bench.kserve_peer" in args:
        return "kserve"
    return "supervisor"


def _innermost_group(frames: list[str]) -> str:
    """The group of the innermost frame (last in a collapsed stack) that belongs to one."""
    for frame in reversed(frames):
        for group, markers in GROUPS.items():
            if any(marker in frame for marker in markers):
                return group
    return OTHER_GROUP


def summarize_collapsed(text: str) -> dict:
    """Collapsed stacks (`frame;frame;... count`) -> totals, own-code share, top own time."""
    total = 0
    own_code = 0
    groups: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        if any(marker in frame for frame in frames for marker in OWN_CODE_MARKERS):
            own_code += count
        groups[_innermost_group(frames)] += count
        leaf[frames[-1]] += count
    return {
        "active_samples": total,
        "own_code_share": round(own_code / total, 3) if total else None,
        "framework_share": round(1 - own_code / total, 3) if total else None,
        "time_share": {
            group: round(count / total, 3) for group, count in groups.most_common() if count
        },
        "top_own_time": [
            {"function": name, "share": round(count / total, 3)}
            for name, count in leaf.most_common(TOP_FUNCTIONS)
        ],
    }


def profile_variant(variant, users_file: Path, rate: float, seconds: float, k: int) -> dict:
    """Sample every Python process of `variant` while wrk offers `rate` req/s for `seconds`."""
    spy = py_spy_path()
    if spy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    workdir = Path(tempfile.mkdtemp(prefix="bench-pyspy-"))
    samplers = []
    for process in (p for pid in variant.pids() for p in _python_processes(pid)):
        out = workdir / f"{process.pid}.txt"
        command = [
            spy,
            "record",
            "--pid",
            str(process.pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(SAMPLE_RATE_HZ),
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ]
        sampler = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        samplers.append((process, sampler, out))
    time.sleep(0.5)  # let the samplers attach before the load starts
    load = run_wrk(
        variant.name,
        variant.url,
        variant.body_format,
        users_file,
        seconds,
        8,
        rate=rate,
        k=k,
        server_pids=variant.pids(),
    )
    processes = {}
    for process, sampler, out in samplers:
        try:
            _, errors = sampler.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            sampler.kill()
            _, errors = sampler.communicate()
        name = f"{_role(process)} (pid {process.pid})"
        if out.exists():
            processes[name] = summarize_collapsed(out.read_text())
        else:
            processes[name] = {"error": errors.decode(errors="replace")[-500:]}
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "rate": rate,
        "seconds": seconds,
        "achieved_rps": load.achieved_rps,
        "p95_ms": load.p95_ms,
        "server_cpu_ms_per_request": load.server_cpu_ms_per_request,
        "processes": processes,
    }


def run_profiles(variants: dict, users_file: Path, rate: float, seconds: float, k: int) -> dict:
    return {
        name: profile_variant(variant, users_file, rate, seconds, k)
        for name, variant in variants.items()
    }
