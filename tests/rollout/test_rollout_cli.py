"""`recsys rollout` as an SRE runs it: exit codes, one-line errors, dry runs, JSON output.

Commands run as real processes (`python -m recsys rollout ...`). Prometheus is a stub HTTP
server with canned query answers here (the real server is in test_rollout_rehearsal.py); helm
is a fake script where a release must be missing.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recsys.ops.stack import free_port

BASE_VALUES = {"image": {"tag": "1.0.0"}, "ranking": {"modelTag": "recsys-ranking:bbb"}}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "240", "NO_COLOR": "1"}
    env.pop("RECSYS_PROMETHEUS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "recsys", "rollout", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
        check=False,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], text: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ")
    assert text in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr


@pytest.fixture
def values_file(tmp_path: Path):
    def write(extra: dict | None = None) -> Path:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump({**BASE_VALUES, **(extra or {})}))
        return path

    return write


def test_dry_run_prints_the_exact_command(values_file):
    separate = {"ranking": {**BASE_VALUES["ranking"], "separate": True}}
    done = run_cli(
        "start",
        "--component",
        "ranking",
        "--image-tag",
        "1.1.0",
        "--model-tag",
        "recsys-ranking:ccc",
        "--weight",
        "25",
        "--dry-run",
        "--values-from",
        str(values_file(separate)),
        "--helm",
        "helm",
        "--chart",
        "helm/recsys",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "# start ranking canary 1.1.0 model recsys-ranking:ccc at 25%"
    assert lines[1] == (
        "dry-run: helm upgrade recsys helm/recsys --namespace recsys --reuse-values "
        "--set ranking.canary.enabled=true --set-string ranking.canary.image.repository= "
        "--set-string ranking.canary.image.tag=1.1.0 "
        "--set-string ranking.canary.modelTag=recsys-ranking:ccc --set ranking.canary.weight=25 "
        "--set ranking.canary.faults.latencyMs=0 --set ranking.canary.faults.errorRate=0 "
        "--wait --timeout 10m --description 'recsys rollout: start ranking canary 1.1.0 model "
        "recsys-ranking:ccc at 25%'"
    )
    assert "1 canary pod(s) beside 2 stable: about 33% of requests" in done.stdout


def test_ranking_canary_dry_run_targets_the_gateway_by_default(values_file):
    args = ["--dry-run", "--values-from", str(values_file()), "--helm", "helm"]
    done = run_cli(
        "start", "-c", "ranking", "--image-tag", "1.1.0", "--model-tag", "recsys-ranking:ccc", *args
    )
    assert done.returncode == 0, done.stderr
    assert "ranking runs inside the gateway" in done.stdout
    [command] = [line for line in done.stdout.splitlines() if line.startswith("dry-run:")]
    assert "--set-string gateway.canary.rankingModelTag=recsys-ranking:ccc" in command
    assert "ranking.canary" not in command
    assert "gateway: 1 canary pod(s) beside 2 stable" in done.stdout
    # A gateway model tag with ranking in its own Deployment is refused in one line.
    separate = values_file({"ranking": {"modelTag": "recsys-ranking:bbb", "separate": True}})
    refused = run_cli(
        "start", "-c", "gateway", "--image-tag", "1.1.0", "--model-tag", "recsys-ranking:ccc",
        "--dry-run", "--values-from", str(separate), "--helm", "helm",
    )  # fmt: skip
    assert_one_line_error(refused, "the gateway runs no model with ranking.separate=true")


def test_kserve_rollback_dry_run_has_two_steps(values_file):
    path = values_file(
        {"platform": "kserve", "retrieval": {"canary": {"enabled": True, "weight": 20}}}
    )
    done = run_cli(
        "rollback", "-c", "retrieval", "--dry-run", "--values-from", str(path), "--helm", "helm"
    )
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if line.startswith("dry-run:")]
    assert len(commands) == 2
    assert "--set retrieval.canary.weight=0" in commands[0]
    assert "--set retrieval.canary.enabled=false" in commands[1]


def test_unknown_component_is_one_line(values_file):
    done = run_cli(
        "start",
        "--component",
        "frontend",
        "--image-tag",
        "1.1.0",
        "--dry-run",
        "--values-from",
        str(values_file()),
    )
    assert_one_line_error(done, "unknown component 'frontend': choose one of gateway")


def test_canary_already_running_is_one_line(values_file):
    path = values_file(
        {"gateway": {"canary": {"enabled": True, "image": {"tag": "1.1.0"}, "weight": 10}}}
    )
    done = run_cli(
        "start", "-c", "gateway", "--image-tag", "1.2.0", "--dry-run", "--values-from", str(path)
    )
    assert_one_line_error(done, "a gateway canary is already running (image 1.1.0, weight 10%)")


def test_missing_release_is_one_line(tmp_path):
    fake_helm = tmp_path / "helm"
    fake_helm.write_text("#!/bin/sh\necho 'Error: release: not found' >&2\nexit 1\n")
    fake_helm.chmod(fake_helm.stat().st_mode | stat.S_IEXEC)
    done = run_cli(
        "promote", "-c", "gateway", "--helm", str(fake_helm), "--release", "shop", "-n", "prod"
    )
    assert_one_line_error(done, "release 'shop' not found in namespace 'prod'")


def test_missing_helm_binary_is_one_line(tmp_path):
    done = run_cli("promote", "-c", "gateway", "--helm", str(tmp_path / "no-helm"))
    assert_one_line_error(done, "not found: install helm")


def test_unreachable_prometheus_is_one_line():
    done = run_cli("analyze", "--prometheus-url", f"http://127.0.0.1:{free_port()}")
    assert_one_line_error(done, "cannot reach Prometheus at http://127.0.0.1:")
    done = run_cli("analyze", "--prometheus-url", "localhost:9090")
    assert_one_line_error(done, "--prometheus-url must be an http(s) URL")


def test_analyze_verdicts_and_exit_codes(stub_server, prometheus_stub, healthy_numbers, tmp_path):
    healthy = stub_server(prometheus_stub(healthy_numbers))
    report = tmp_path / "analysis.json"
    done = run_cli(
        "analyze",
        "-c",
        "gateway",
        "--prometheus-url",
        healthy.url,
        "--window",
        "5m",
        "--selector",
        'namespace="recsys"',
        "--json",
        str(report),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: PASS" in done.stdout
    data = json.loads(report.read_text())
    assert data["verdict"] == "pass" and data["window_s"] == 300
    assert data["canary"]["requests"] == 500
    assert any('namespace="recsys"' in q and "[300s]" in q for q in data["queries"].values())

    slow = json.loads(json.dumps(healthy_numbers))
    slow["p95"]["canary"] = 0.030
    done = run_cli("analyze", "--prometheus-url", stub_server(prometheus_stub(slow)).url)
    assert done.returncode == 1
    assert "verdict: FAIL" in done.stdout and "p95_vs_stable" in done.stdout

    quiet = json.loads(json.dumps(healthy_numbers))
    quiet["requests"]["canary"] = 120
    done = run_cli("analyze", "--prometheus-url", stub_server(prometheus_stub(quiet)).url)
    assert done.returncode == 3
    assert "verdict: INCONCLUSIVE" in done.stdout
    done = run_cli(
        "analyze",
        "--prometheus-url",
        stub_server(prometheus_stub(quiet)).url,
        "--min-requests",
        "100",
    )
    assert done.returncode == 0


def test_query_errors_from_prometheus_are_one_line(stub_server):
    def reject(path: str):
        return 400, {"status": "error", "errorType": "bad_data", "error": "parse error"}

    done = run_cli("analyze", "--prometheus-url", stub_server(reject).url)
    assert_one_line_error(done, "rejected the query (bad_data): parse error")


def test_run_dry_run_promotes_a_healthy_canary(
    stub_server, prometheus_stub, healthy_numbers, values_file, tmp_path
):
    prometheus = stub_server(prometheus_stub(healthy_numbers))
    log = tmp_path / "decisions.jsonl"
    done = run_cli(
        "run",
        "-c",
        "ranking",
        "--image-tag",
        "1.1.0",
        "--model-tag",
        "recsys-ranking:ccc",
        "--steps",
        "10,50,100",
        "--interval",
        "1s",
        "--prometheus-url",
        prometheus.url,
        "--dry-run",
        "--values-from",
        str(values_file()),
        "--helm",
        "helm",
        "--log",
        str(log),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    decisions = [json.loads(line) for line in log.read_text().splitlines()]
    assert [d["action"] for d in decisions] == ["start", "analyze", "weight", "analyze", "promote"]
    assert decisions[-1]["commands"][0].startswith("helm upgrade recsys")
    assert "--set-string ranking.modelTag=recsys-ranking:ccc" in decisions[-1]["commands"][0]
    assert all(d["component"] == "ranking" for d in decisions)
    assert "outcome: promoted" in done.stdout


def test_run_rolls_back_on_the_first_failed_analysis(
    stub_server, prometheus_stub, healthy_numbers, values_file, tmp_path
):
    broken = json.loads(json.dumps(healthy_numbers))
    broken["errors"]["canary"] = 50
    prometheus = stub_server(prometheus_stub(broken))
    log = tmp_path / "decisions.jsonl"
    done = run_cli(
        "run",
        "-c",
        "gateway",
        "--image-tag",
        "1.1.0",
        "--steps",
        "5,50,100",
        "--interval",
        "1s",
        "--prometheus-url",
        prometheus.url,
        "--dry-run",
        "--values-from",
        str(values_file()),
        "--helm",
        "helm",
        "--log",
        str(log),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    decisions = [json.loads(line) for line in log.read_text().splitlines()]
    assert [d["action"] for d in decisions] == ["start", "rollback"]
    assert decisions[-1]["evidence"]["canary"]["error_ratio"] == pytest.approx(0.1)
    assert "--set gateway.canary.enabled=false" in decisions[-1]["commands"][0]
    assert "outcome: rolled_back" in done.stdout


def test_run_refuses_before_touching_anything_when_prometheus_is_down(values_file):
    done = run_cli(
        "run",
        "-c",
        "gateway",
        "--image-tag",
        "1.1.0",
        "--interval",
        "1s",
        "--prometheus-url",
        f"http://127.0.0.1:{free_port()}",
        "--dry-run",
        "--values-from",
        str(values_file()),
    )
    assert_one_line_error(done, "cannot reach Prometheus")
    assert "dry-run:" not in done.stdout
