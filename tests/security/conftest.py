"""Fixtures of the security tests: the trained tiny models, the pickle exploit, and the figures
(the stage-token check's cost) printed after the run whatever pytest's capture."""

from __future__ import annotations

import pytest

FIGURES = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def saved_tags(tiny_result):
    from recsys.artifacts import save_models

    return save_models(tiny_result)


@pytest.fixture(scope="session")
def security_figures(request) -> list:
    """Append (title, {name: value}) here; printed in the terminal summary."""
    return request.config.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter, config) -> None:
    figures = config.stash.get(FIGURES, [])
    if not figures:
        return
    terminalreporter.section("security figures")
    for title, values in figures:
        terminalreporter.write_line(title)
        for name, value in values.items():
            terminalreporter.write_line(f"  {name:<40} {value}")


@pytest.fixture(scope="session")
def warm_user(tiny_result) -> str:
    model = tiny_result.retrieval
    return str(next(model.users.ids[u] for u in range(len(model.users)) if not model.is_cold(u)))
