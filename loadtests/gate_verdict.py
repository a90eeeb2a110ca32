"""The SLO gate, part 3 of 3: the verdict of a run: exit code, JSON verdict, console table.

Standard library only, no sibling import at run time (see gate_checks.py for why).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadtests.gate_checks import Check, Traffic

# Exit codes of a load test run.
EXIT_PASS = 0
EXIT_CONFIG_ERROR = 3  # the SLO file or the options are unusable; no load was sent
EXIT_SLO_BREACH = 99  # an SLO threshold was breached (or a sustained breach aborted the run)
# Request errors without a breach keep Locust's own `--exit-code-on-error` (1 by default).

VERDICT_SCHEMA = "recsys.loadtest.verdict/v1"


def decide_exit_code(
    checks: Iterable[Check], aborted: bool, request_errors: int, exit_code_on_error: int = 1
) -> int:
    """The process exit code: a breach wins over request errors, which win over a pass.

    Args:
        checks: the final checks of the run.
        aborted: the run was stopped early by a sustained breach.
        request_errors: failed requests plus exceptions raised in tasks.
        exit_code_on_error: Locust's `--exit-code-on-error`.
    """
    if aborted or any(check.breached for check in checks):
        return EXIT_SLO_BREACH
    if request_errors > 0:
        return exit_code_on_error
    return EXIT_PASS


def summarize(traffic: Traffic, seconds: float | None) -> dict[str, Any]:
    """The figures of one endpoint reported in the verdict."""
    good = traffic.requests - traffic.failures
    return {
        "requests": traffic.requests,
        "failures": traffic.failures,
        "error_ratio": _round(traffic.error_ratio, 6),
        "rps": _round(good / seconds, 2) if seconds else None,
        "p50_ms": traffic.percentile(0.50),
        "p95_ms": traffic.percentile(0.95),
        "p99_ms": traffic.percentile(0.99),
        "max_ms": float(max(traffic.response_times)) if traffic.response_times else None,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------- verdict


def build_verdict(
    checks: list[Check],
    endpoints: Mapping[str, Traffic],
    measured_s: float,
    exit_code: int,
    run: Mapping[str, Any],
    generator: Mapping[str, Any],
    abort: Mapping[str, Any] | None = None,
    timeline: list[Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON verdict of a run (schema `recsys.loadtest.verdict/v1`, see docs/loadtesting.md)."""
    breaches = [c.as_dict() for c in checks if c.breached]
    if abort is not None:
        outcome = "aborted_sustained_breach"
    elif breaches:
        outcome = "slo_breach"
    elif exit_code != EXIT_PASS:
        outcome = "request_errors"
    else:
        outcome = "pass"
    per_endpoint = {}
    for name, traffic in endpoints.items():
        per_endpoint[name] = {
            **summarize(traffic, measured_s),
            "checks": {c.metric: c.status for c in checks if c.endpoint == name},
        }
    return {
        "schema": VERDICT_SCHEMA,
        "passed": exit_code == EXIT_PASS,
        "outcome": outcome,
        "exit_code": exit_code,
        "breaches": breaches,
        "aborted_early": abort is not None,
        "abort": dict(abort) if abort is not None else None,
        "run": {**run, "measured_s": round(measured_s, 2)},
        "endpoints": per_endpoint,
        "checks": [c.as_dict() for c in checks],
        "generator": dict(generator),
        "timeline": list(timeline or []),
        **dict(extra or {}),
    }


def render_table(checks: Iterable[Check], exit_code: int) -> str:
    """A fixed-width pass/fail table for the console."""
    rows = [("endpoint", "metric", "threshold", "observed", "result", "note")]
    for check in checks:
        observed = "-" if check.observed is None else f"{check.observed:g}"
        rows.append(
            (
                check.endpoint,
                check.metric,
                f"{check.comparison} {check.threshold:g}",
                observed,
                check.status.upper().replace("_", " "),
                check.note,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    verdict = "PASS" if exit_code == EXIT_PASS else "FAIL"
    header = f"SLO gate: {verdict} (exit code {exit_code})"
    return "\n".join([header, "-" * max(len(line) for line in lines), *lines])
