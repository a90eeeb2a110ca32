"""Pieces of the local rehearsal that need no server: split, scrape config, private homes."""

from __future__ import annotations

import pytest
import yaml

from recsys.rollout.localstack import TrafficDriver, private_home, prometheus_config


@pytest.mark.parametrize("percent", [0, 5, 25, 50, 100])
def test_traffic_split_is_exact(percent):
    driver = TrafficDriver({"stable": "http://s", "canary": "http://c"}, ["u1"], max_requests=400)
    driver.set_canary_percent(percent)
    tracks = [driver._next()[1] for _ in range(400)]
    assert tracks.count("canary") == 4 * percent
    assert driver._next() is None  # the request budget bounds the driver


def test_split_changes_apply_from_the_next_request():
    driver = TrafficDriver({"stable": "http://s", "canary": "http://c"}, ["u1"])
    driver.set_canary_percent(50)
    first = [driver._next()[1] for _ in range(10)]
    driver.set_canary_percent(0)
    assert first.count("canary") == 5
    assert all(driver._next()[1] == "stable" for _ in range(10))
    with pytest.raises(ValueError, match=r"0\.\.100"):
        driver.set_canary_percent(120)


def test_scrape_config_labels_each_stack_with_its_track():
    config = yaml.safe_load(prometheus_config({"stable": "127.0.0.1:1", "canary": "127.0.0.1:2"}))
    assert config["global"]["scrape_interval"] == "1s"
    job = config["scrape_configs"][0]
    assert job["honor_labels"] is True  # keeps BentoML's own `endpoint` label
    labels = {c["targets"][0]: c["labels"] for c in job["static_configs"]}
    assert labels["127.0.0.1:2"] == {"track": "canary", "release": "rehearsal"}


def test_each_stack_gets_its_own_home_sharing_the_model_store(tmp_path):
    store = tmp_path / "store"
    (store / "models").mkdir(parents=True)
    homes = [private_home(store, tmp_path / "work", name) for name in ("stable", "canary")]
    assert homes[0] != homes[1]
    for home in homes:
        assert (home / "models").resolve() == (store / "models").resolve()
    assert private_home(store, tmp_path / "work", "stable") == homes[0]  # idempotent
