"""The gate reads slo.yaml with the project's loader, or a standard-library fallback in the Job."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from loadtests import slo_gate
from loadtests.slo_gate import EndpointThresholds, SLOFileError, load_thresholds
from recsys.slo import DEFAULT_SLO_FILE, load_slo

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_SLO_FILE = REPO_ROOT / "helm" / "recsys" / "files" / "slo.yaml"


@pytest.fixture
def without_project_or_yaml(monkeypatch):
    """Imports as in the stock Locust image: neither recsys nor PyYAML can be imported."""
    for name in ("recsys", "recsys.slo", "recsys.errors", "yaml"):
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


@pytest.mark.parametrize("path", [DEFAULT_SLO_FILE, CHART_SLO_FILE], ids=["repo", "chart"])
def test_fallback_reads_the_same_numbers(path, without_project_or_yaml):
    if not path.exists():
        pytest.skip(f"{path} is not there")
    # `yaml` here is the module imported at load time; the code under test cannot import it.
    expected = yaml.safe_load(path.read_text())["endpoints"]
    assert load_thresholds(path) == {
        name: EndpointThresholds(**values) for name, values in expected.items()
    }


def test_block_mapping_parser_agrees_with_pyyaml_on_slo_files():
    for path in (DEFAULT_SLO_FILE, CHART_SLO_FILE):
        if path.exists():
            text = path.read_text()
            assert slo_gate.parse_block_mapping(text, str(path)) == yaml.safe_load(text)


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
        (
            "endpoints:\n  recommend:\n    p95_ms: 25\n",
            "endpoints.recommend.p99_ms: Field required",
        ),
        (
            "endpoints:\n  recommend:\n    p95_ms: 80\n    p99_ms: 60\n"
            "    max_error_ratio: 0.001\n    min_rps: 1\n",
            "p99_ms (60.0) must not be below p95_ms (80.0)",
        ),
        (
            "endpoints:\n  recommend:\n    p95_ms: fast\n    p99_ms: 60\n"
            "    max_error_ratio: 0.001\n    min_rps: 1\n",
            "endpoints.recommend.p95_ms: must be a number",
        ),
        ("endpoints:\n  - recommend\n", "unsupported YAML"),
        ("endpoints:\n  recommend:\n   p95_ms: 1\n  p99_ms: 2\n    x: 1\n", "indentation"),
        ("endpoints:\n\trecommend: 1\n", "tabs"),
        ("endpoints: 1\nendpoints: 2\n", "duplicate key"),
    ],
)
def test_fallback_rejects_invalid_files_clearly(tmp_path, without_project_or_yaml, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SLOFileError) as error:
        load_thresholds(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_block_mapping_parser_scalars_and_comments():
    text = (
        "# header\nversion: 1  # inline\nname: 'a # not a comment'\nratio: 0.5\nflag: true\n"
        "nothing:\nnested:\n  deeper:\n    value: -3\n  other: x\n"
    )
    assert slo_gate.parse_block_mapping(text) == {
        "version": 1,
        "name": "a # not a comment",
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "nested": {"deeper": {"value": -3}, "other": "x"},
    }
