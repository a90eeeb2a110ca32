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
    for heading in ("## Targets", "## 1.", "## 2.", "## 3.", "## 4.", "## 5."):
        assert heading in markdown


def test_quick_run_measures_every_section(quick_run: Path):
    results = json.loads((quick_run / "benchmark.json").read_text())
    forms = {"default", "single", "kserve"}
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
    size = results["ann"]["sizes"][0]
    assert size["exact_qps"] > 0
    assert size["scann"] and size["hnsw"]
    assert 0.0 <= size["scann_default"]["recall"] <= 1.0


def test_load_generator_cpu_is_reported(quick_run: Path):
    results = json.loads((quick_run / "benchmark.json").read_text())
    for form, saturation in results["saturation"].items():
        assert saturation["generator_cpu_cores"] >= 0, form
        assert saturation["server_cpu_cores"] > 0, form
