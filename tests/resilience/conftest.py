"""Fixtures of the resilience scenarios: a model store of their own with an old, a new and a
corrupt model version, the known users Locust asks for, and the figures summary."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from resilience_support import FIGURES

from recsys.model.artifacts import RANKING_MODEL, RETRIEVAL_MODEL


@dataclass(frozen=True)
class ModelVersions:
    """Model tags in the scenarios' own store (`path`, a BentoML `models` directory)."""

    path: Path
    old: dict[str, str]  # {"retrieval": tag, "ranking": tag}
    new: dict[str, str]
    corrupt_ranking: str  # stored, but one file truncated: fails its checksum
    missing_ranking: str  # not in the store at all

    def env(self, versions: dict[str, str]) -> dict[str, str]:
        """The variables that make a service serve these versions (the gateway's popularity
        fallback comes from the retrieval model, so it is pinned too)."""
        return {
            "RECSYS_RETRIEVAL_MODEL_TAG": versions["retrieval"],
            "RECSYS_RANKING_MODEL_TAG": versions["ranking"],
        }


@pytest.fixture(scope="session")
def model_versions(tiny_result, bentoml_home, tmp_path_factory) -> ModelVersions:
    """Three stored versions of the tiny models, copied into a store only these tests use.

    The third ranking version is corrupted in the copy only (its booster truncated), so the
    session's shared store, which other tests load `latest` from, stays intact.
    """
    from recsys.model.artifacts import save_models

    old, new, spare = (save_models(tiny_result) for _ in range(3))
    store = tmp_path_factory.mktemp("resilience-store") / "models"
    shutil.copytree(Path(bentoml_home) / "models", store)
    corrupt_dir = store / RANKING_MODEL / spare["ranking"].split(":")[1]
    booster = corrupt_dir / "booster.ubj"
    booster.write_bytes(booster.read_bytes()[: booster.stat().st_size // 2])
    # `latest` must never resolve to the corrupt version in this store.
    for name, stage in ((RETRIEVAL_MODEL, "retrieval"), (RANKING_MODEL, "ranking")):
        (store / name / "latest").write_text(new[stage].split(":")[1])
    return ModelVersions(
        path=store,
        old=old,
        new=new,
        corrupt_ranking=spare["ranking"],
        missing_ranking=f"{RANKING_MODEL}:doesnotexist0000",
    )


@pytest.fixture(scope="session")
def known_users(tiny_result) -> list[str]:
    """Up to 100 users with history, so most requests take the full retrieve -> rank path."""
    model = tiny_result.retrieval
    warm = (str(model.users.ids[u]) for u in range(len(model.users)) if not model.is_cold(u))
    return [user for _, user in zip(range(100), warm, strict=False)]


def pytest_terminal_summary(terminalreporter) -> None:
    """Print every scenario's figures after the run, whatever pytest's output capture."""
    if not FIGURES:
        return
    terminalreporter.section("resilience figures")
    for title, figures in FIGURES:
        terminalreporter.write_line(title)
        for name, value in figures.items():
            terminalreporter.write_line(f"  {name:<34} {value}")
