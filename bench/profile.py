"""Where the time goes in the served forms: py-spy samples of every server process under load.

While wrk offers a fixed rate to one variant, `py-spy record --nonblocking` samples each Python
process of its tree (gateway, stage workers, the KServe server and workers). The collapsed
stacks are reduced to: active samples per process, the share charged to each layer (every
sample goes to the innermost layer on its stack: our model code, our serving code, BentoML,
KServe, starlette + uvicorn, pydantic, ...; "own code" = our two layers), and the functions
with the most own time. Per form, the layers' shares of all its processes' samples times the
server CPU per request measured meanwhile give CPU ms per request by layer (`LAYERS`: the same
columns in every run, so runs before and after a change compare).
Optional: skipped when py-spy is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.loadgen import run_wrk
from recsys.ops.processes import process_tree

SAMPLE_RATE_HZ = 250
TOP_FUNCTIONS = 12
# Each sample is charged to the innermost layer its stack passes through (walking from the
# running function outwards; the first matching layer in this order decides for one frame), so
# the shares add up to 100 % of the active samples. Library code called from a layer (NumPy,
# ScaNN, XGBoost from our model code) counts to that layer.
LAYERS = {
    "our model code": ("recsys/model/", "bench/inprocess.py"),
    "our serving code": ("recsys/", "services/", "bench/kserve_model.py"),
    "BentoML": ("bentoml/", "_bentoml_impl/", "_bentoml_sdk/"),
    "KServe": ("kserve/",),
    "starlette + uvicorn": ("starlette/", "fastapi/", "uvicorn/", "httptools", "h11/"),
    "pydantic": ("pydantic/", "pydantic_core"),
    "prometheus": ("prometheus_client/",),
    "opentelemetry": ("opentelemetry/",),
    "HTTP client (inter-service)": ("aiohttp/", "httpx/", "httpcore/"),
    "asyncio event loop": ("asyncio/", "selectors.py", "uvloop"),
}
OTHER_GROUP = "other"
OWN_LAYERS = ("our model code", "our serving code")


def _matches(frame: str, marker: str) -> bool:
    """`marker` starts a path component of the frame's file (py-spy: `function (path:line)`).

    Anchored, so that `bench/` does not match every file under a checkout named `wt-bench/`.
    """
    return f"/{marker}" in frame or f"({marker}" in frame


def py_spy_path() -> str | None:
    """py-spy on PATH, else beside this interpreter (a virtualenv's bin, not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


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
    command = " ".join(args)
    if "spawn_main" in command:
        return "kserve worker"
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    return "supervisor"


def _innermost_group(frames: list[str]) -> str:
    """The group of the innermost frame (last in a collapsed stack) that belongs to one."""
    for frame in reversed(frames):
        for group, markers in LAYERS.items():
            if any(_matches(frame, marker) for marker in markers):
                return group
    return OTHER_GROUP


def summarize_collapsed(text: str) -> dict:
    """Collapsed stacks (`frame;frame;... count`) -> totals, own-code share, top own time."""
    total = 0
    groups: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        groups[_innermost_group(frames)] += count
        leaf[frames[-1]] += count
    own_code = sum(groups[layer] for layer in OWN_LAYERS)
    return {
        "active_samples": total,
        "own_code_share": round(own_code / total, 3) if total else None,
        "framework_share": round(1 - own_code / total, 3) if total else None,
        "layer_samples": dict(groups.most_common()),
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
        "layers_ms_per_request": layers_ms_per_request(
            processes.values(), load.server_cpu_ms_per_request
        ),
        "processes": processes,
    }


def layers_ms_per_request(summaries, cpu_ms_per_request: float) -> dict[str, float]:
    """CPU ms per request of each layer: its share of every process's samples x CPU/request.

    Every process is sampled at the same rate and only while running, so the samples of all
    processes together are proportional to their CPU time. Every layer (and `other`) is listed.
    """
    samples: Counter[str] = Counter()
    for summary in summaries:
        samples.update(summary.get("layer_samples", {}))
    total = sum(samples.values())
    return {
        layer: round(samples[layer] / total * cpu_ms_per_request, 3) if total else 0.0
        for layer in (*LAYERS, OTHER_GROUP)
    }


def run_profiles(variants: dict, users_file: Path, rate: float, seconds: float, k: int) -> dict:
    return {
        name: profile_variant(variant, users_file, rate, seconds, k)
        for name, variant in variants.items()
    }
