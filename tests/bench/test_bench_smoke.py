"""Smoke test of `make bench`: `python -m bench.run --quick` on tiny sizes, end to end.

It checks that every section runs and every output is written with the expected shape, not
any figure: on tiny models and a shared machine the numbers mean nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 240


def _require(present: bool, what: str) -> None:
    """Skip without an optional tool, but fail in CI where the project promises it."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required in CI for the benchmark smoke test")
    pytest.skip(f"{what} is not installed")


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    _require(shutil.which("wrk") is not None, "wrk (apt-get install wrk)")
    _require(_has_module("faiss"), "faiss (pip install faiss-cpu)")
    _require(_has_module("kserve"), "kserve")
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("BENTOML_HOME", None)  # the benchmark keeps its own store under --out
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out


def test_quick_run_writes_json_markdown_and_plots(quick_run: Path):
    for name in ("benchmark.json", "benchmark.md", "latency.png", "capacity.png", "recall_qps.png"):
        path = quick_run / name
        assert path.exists(), f"{name} was not written"
        assert path.stat().st_size > 0
    markdown = (quick_run / "benchmark.md").read_text()
    for heading in ("## Targets", "## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## Head of line"):
        assert heading in markdown
    assert "| form | processes | peer (processes) | req/s |" in markdown
    assert "| default | 2 | kserve-w2 (2) |" in markdown
    assert "| single | 1 | kserve (1) |" in markdown
    assert "Targets at equal CPU:" in markdown
    assert "per vCPU-hour" in markdown


def test_quick_run_measures_every_section(quick_run: Path):
    results = json.loads((quick_run / "benchmark.json").read_text())
    forms = {"default", "single", "kserve", "kserve-w2"}
    assert results["inprocess"]["stages_ms"]["total"]["p50"] > 0
    assert set(results["sequential"]) == forms
    for form in forms:
        sequential = results["sequential"][form]
        assert sequential["requests"] > 0
        assert sequential["error_count"] == 0
        assert sequential["latency_ms"]["p50"] <= sequential["latency_ms"]["p99"]
        assert results["capacity"]["variants"][form]["steps"]
    # Every served form answers exactly what the in-process pipeline computes.
    assert results["answer_agreement"] == {form: 1.0 for form in forms}
    assert set(results["peer"]) == {"default", "single"}
    # Equal CPU: each form against the peer with as many serving processes.
    assert results["peer"]["default"]["peer"] == "kserve-w2"
    assert results["peer"]["single"]["peer"] == "kserve"
    for comparison in results["peer"].values():
        assert comparison["equal_processes"]
    size = results["ann"]["sizes"][0]
    assert size["exact_qps"] > 0
    assert size["scann"] and size["hnsw"]
    assert 0.0 <= size["scann_default"]["recall"] <= 1.0


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def test_load_generator_cpu_is_reported(quick_run: Path):
    results = json.loads((quick_run / "benchmark.json").read_text())
    for form, saturation in results["saturation"].items():
        assert saturation["generator_cpu_cores"] >= 0, form
        assert saturation["server_cpu_cores"] > 0, form


def test_saturation_has_equal_cpu_figures_and_cost(quick_run: Path):
    results = json.loads((quick_run / "benchmark.json").read_text())
    rounds = results["config"]["saturation_rounds"]
    for form, saturation in results["saturation"].items():
        assert saturation["rounds"] == rounds == len(saturation["per_round"]), form
        assert saturation["error_count"] == 0, form
        for key in ("achieved_rps", "server_cpu_ms_per_request", "cpu_seconds_per_1000"):
            assert _is_number(saturation[key]) and saturation[key] > 0, (form, key)
        assert saturation["usd_per_1000"] > 0, form
        assert saturation["latency_ms"]["p50"] <= saturation["latency_ms"]["p99"], form
    for form, comparison in results["peer"].items():
        for key in (
            "saturation_throughput_ratio",
            "saturation_p99_ratio",
            "server_cpu_ms_per_request_ratio",
        ):
            assert _is_number(comparison[key]) and comparison[key] > 0, (form, key)
        assert comparison["processes"] == comparison["peer_processes"], form


def test_head_of_line_is_measured(quick_run: Path):
    hol = json.loads((quick_run / "benchmark.json").read_text())["head_of_line"]
    assert hol["form"] == "default"
    assert hol["alone_p95_ms"] > 0 and hol["with_batch_p95_ms"] > 0
    assert _is_number(hol["ratio"])
    for round_ in hol["rounds"]:
        assert round_["alone"]["error_count"] == round_["with_batch"]["error_count"] == 0
        batch = round_["with_batch"]["batch"]
        assert batch["requests"] > 0
        assert batch["failures"] == 0


def test_profiles_split_cpu_per_request_by_layer(quick_run: Path):
    from bench.profile import LAYERS, py_spy_path

    _require(py_spy_path() is not None, "py-spy (pip install py-spy)")
    results = json.loads((quick_run / "benchmark.json").read_text())
    assert set(results["profiles"]) == set(results["saturation"])
    for form, profile in results["profiles"].items():
        split = profile["layers_ms_per_request"]
        assert set(LAYERS) <= set(split), form
        assert all(_is_number(value) and value >= 0 for value in split.values()), form
        assert sum(split.values()) == pytest.approx(profile["server_cpu_ms_per_request"], abs=0.05)
    assert "### CPU ms per request by layer" in (quick_run / "benchmark.md").read_text()
