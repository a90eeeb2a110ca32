"""Markdown table helpers shared by the report modules."""

from __future__ import annotations


def fmt(value, digits: int = 2) -> str:
    """A table cell: floats rounded to `digits` without trailing zeros, None as `-`."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"
    return str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table (and the blank line after it) as a list of lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]
