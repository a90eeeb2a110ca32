"""recsys.model.health: PSI, the training snapshot saved with the models, the sliding-window
monitor."""

from __future__ import annotations

import time

import numpy as np
import pytest

from recsys.model.health import (
    OTHER_CATEGORY,
    Bins,
    DriftMonitor,
    HealthSettings,
    ModelHealth,
    TrainingSnapshot,
    psi,
    snapshot_for,
)


def test_psi_is_zero_for_equal_and_grows_with_the_shift():
    base = np.array([10, 20, 30, 40])
    assert psi(base, base * 3) == pytest.approx(0.0)
    small = psi(base, np.array([12, 20, 30, 38]))
    large = psi(base, np.array([40, 30, 20, 10]))
    assert 0 < small < 0.1 < large
    assert psi(base, np.array([0, 0, 0, 100])) > large  # empty bins stay finite


def test_quantile_bins_split_the_reference_evenly():
    values = np.random.default_rng(0).normal(size=10_000)
    bins = Bins.from_sample(values, n_bins=10)
    assert len(bins.edges) == 9 and sum(bins.shares) == pytest.approx(1.0)
    assert max(bins.shares) - min(bins.shares) < 0.01
    counts = bins.count(np.array([-10.0, 0.0, 10.0, np.inf, np.nan]))
    assert counts.sum() == 3 and counts[0] == 1 and counts[-1] == 1


@pytest.fixture(scope="module")
def snapshot(tiny_result, tiny_data) -> TrainingSnapshot:
    return snapshot_for(tiny_result, tiny_data.interactions)


def test_snapshot_describes_the_newest_window(snapshot, tiny_data, tiny_result):
    end = tiny_data.interactions["timestamp"].max().timestamp()
    assert snapshot.data_end == pytest.approx(end)
    assert snapshot.trained_until < snapshot.data_end
    assert snapshot.requests > 100
    assert 0 <= snapshot.unknown_user_share < 1
    assert sum(snapshot.categories.values()) == pytest.approx(1.0, abs=1e-3)
    assert len(snapshot.retrieval_scores.shares) > 1 and len(snapshot.ranking_scores.shares) > 1
    round_trip = TrainingSnapshot.from_dict(snapshot.to_dict())
    assert round_trip == snapshot


def test_snapshot_is_saved_in_both_models_under_the_manifest(tiny_result, snapshot):
    from recsys.model.artifacts import RANKING_MODEL, RETRIEVAL_MODEL, model_path, save_models

    tags = save_models(tiny_result, snapshot=snapshot)
    for name, tag in ((RETRIEVAL_MODEL, tags["retrieval"]), (RANKING_MODEL, tags["ranking"])):
        directory, _ = model_path(tag, name)
        assert TrainingSnapshot.load(directory) == snapshot
        assert "health.json" in (directory / "manifest.json").read_text()


def _monitor(snapshot, window=50):
    readings = []
    monitor = DriftMonitor(snapshot, window=window, publish_every=5, publish=readings.append)
    return monitor, readings


def _replay(monitor, model, ranker, users, top_k):
    from recsys.model.ranking import rank_columns

    for user in users:
        columns = model.retrieve_columns(user, 100)
        monitor.observe_retrieval(model.users.index_of(user) >= 0, columns["scores"])
        verdict = rank_columns(ranker, user, columns)
        monitor.observe_ranking(
            verdict["scores"], [columns["categories"][i] for i in verdict["order"][:top_k]]
        )


def test_monitor_moves_when_the_request_mix_shifts(snapshot, tiny_result, tiny_data):
    model, ranker = tiny_result.retrieval, tiny_result.ranker
    log = tiny_data.interactions
    recent = log[log["timestamp"] > log["timestamp"].max() - np.timedelta64(10, "D")]
    usual = recent["user_id"].sample(60, random_state=1).tolist()
    monitor, readings = _monitor(snapshot)
    _replay(monitor, model, ranker, usual, snapshot.top_k)
    calm = monitor.reading()
    assert readings and readings[-1].requests == 50  # the window is full, older requests left
    _replay(monitor, model, ranker, [f"never-seen-{i}" for i in range(60)], snapshot.top_k)
    shifted = monitor.reading()
    live_calm, training = calm.shares["unknown_users"]
    live_shifted, _ = shifted.shares["unknown_users"]
    assert live_shifted == 1.0 and live_calm < live_shifted
    assert abs(live_calm - training) < 0.3
    for signal in ("retrieval_score", "category_mix"):
        assert shifted.psi[signal] > calm.psi[signal], signal


def test_unknown_categories_are_pooled(snapshot):
    monitor, _ = _monitor(snapshot)
    monitor.observe_ranking([0.0], ["a-category-no-one-trained-on"] * snapshot.top_k)
    assert monitor.category_mix.total[-1] == snapshot.top_k
    assert OTHER_CATEGORY not in monitor.categories


def test_model_health_reports_age_and_switches_with_the_version(snapshot, tmp_path):
    snapshot.save(tmp_path)
    ages, drift = [], []
    health = ModelHealth(
        locate=lambda version: (tmp_path, None) if version == "v1" else (None, time.time() - 60),
        on_age=lambda version, end, age: ages.append((version, end, age)),
        on_drift=lambda version, reading: drift.append(version),
        settings=HealthSettings(window=20, publish_every=1),
    )
    health.on_retrieval("v1", True, [0.1] * 5)
    assert ages[-1][0] == "v1" and ages[-1][1] == snapshot.data_end
    assert ages[-1][2] == pytest.approx(time.time() - snapshot.data_end, abs=5)
    assert drift == ["v1"]
    health.on_retrieval("v2", True, [0.1] * 5)  # no snapshot: age from creation
    assert ages[-1][0] == "v2" and 55 < ages[-1][2] < 120
    assert health.monitor is None and drift == ["v1"]


def test_feature_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    from recsys.model.health import feature_psi

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(5000, 2))
    current = np.column_stack([rng.normal(size=5000), rng.normal(loc=1.5, size=5000)])
    values = feature_psi(reference, current, ("same", "shifted"))
    assert values["same"] < 0.02
    assert values["shifted"] > 0.5
