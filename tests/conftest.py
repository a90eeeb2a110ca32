"""Shared fixtures: tiny seeded data, one tiny trained pipeline, an isolated BentoML store."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Every test session gets its own model store; set before anything imports bentoml.
_BENTOML_HOME = Path(tempfile.mkdtemp(prefix="recsys-bentoml-"))
os.environ["BENTOML_HOME"] = str(_BENTOML_HOME)
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import pytest  # noqa: E402

from recsys.data.synth import SynthConfig, generate  # noqa: E402
from recsys.pipeline import TrainConfig  # noqa: E402

TINY_SYNTH = SynthConfig(n_users=600, n_items=1500, n_events=30_000, days=60, seed=7)


def tiny_train_config(**overrides) -> TrainConfig:
    base = TrainConfig()
    config = replace(
        base,
        validation_days=10,
        test_days=10,
        max_eval_users=2000,
        embedding=replace(base.embedding, factors=16, iterations=6),
        retrieval=replace(base.retrieval, num_candidates=100),
        ranker=replace(base.ranker, n_estimators=60, max_training_users=1000),
    )
    return replace(config, **overrides)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_BENTOML_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_data():
    return generate(TINY_SYNTH)


@pytest.fixture(scope="session")
def tiny_result(tiny_data):
    from recsys.pipeline import train_pipeline

    return train_pipeline(tiny_data.interactions, tiny_data.catalog, tiny_train_config())


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return _BENTOML_HOME
