"""scripts/soak.py's pure parts: its duration limit and the memory trend (no server; the soak
itself runs with `make soak`, never in CI). Durations themselves: tests/unit/test_durations.py."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from recsys.stack import REPO_ROOT


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak_script", REPO_ROOT / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("15m", 900), ("1h30m", 5400)])
def test_durations(soak, text, seconds):
    assert soak.soak_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "ten minutes", "25h", "-5m"])
def test_bad_durations_are_refused(soak, text):
    with pytest.raises(argparse.ArgumentTypeError):
        soak.soak_duration(text)


def test_memory_trend_of_a_steady_leak(soak):
    # 1 MB every 60 s: 60 MB per hour, whatever the noise on single samples.
    samples = [(t, 300.0 + t / 60 + (0.5 if t % 120 else -0.5)) for t in range(0, 1800, 30)]
    trend = soak.memory_trend(samples)
    assert trend["slope_mb_per_h"] == pytest.approx(60, rel=0.05)
    assert trend["start_mb"] == 299.5 and trend["peak_mb"] >= trend["end_mb"]
    assert trend["growth_mb"] == pytest.approx(trend["end_mb"] - trend["start_mb"])


def test_memory_trend_of_flat_and_missing_samples(soak):
    assert soak.memory_trend([(0, 200.0), (10, 200.0)])["slope_mb_per_h"] == 0
    assert soak.memory_trend([(0, 200.0)])["slope_mb_per_h"] is None
    assert soak.memory_trend([])["growth_mb"] is None
