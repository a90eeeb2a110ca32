"""Shared fixtures: tiny seeded data, one tiny trained pipeline, an isolated BentoML store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Every test session gets its own model store; set before anything imports bentoml.
_BENTOML_HOME = Path(tempfile.mkdtemp(prefix="recsys-bentoml-"))
os.environ["BENTOML_HOME"] = str(_BENTOML_HOME)
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import pytest  # noqa: E402

from recsys.data.synth import TINY_SYNTH, generate  # noqa: E402
from recsys.pipeline import TrainConfig  # noqa: E402

tiny_train_config = TrainConfig.tiny


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


@pytest.fixture(scope="module")
def saved_tags(tiny_result) -> dict[str, str]:
    """The tiny models saved to the store; per module, so they are `latest` for its tests."""
    from recsys.artifacts import save_models

    return save_models(tiny_result)


@pytest.fixture(scope="module")
def warm_user(tiny_result) -> str:
    """A user the tiny retrieval model knows (not cold-start)."""
    model = tiny_result.retrieval
    return str(next(model.users.ids[u] for u in range(len(model.users)) if not model.is_cold(u)))


@dataclass(frozen=True)
class Workdir:
    """A user's working directory: default-size data and models, made by the real CLI."""

    path: Path
    bentoml_home: Path
    env: dict[str, str]

    def recsys(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run `recsys ARGS` here, as a user would from this directory."""
        return subprocess.run(
            [sys.executable, "-m", "recsys", *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def default_workdir(tmp_path_factory) -> Workdir:
    """`recsys data synth` + `recsys train` at the default size, with relative paths only.

    The BentoML home is the relative `bentoml-home` too: whatever loads the models must resolve
    it. About 70 s on 2 cores; shared by every test that needs what `make run` serves.
    """
    path = tmp_path_factory.mktemp("user-workdir")
    env = {**os.environ, "BENTOML_HOME": "bentoml-home", "OPENBLAS_NUM_THREADS": "1"}
    workdir = Workdir(path, path / "bentoml-home", env)
    for args in (["data", "synth", "--out", "data"], ["train", "--data", "data"]):
        done = workdir.recsys(*args)
        assert done.returncode == 0, f"recsys {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return workdir
