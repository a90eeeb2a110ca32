"""The Bento's build options live in pyproject.toml; its packages are the project's dependencies."""

from __future__ import annotations

import tomllib

from recsys.stack import REPO_ROOT


def test_bentoml_reads_the_build_config_from_pyproject():
    from bentoml._internal.bento.build_config import BentoBuildConfig

    assert not (REPO_ROOT / "bentofile.yaml").exists()  # it would win over pyproject.toml
    config = BentoBuildConfig.from_file(str(REPO_ROOT / "pyproject.toml"))
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert config.service == "services.recommender:Recommender"
    assert config.name == "recsys"
    assert config.python.packages == project["dependencies"]
    assert {"recsys/**/*.py", "services/**/*.py", "slo.yaml"} <= set(config.include)
    assert config.docker.python_version == "3.11"
