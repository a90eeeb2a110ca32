"""The benchmark's pure pieces: peer choice at equal processes, cost, rounds and py-spy layers.

No server, no load: these check the arithmetic the smoke test's figures are built with.
"""

from __future__ import annotations

import pytest

from bench.equal_cpu import cost_per_thousand, peer_for
from bench.http_load import saturation_summary
from bench.loadgen import LoadResult
from bench.profile import LAYERS, OTHER_GROUP, layers_ms_per_request, summarize_collapsed
from bench.servers import VariantSpec

NAMES = ["default", "default-nobatch", "split", "single", "single-w2", "kserve", "kserve-w2"]


@pytest.mark.parametrize(
    ("variant", "processes"),
    [("default", 2), ("split", 3), ("single", 1), ("single-w2", 2), ("kserve-w3", 3)],
)
def test_processes_are_services_times_workers(variant: str, processes: int):
    assert VariantSpec.parse(variant).processes == processes


@pytest.mark.parametrize(
    ("ours", "peer"),
    [
        ("default", "kserve-w2"),
        ("default-nobatch", "kserve-w2"),
        ("single", "kserve"),
        ("single-w2", "kserve-w2"),
        ("split", "kserve-w2"),  # no 3-worker peer in NAMES: the closest one
    ],
)
def test_each_form_gets_the_peer_with_as_many_processes(ours: str, peer: str):
    assert peer_for(ours, NAMES) == peer


def test_no_peer_without_a_kserve_variant():
    assert peer_for("default", ["default", "single"]) is None


def test_cost_per_thousand_is_cpu_seconds_priced_per_vcpu_hour():
    cost = cost_per_thousand(3.6, vcpu_hour_usd=0.05)
    assert cost["cpu_seconds_per_1000"] == 3.6
    assert cost["usd_per_1000"] == pytest.approx(3.6 / 3600 * 0.05)


def _load(rps: float, p99: float, requests: int, cpu_s: float) -> LoadResult:
    latency = {"p50": p99 / 2, "p95": p99 * 0.9, "p99": p99}
    return LoadResult(
        "x", 0.0, 8, 1.0, requests, rps, {}, 0, latency, 0.01, 1.0, 1.0, 0.0, cpu_s, 0.0
    )


def test_saturation_takes_medians_over_rounds_and_pools_cpu():
    summary = saturation_summary(
        [_load(100, 30, 100, 0.2), _load(300, 10, 300, 0.9), _load(200, 20, 200, 0.4)]
    )
    assert summary["achieved_rps"] == 200
    assert summary["latency_ms"]["p99"] == 20
    assert summary["requests"] == 600
    assert summary["server_cpu_ms_per_request"] == pytest.approx(1.5 * 1000 / 600, abs=1e-3)
    assert len(summary["per_round"]) == 3


COLLAPSED = "\n".join(
    [
        "run (bentoml/_internal/server.py:1);rank (recsys/model/ranking.py:9);"
        "inplace_predict (xgboost/core.py:2) 6",
        "main (bench/kserve_peer.py:1);run (bench/kserve_model.py:2);send (uvicorn/h.py:3) 3",
        "run (_bentoml_impl/worker/service.py:1);validate (pydantic/main.py:4) 1",
        "main (/work/wt-bench/.venv/lib/site.py:1) 2",
    ]
)


def test_samples_go_to_the_innermost_layer():
    summary = summarize_collapsed(COLLAPSED)
    assert summary["active_samples"] == 12
    assert summary["layer_samples"] == {
        "our model code": 6,
        "starlette + uvicorn": 3,
        OTHER_GROUP: 2,  # `wt-bench/` is no `bench/` directory
        "pydantic": 1,
    }
    assert summary["own_code_share"] == 0.5


def test_layers_split_the_cpu_per_request():
    summaries = [summarize_collapsed(COLLAPSED), {"layer_samples": {"BentoML": 12}}]
    split = layers_ms_per_request(summaries, cpu_ms_per_request=4.8)
    assert list(split) == [*LAYERS, OTHER_GROUP]
    assert split["our model code"] == pytest.approx(4.8 * 6 / 24)
    assert split["BentoML"] == pytest.approx(2.4)
    assert sum(split.values()) == pytest.approx(4.8, abs=0.01)
