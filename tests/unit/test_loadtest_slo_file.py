"""The gate reads slo.yaml with the project's loader, or in the Job the chart's JSON rendering."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from loadtests.gate_thresholds import EndpointThresholds, SLOFileError, load_thresholds
from recsys.ops.slo import DEFAULT_SLO_FILE, load_slo

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_SLO_FILE = REPO_ROOT / "helm" / "recsys" / "files" / "slo.yaml"


@pytest.fixture
def without_project_or_yaml(monkeypatch):
    """Imports as in the stock Locust image: neither recsys nor PyYAML can be imported."""
    for name in ("recsys", "recsys.ops.slo", "recsys.errors", "yaml"):
        monkeypatch.setitem(sys.modules, name, None)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "slo.yaml"
    path.write_text(text)
    return path


def test_thresholds_are_the_project_slo_numbers():
    thresholds = load_thresholds(DEFAULT_SLO_FILE)
    slo = load_slo(DEFAULT_SLO_FILE)
    assert set(thresholds) == {"recommend", "recommend_batch", "similar_items"}
    for name, endpoint in slo.endpoints.items():
        assert thresholds[name] == EndpointThresholds(
            endpoint.p95_ms, endpoint.p99_ms, endpoint.max_error_ratio, endpoint.min_rps
        )


def as_json(tmp_path: Path, source: Path) -> Path:
    """The SLO file as the chart hands it to the Job: `include "recsys.slo" | fromYaml | toJson`."""
    path = tmp_path / "slo.json"
    path.write_text(json.dumps(yaml.safe_load(source.read_text())))
    return path


@pytest.mark.parametrize("path", [DEFAULT_SLO_FILE, CHART_SLO_FILE], ids=["repo", "chart"])
def test_the_job_reads_the_same_numbers_from_json(tmp_path, path, without_project_or_yaml):
    if not path.exists():
        pytest.skip(f"{path} is not there")
    expected = yaml.safe_load(path.read_text())["endpoints"]
    assert load_thresholds(as_json(tmp_path, path)) == {
        name: EndpointThresholds(**values) for name, values in expected.items()
    }


def test_the_project_loader_reads_the_json_rendering_too(tmp_path):
    assert load_thresholds(as_json(tmp_path, DEFAULT_SLO_FILE)) == load_thresholds(DEFAULT_SLO_FILE)


INVALID = [
    ("endpoints:\n  recommend:\n    p95_ms: 25\n", "endpoints.recommend.p99_ms: Field required"),
    (
        "endpoints:\n  recommend: {p95_ms: 80, p99_ms: 60, max_error_ratio: 0.001, min_rps: 1}\n",
        "p99_ms (60.0) must not be below p95_ms (80.0)",
    ),
    (
        "endpoints:\n  recommend: {p95_ms: 25, p99_ms: 60, max_error_ratio: 2, min_rps: 1}\n",
        "max_error_ratio",
    ),
    (
        "endpoints:\n  recommend: {p95_ms: -1, p99_ms: 60, max_error_ratio: 0, min_rps: 1}\n",
        "p95_ms",
    ),
    (
        "endpoints:\n  recommend: {p95_ms: 25, p99_ms: 60, max_error_ratio: 0, min_rps: 1,"
        " p90_ms: 20}\n",
        "p90_ms: Extra inputs are not permitted",
    ),
    ("endpoints: {}\n", "endpoints"),
    ("- just\n- a list\n", "mapping"),
    ("endpoints: [unclosed\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_slo_file_fails_with_a_clear_message(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SLOFileError) as error:
        load_thresholds(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_missing_slo_file(tmp_path):
    with pytest.raises(SLOFileError, match="SLO file not found"):
        load_thresholds(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("endpoints:\n  recommend: 1\n", "not JSON"),
        ('{"endpoints": {"recommend": {"p95_ms": 25}}}', "needs p95_ms, p99_ms"),
        ('{"endpoints": {"recommend": {"p95_ms": "fast", "p99_ms": 1}}}', "invalid SLO file"),
        ('{"version": 1}', "endpoints"),
        ("[1, 2]", "invalid SLO file"),
    ],
)
def test_the_job_rejects_invalid_files_clearly(tmp_path, without_project_or_yaml, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SLOFileError) as error:
        load_thresholds(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_the_job_reports_a_missing_file(tmp_path, without_project_or_yaml):
    with pytest.raises(SLOFileError, match="SLO file not found"):
        load_thresholds(tmp_path / "slo.json")
