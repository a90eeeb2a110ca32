"""The tuning search is decided by trial counts, not the clock; the safety cap is flagged.

A fake clock makes every trial look slow: the old seconds budget would have run one trial
per refitting stage, the trial count must run the same trials as a normal clock.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from recsys.errors import ConfigError
from recsys.model import tuning
from recsys.model.data import schema
from recsys.model.data.synth import TINY_SYNTH, generate
from recsys.model.pipeline import TrainConfig, make_split
from recsys.model.report import capped_warning, tuning_table
from recsys.model.tuning import TuningConfig, TuningResult, tune_sources
from recsys.model.vocab import Vocabulary

# An hour per clock reading: far beyond any seconds budget the search ever had.
SLOW_STEP_SECONDS = 3600.0


@pytest.fixture(scope="module")
def search_inputs():
    data = generate(TINY_SYNTH)
    config = TrainConfig.tiny()
    split = make_split(data.interactions, config)
    items = Vocabulary(data.catalog[schema.ITEM_ID].to_numpy())
    return split, items, config


def _search(search_inputs, tuning_config: TuningConfig) -> TuningResult:
    split, items, config = search_inputs
    return tune_sources(
        split.train,
        split.validation,
        items,
        split.validation_start,
        config.embedding,
        config.item_item,
        config.retrieval,
        tuning_config,
        config.seed,
    )


def _slow_clock() -> Iterator[float]:
    now = 0.0
    while True:
        now += SLOW_STEP_SECONDS
        yield now


def _outcome(result: TuningResult) -> list[tuple]:
    """What the search ran and chose, without the measured seconds."""
    return [(t.stage, t.params, t.ndcg, t.recall, t.chosen) for t in result.trials]


def test_slow_trials_run_the_same_search_and_choose_the_same_settings(search_inputs, monkeypatch):
    config = TuningConfig(max_users=100, max_trials=2, safety_seconds=1e12)
    normal = _search(search_inputs, config)
    clock = _slow_clock()
    monkeypatch.setattr(tuning, "perf_counter", lambda: next(clock))
    slow = _search(search_inputs, config)

    assert _outcome(slow) == _outcome(normal)
    assert slow.table()["chosen"] == normal.table()["chosen"]
    assert slow.capped == normal.capped == []
    stages = [t.stage for t in normal.trials]
    assert stages.count("item-item") == stages.count("als") == 2  # max_trials, not the grid
    assert stages.count("popularity") == len(tuning.POPULARITY_GRID)  # cheap stages run whole


def test_default_trial_count_runs_the_whole_grids():
    default = TuningConfig().max_trials
    assert default >= max(len(tuning.EASE_LAMBDAS), len(tuning.KNN_GRID), len(tuning.ALS_GRID))


def test_safety_cap_stops_stages_and_is_flagged(search_inputs, monkeypatch):
    clock = _slow_clock()
    monkeypatch.setattr(tuning, "perf_counter", lambda: next(clock))
    result = _search(search_inputs, TuningConfig(max_users=100, safety_seconds=60.0))

    stages = [t.stage for t in result.trials]
    assert result.capped == list(dict.fromkeys(stages))  # every stage, in order
    assert all(stages.count(stage) == 1 for stage in stages)  # the first trial always runs
    table = result.table()
    assert table["capped"] == result.capped and table["safety_seconds"] == 60.0
    warning = capped_warning(table)
    assert warning is not None and "als" in warning and "machine" in warning
    assert any("Warning" in line for line in tuning_table(table))
    assert capped_warning({**table, "capped": []}) is None
    assert not any("Warning" in line for line in tuning_table({**table, "capped": []}))


def test_old_models_tuning_budget_is_ignored_when_reusing_settings():
    saved = TrainConfig().to_dict()
    saved["tuning"] = {"enabled": True, "budget_seconds": 10.0, "max_users": 1000, "k": 10}
    config = TrainConfig.with_overrides(TrainConfig.tuned_settings(saved))
    assert config.tuning.enabled is False


def test_stale_override_names_its_replacement():
    with pytest.raises(ConfigError, match=r"tuning\.budget_seconds.*tuning\.max_trials"):
        TrainConfig.with_overrides({"tuning": {"budget_seconds": 5}})
    with pytest.raises(ConfigError, match=r"'embedding\.factor'; known: .*factors"):
        TrainConfig.with_overrides({"embedding": {"factor": 8}})
    with pytest.raises(ConfigError, match="'seeds'"):
        TrainConfig.with_overrides({"seeds": 1})
