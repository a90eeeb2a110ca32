"""The SLO gate under real load: Locust against the stack on 127.0.0.1 (tiny trained models).

- The CI gate: `python -m loadtests.run` starts the local stack, offers a fixed load and must pass
  slo.yaml's latency and error thresholds; a miss fails the test (no xfail, no skip in CI). The
  throughput floors the offered load cannot reach are reported as not checked, never as passed.
- A deliberately slowed stack (RECSYS_FAULT_LATENCY_MS) must fail with exit code 99, the breached
  endpoint and metric named in the verdict, and the run cut short by the sustained-breach abort.
- The chart's Job layout: the files of loadtests/ in one flat directory, run by a Python that can
  import neither the project nor PyYAML (the stock Locust image), SLO file from RECSYS_SLO_FILE.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from recsys.ops.stack import REPO_ROOT, serve_stack


def live(test):
    """Real load against real servers: slow, so marked `loadtest` (and `serving`)."""
    return pytest.mark.loadtest(pytest.mark.serving(test))


SLO_FILE = REPO_ROOT / "slo.yaml"
# Other processes using more than this share of the cores make a latency verdict meaningless.
BUSY_MACHINE = 0.15
SLOW_MS = "80"  # added by each process of the default form (gateway, retrieval): ~160 ms per call


def run(command: list[str], timeout: float, cwd: Path = REPO_ROOT, env: dict | None = None):
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return result, time.monotonic() - started


def explain(result) -> str:
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n"
        + (result.stderr[-4000:])
    )


@pytest.fixture(scope="module")
def slowed_stack(saved_tags, bentoml_home):
    env = {"BENTOML_HOME": str(bentoml_home), "RECSYS_FAULT_LATENCY_MS": SLOW_MS}
    with serve_stack(env=env) as server:
        yield server


@live
def test_ci_gate_passes_on_the_local_stack(saved_tags, tmp_path):
    """`make loadtest` as CI runs it: the runner's defaults, which are the CI profile.

    The runner starts the stack (the default form), offers 30 users x 4 req/s = 120 req/s for
    60 s (the first 10 s are warm-up), judges the rest against slo.yaml's latency and error
    thresholds and stops the stack.
    """
    command = [sys.executable, "-m", "loadtests.run", "--out", str(tmp_path)]
    result, _ = run(command, timeout=240)
    assert (tmp_path / "verdict.json").exists(), explain(result)
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    other = verdict["machine"]["other_share"]
    if result.returncode != 0 and other > BUSY_MACHINE and os.environ.get("CI") != "true":
        pytest.skip(
            f"gate failed while other processes used {other:.0%} of the cores (outside the stack "
            f"and the load generator): latency not attributable here; CI runs it strictly"
        )
    assert result.returncode == 0, explain(result)
    assert verdict["passed"] is True and verdict["outcome"] == "pass"
    assert "SLO gate: PASS (exit code 0)" in result.stdout
    assert (tmp_path / "report.html").exists()

    checks = {(c["endpoint"], c["metric"]): c for c in verdict["checks"]}
    for endpoint in ("recommend", "recommend_batch", "similar_items"):
        for metric in ("p95_ms", "p99_ms", "error_ratio"):
            assert checks[(endpoint, metric)]["status"] == "pass"
        # 120 req/s offered cannot show slo.yaml's floors: reported with the reason, not passed
        floor = checks[(endpoint, "rps")]
        assert floor["status"] == "not_checked" and "below the floor by design" in floor["note"]

    recommend = verdict["endpoints"]["recommend"]
    assert recommend["failures"] == 0 and recommend["requests"] > 4000
    assert recommend["rps"] > 90  # ~102 of the 120 req/s offered go to /recommend
    assert 45 <= verdict["run"]["measured_s"] <= 60
    assert verdict["run"]["planned_rps"]["recommend"] == pytest.approx(102.0)
    assert 0 < verdict["generator"]["cpu_share_of_machine"] < 0.25
    assert 0 < verdict["machine"]["stack_share"] < 1
    assert len(verdict["timeline"]) >= 4 and not verdict["aborted_early"]  # 10 s windows


@live
def test_slowed_stack_fails_with_99_and_names_the_breach(slowed_stack, tmp_path):
    """The gate can fail: +80 ms per process breaches every latency objective and aborts early."""
    command = [
        sys.executable, "-m", "loadtests.run", "--host", slowed_stack.url,
        "--users", "8", "--user-rate", "4", "--duration", "60s",
        "--warmup", "4", "--window", "3", "--abort-after", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    result, elapsed = run(command, timeout=120)
    assert result.returncode == 99, explain(result)
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["exit_code"] == 99 and verdict["passed"] is False
    assert verdict["outcome"] == "aborted_sustained_breach" and verdict["aborted_early"]
    breached = {(b["endpoint"], b["metric"]) for b in verdict["breaches"]}
    assert ("recommend", "p95_ms") in breached and ("recommend", "p99_ms") in breached
    p95 = next(b for b in verdict["breaches"] if b["endpoint"] == "recommend")
    assert p95["observed"] > 150 and p95["threshold"] == 25
    assert ("recommend", "p95_ms") in {
        (b["endpoint"], b["metric"]) for b in verdict["abort"]["breaches"]
    }
    assert "recommend        p95_ms" in result.stdout and "FAIL" in result.stdout
    assert elapsed < 45, "a sustained breach must stop the run well before its 60 s"


def flat_job_directory(tmp_path: Path) -> Path:
    """loadtests/ as `kubectl create configmap --from-file=loadtests/` mounts it: files only."""
    directory = tmp_path / "loadtests"
    directory.mkdir()
    for path in (REPO_ROOT / "loadtests").iterdir():
        if path.is_file():
            shutil.copy(path, directory / path.name)
    return directory


# Runs Locust the way the image's entry point does, with recsys and yaml made unimportable.
STOCK_IMAGE_LOCUST = (
    "import sys, runpy; sys.modules.update(recsys=None, yaml=None); "
    "sys.argv = ['locust', *sys.argv[1:]]; runpy.run_module('locust', run_name='__main__')"
)


def job_env(tmp_path: Path, slo_file: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    return {
        **env,
        "RECSYS_SLO_FILE": str(slo_file),
        "RECSYS_LOADTEST_VERDICT": str(tmp_path / "out" / "verdict.json"),
        "HOME": str(tmp_path),
    }


@live
def test_chart_job_layout_gates_without_the_project(slowed_stack, tmp_path):
    directory = flat_job_directory(tmp_path)
    command = [
        sys.executable, "-c", STOCK_IMAGE_LOCUST,
        "--locustfile", str(directory / "locustfile.py"), "--headless", "--only-summary",
        "--host", slowed_stack.url, "--users", "4", "--spawn-rate", "4", "--run-time", "40s",
        "--warmup", "3", "--window", "3", "--abort-after", "2",
    ]  # fmt: skip
    # The Job reads slo.yaml as the chart renders it into its ConfigMap: JSON.
    rendered = tmp_path / "slo.json"
    rendered.write_text(json.dumps(yaml.safe_load(SLO_FILE.read_text())))
    result, elapsed = run(command, timeout=90, cwd=directory, env=job_env(tmp_path, rendered))
    assert result.returncode == 99, explain(result)
    verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert ("recommend", "p95_ms") in {(b["endpoint"], b["metric"]) for b in verdict["breaches"]}
    assert verdict["run"]["slo_file"] == str(rendered)
    assert elapsed < 35


def test_chart_job_layout_rejects_an_invalid_slo_file_clearly(tmp_path):
    """Without the project the Job reads only the chart's JSON; anything else is refused with
    the file and the problem named, before any traffic."""
    directory = flat_job_directory(tmp_path)
    incomplete = tmp_path / "slo.json"
    incomplete.write_text(json.dumps({"endpoints": {"recommend": {"p95_ms": 90, "p99_ms": 60}}}))
    as_yaml = tmp_path / "slo.yaml"
    as_yaml.write_text(SLO_FILE.read_text())
    command = [
        sys.executable, "-c", STOCK_IMAGE_LOCUST, "--locustfile", str(directory / "locustfile.py"),
        "--headless", "--host", "http://127.0.0.1:9", "--run-time", "5s",
    ]  # fmt: skip
    for broken, problem in ((incomplete, "max_error_ratio"), (as_yaml, "not JSON")):
        result, _ = run(command, timeout=60, cwd=directory, env=job_env(tmp_path, broken))
        assert result.returncode == 3, explain(result)
        assert f"{broken}: " in result.stderr and problem in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out" / "verdict.json").exists()


def test_runner_rejects_an_invalid_slo_file_before_starting_anything(tmp_path):
    broken = tmp_path / "slo.yaml"
    broken.write_text("version: 1\nendpoints: {}\n")
    command = [sys.executable, "-m", "loadtests.run", "--slo-file", str(broken)]
    result, elapsed = run(command, timeout=60)
    assert result.returncode == 3, explain(result)
    assert str(broken) in result.stderr and "invalid SLO file" in result.stderr
    assert "starting the local stack" not in result.stdout
    assert elapsed < 30
