"""Figures of the security tests (the stage-token check's cost), printed after the run whatever
pytest's capture."""

from __future__ import annotations

import pytest

FIGURES = pytest.StashKey[list]()


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
