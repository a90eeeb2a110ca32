"""BentoML homes: the configured model store, and a private home per server that shares it.

BentoML keeps its Prometheus multiprocess files in `$BENTOML_HOME/prometheus_multiproc_dir` and
empties that directory whenever a server starts; every server's /metrics reads all the files in
it. Servers (or stacks) sharing a home would therefore wipe and mix each other's metrics. In
Kubernetes each pod has its own /tmp; here each server gets its own home whose `models` is a
symlink to the shared store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def model_store(env: Mapping[str, str] | None = None) -> Path:
    """The `models` directory of the configured BentoML home (BentoML's default ~/bentoml).

    Args:
        env: the environment to read BENTOML_HOME from (default: this process's).
    """
    env = os.environ if env is None else env
    return Path(env.get("BENTOML_HOME") or Path.home() / "bentoml") / "models"


def private_home(home: Path, models: Path) -> Path:
    """Make `home` a BentoML home of its own whose model store is `models` (shared, symlinked).

    Args:
        home: the private home to create (resolved: servers may run in another directory).
        models: the shared `models` directory (created when missing).

    Returns:
        The absolute path of the home.
    """
    models.mkdir(parents=True, exist_ok=True)
    models = models.resolve()
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    link = home / "models"
    if link.is_symlink() and link.resolve() != models:
        link.unlink()
    if not link.exists():
        link.symlink_to(models, target_is_directory=True)
    return home
