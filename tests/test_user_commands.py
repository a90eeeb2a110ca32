"""The README's commands as a user runs them: a fresh working directory, relative paths, models
at the default size (the tree index, not the brute-force one tiny catalogs get).

`recsys serve` is what `make run` runs once the models exist; `scripts/rehearse-canary.sh` is
`make rehearse-canary`. Both failed on a fresh clone while every test with absolute temporary
homes and tiny catalogs passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest

from recsys.ops.stack import REPO_ROOT, free_port, http_status, start_service

pytestmark = [pytest.mark.integration, pytest.mark.serving]

REQUESTS = 200


def start_serve(workdir, port: int, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`recsys serve` in the user's directory, its output in `serve-<port>.log` there."""
    log = (workdir.path / f"serve-{port}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "recsys", "serve", "--port", str(port), *args],
        cwd=workdir.path,
        env=env or workdir.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def wait_for_line(
    process: subprocess.Popen, log: Path, text: str, timeout: float, seen: set[psutil.Process]
) -> str:
    """Wait for `text` in the log, noting every process `recsys serve` starts on the way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.update(descendants(process))
        output = log.read_text(errors="replace") if log.exists() else ""
        if text in output:
            return output
        if process.poll() is not None:
            pytest.fail(f"recsys serve exited ({process.returncode}):\n{output[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {text!r} after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def descendants(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_leftovers(processes: set[psutil.Process]) -> list[int]:
    """Kill what is still running of `processes`; returns their pids (empty when all ended)."""
    _, alive = psutil.wait_procs(list(processes), timeout=20)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return [proc.pid for proc in alive]


def stored_tags(workdir) -> dict[str, str]:
    done = workdir.recsys("models", "list", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    latest: dict[str, str] = {}
    for row in rows:  # newest first
        stage = "retrieval" if row["tag"].startswith("recsys-retrieval:") else "ranking"
        latest.setdefault(stage, row["tag"])
    return latest


def test_serve_from_a_fresh_directory_gives_real_recommendations(default_workdir):
    """`make run`: every answer comes from both models, none from a fallback; Ctrl+C stops all."""
    known = pd.read_parquet(
        default_workdir.path / "data" / "interactions.parquet", columns=["user_id"]
    )
    users = known["user_id"].drop_duplicates().sample(REQUESTS - 20, random_state=3).tolist()
    users += [f"new-user-{n}" for n in range(20)]  # cold users are not a degradation either
    port = free_port()
    began = time.monotonic()
    serve = start_serve(default_workdir, port, "--data", "data")
    tree: set[psutil.Process] = set()
    try:
        log = default_workdir.path / f"serve-{port}.log"
        wait_for_line(serve, log, "Ctrl+C stops", 300, tree)
        ready_s = time.monotonic() - began
        tree.update(descendants(serve))
        assert tree, "recsys serve started no server processes"
        tags = stored_tags(default_workdir)
        degraded = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for user in users:
                answer = http.post("/recommend", json={"user_id": user, "k": 10})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                if body["degraded"]:
                    degraded.append((user, body["degraded_reasons"]))
                    continue
                assert len(body["items"]) == 10
                assert body["model_versions"] == tags
        assert not degraded, f"{len(degraded)}/{len(users)} degraded, e.g. {degraded[:3]}"
        print(f"\nrecsys serve: ready in {ready_s:.1f} s, {len(users)} answers, none degraded")
    finally:
        serve.send_signal(signal.SIGINT)  # what Ctrl+C sends
        code = serve.wait(60)
        leftovers = kill_leftovers(tree)
    assert code == 0
    assert not leftovers, f"still running after Ctrl+C: {leftovers}"
    assert http_status(f"http://127.0.0.1:{port}/livez") is None


def test_serve_names_the_stage_that_never_gets_ready(default_workdir, tmp_path):
    """A damaged model: one line naming the stage and the reason, no traceback, no 3-minute wait."""
    home = tmp_path / "bentoml-home"
    shutil.copytree(default_workdir.bentoml_home, home, symlinks=True)
    config = next((home / "models" / "recsys-retrieval").glob("*/scann_mips/scann_config.pb"))
    config.write_bytes(config.read_bytes() + b"\0")
    env = {**default_workdir.env, "BENTOML_HOME": str(home)}
    port = free_port()
    serve = start_serve(default_workdir, port, "--no-train-if-missing", env=env)
    tree: set[psutil.Process] = set()
    try:
        deadline = time.monotonic() + 150
        while serve.poll() is None and time.monotonic() < deadline:
            tree.update(descendants(serve))
            time.sleep(0.5)
        code = serve.poll()
    finally:
        if serve.poll() is None:
            serve.kill()
        leftovers = kill_leftovers(tree)
    assert not leftovers, f"still running after recsys serve gave up: {leftovers}"
    output = (default_workdir.path / f"serve-{port}.log").read_text()
    assert code == 2, output[-3000:]
    assert "Traceback" not in output
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error) == 1, output[-3000:]
    assert "retrieval stage never became ready" in error[0]
    assert "ModelCorruptError" in error[0] and "scann_config.pb" in error[0]
    assert http_status(f"http://127.0.0.1:{port}/livez") is None


def test_gateway_reports_a_loading_stage_as_not_ready(default_workdir):
    """While Retrieval loads (503), the gateway's answer and metric say `not_ready`."""
    env = {"BENTOML_HOME": str(default_workdir.bentoml_home)}
    stage = start_service("Retrieval", free_port(), {**env, "RECSYS_FAULT_LOAD_DELAY_S": "600"})
    ranking = start_service("Ranking", free_port(), env)
    gateway = None
    try:
        ranking.wait_ready(120)
        depends = {"Retrieval": stage.url, "Ranking": ranking.url}
        gateway = start_service("Recommender", free_port(), env, depends)
        gateway.wait_ready(120)
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            body = http.post("/recommend", json={"user_id": "u1", "k": 5}).json()
            metrics = http.get("/metrics").text
        assert body["degraded"] is True and len(body["items"]) == 5
        assert body["degraded_reasons"] == [{"stage": "retrieval", "reason": "not_ready"}]
        counted = [
            line
            for line in metrics.splitlines()
            if line.startswith("recsys_fallback_total{")
            and 'stage="retrieval"' in line
            and 'reason="not_ready"' in line
        ]
        assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1
    finally:
        for server in (gateway, ranking, stage):
            if server is not None:
                server.stop()


@pytest.mark.prometheus
def test_canary_rehearsal_as_documented():
    """`make rehearse-canary`: healthy canary promoted, bad canary rolled back."""
    out = "reports/rehearsal-test"  # relative, as the default is: the script runs in the repo
    done = subprocess.run(
        ["bash", "scripts/rehearse-canary.sh", "--out", out],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((REPO_ROOT / out / "summary.json").read_text())
    assert summary["healthy"]["outcome"] == "promoted"
    assert summary["bad"]["outcome"] == "rolled_back"
    print(
        f"\nrehearsal: {summary['wall_time_s']:.0f} s, rollback after "
        f"{summary['bad']['time_to_rollback_s']:.0f} s"
    )
