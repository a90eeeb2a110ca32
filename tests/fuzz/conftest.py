"""Fixtures of the fuzzing tests: where their figures are kept, and the summary that prints them."""

from __future__ import annotations

import pytest

FIGURES = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def fuzz_figures(request) -> list:
    """Append (title, {name: value}) here; printed after the run whatever pytest's capture."""
    return request.config.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter, config) -> None:
    figures = config.stash.get(FIGURES, [])
    if not figures:
        return
    terminalreporter.section("fuzzing figures")
    for title, values in figures:
        terminalreporter.write_line(title)
        for name, value in values.items():
            terminalreporter.write_line(f"  {name:<34} {value}")
