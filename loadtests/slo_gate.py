"""The SLO gate of the load tests, free of Locust: thresholds, percentiles, verdict, exit code.

The locustfile feeds it per-endpoint counts and response-time histograms taken from Locust's stats;
everything here is plain data in, plain data out, so it is unit tested without a load generator.

This module runs inside the Locust process (gevent) and, in the Helm chart's Job, next to the
locustfile in a flat directory of the stock Locust image, where neither `recsys` nor PyYAML is
installed. It therefore needs only the standard library; where the project is installed the SLO
file is validated by the project's own loader (`recsys.slo.load_slo`): one validator of record.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Exit codes of a load test run.
EXIT_PASS = 0
EXIT_CONFIG_ERROR = 3  # the SLO file or the options are unusable; no load was sent
EXIT_SLO_BREACH = 99  # an SLO threshold was breached (or a sustained breach aborted the run)
# Request errors without a breach keep Locust's own `--exit-code-on-error` (1 by default).

VERDICT_SCHEMA = "recsys.loadtest.verdict/v1"
METRICS = ("p95_ms", "p99_ms", "error_ratio", "rps")


class SLOFileError(Exception):
    """The SLO file is missing, unreadable or invalid; the message names the file and problem."""


@dataclass(frozen=True)
class EndpointThresholds:
    """One endpoint's objectives, as in slo.yaml's `endpoints.<name>`."""

    p95_ms: float
    p99_ms: float
    max_error_ratio: float
    min_rps: float


# --------------------------------------------------------------------------- SLO file


def load_thresholds(path: str | os.PathLike[str]) -> dict[str, EndpointThresholds]:
    """Read the per-endpoint thresholds of an SLO file.

    Args:
        path: the SLO file (the project's `slo.yaml` or the chart's copy of it).

    Returns:
        Endpoint name -> thresholds.

    Raises:
        SLOFileError: the file is missing or invalid, with every problem found.
    """
    try:
        from recsys.errors import ConfigError
        from recsys.slo import load_slo
    except ImportError:  # the stock Locust image: validate the endpoints section here
        return thresholds_from_mapping(read_slo_mapping(path), str(path))
    try:
        slo = load_slo(path)
    except ConfigError as exc:
        raise SLOFileError(str(exc)) from exc
    return {
        name: EndpointThresholds(e.p95_ms, e.p99_ms, e.max_error_ratio, e.min_rps)
        for name, e in slo.endpoints.items()
    }


def read_slo_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse an SLO file with PyYAML when importable, else with `parse_block_mapping`."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError as exc:
        raise SLOFileError(f"SLO file not found: {path}") from exc
    except OSError as exc:
        raise SLOFileError(f"{path}: cannot read the SLO file ({exc})") from exc
    try:
        import yaml
    except ImportError:
        raw = parse_block_mapping(text, str(path))
    else:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SLOFileError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise SLOFileError(f"{path}: expected a mapping at the top level")
    return raw


def parse_block_mapping(text: str, source: str = "<slo>") -> dict[str, Any]:
    """Parse the YAML subset SLO files use: nested block mappings of scalars, and comments.

    Lists, flow collections, anchors and multi-line strings are rejected with the line number,
    never guessed at.
    """
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(0, root)]  # (indent of the keys, mapping)
    opened: tuple[dict[str, Any], str] | None = None  # "key:" with no value, awaiting children
    for number, line in enumerate(text.splitlines(), start=1):
        body = _strip_comment(line).rstrip()
        stripped = body.strip()
        if not stripped or stripped in ("---", "..."):
            continue
        indent = len(body) - len(body.lstrip(" "))
        if body[:indent].count("\t") or body.lstrip(" ").startswith("\t"):
            raise SLOFileError(f"{source}:{number}: tabs are not allowed for indentation")
        key, colon, value = stripped.partition(":")
        key, value = key.strip(), value.strip()
        if not colon or not key or key[0] in "-[{&*!|>'\"" or (value and value[0] in "[{&*!|>"):
            raise SLOFileError(
                f"{source}:{number}: unsupported YAML here ({stripped!r}); only nested "
                "'key: value' mappings are read without PyYAML"
            )
        if opened is not None:
            parent, parent_key = opened
            if indent > stack[-1][0]:
                parent[parent_key] = {}
                stack.append((indent, parent[parent_key]))
            opened = None
        while indent < stack[-1][0]:
            stack.pop()
        if indent != stack[-1][0]:
            raise SLOFileError(f"{source}:{number}: inconsistent indentation")
        mapping = stack[-1][1]
        if key in mapping:
            raise SLOFileError(f"{source}:{number}: duplicate key {key!r}")
        if value:
            mapping[key] = _scalar(value)
        else:
            mapping[key] = None
            opened = (mapping, key)
    return root


def _strip_comment(line: str) -> str:
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index]
    return line


def _scalar(value: str) -> Any:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~"):
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def thresholds_from_mapping(raw: Mapping[str, Any], source: str) -> dict[str, EndpointThresholds]:
    """Validate the `endpoints` section as `recsys.slo.EndpointSLO` does (same rules, same names).

    Raises:
        SLOFileError: listing every problem as `path: message`.
    """
    problems: list[str] = []
    endpoints = raw.get("endpoints")
    if not isinstance(endpoints, Mapping) or not endpoints:
        raise SLOFileError(
            f"{source}: invalid SLO file: endpoints: a non-empty mapping is required"
        )
    bounds = {  # field -> (lowest, lowest is allowed, highest)
        "p95_ms": (0.0, False, math.inf),
        "p99_ms": (0.0, False, math.inf),
        "max_error_ratio": (0.0, True, 1.0),
        "min_rps": (0.0, True, math.inf),
    }
    thresholds: dict[str, EndpointThresholds] = {}
    for name, spec in endpoints.items():
        where = f"endpoints.{name}"
        if not isinstance(spec, Mapping):
            problems.append(f"{where}: must be a mapping")
            continue
        values: dict[str, float] = {}
        for extra in sorted(set(spec) - set(bounds)):
            problems.append(f"{where}.{extra}: Extra inputs are not permitted")
        for key, (low, inclusive, high) in bounds.items():
            value = spec.get(key)
            if value is None:
                problems.append(f"{where}.{key}: Field required")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{where}.{key}: must be a number, got {value!r}")
            elif value < low or (value == low and not inclusive) or value > high:
                relation = ">=" if inclusive else ">"
                limit = "" if high == math.inf else f" and <= {high:g}"
                problems.append(f"{where}.{key}: must be {relation} {low:g}{limit}, got {value}")
            else:
                values[key] = float(value)
        p95, p99 = values.get("p95_ms"), values.get("p99_ms")
        if p95 is not None and p99 is not None and p99 < p95:
            problems.append(f"{where}: p99_ms ({p99}) must not be below p95_ms ({p95})")
        if len(values) == len(bounds):
            thresholds[str(name)] = EndpointThresholds(**values)
    if problems:
        raise SLOFileError(f"{source}: invalid SLO file: " + "; ".join(problems))
    return thresholds


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Traffic:
    """What one endpoint saw over a period: counts and a response-time histogram.

    `response_times` maps a response time in milliseconds (rounded the way Locust rounds them) to
    how many requests took that long; failed requests are counted in it too.
    """

    requests: int = 0
    failures: int = 0
    response_times: Mapping[int, int] = field(default_factory=dict)

    def since(self, earlier: Traffic) -> Traffic:
        """The traffic between an earlier snapshot of the same cumulative counters and this one."""
        histogram = {
            value: count - earlier.response_times.get(value, 0)
            for value, count in self.response_times.items()
        }
        return Traffic(
            requests=self.requests - earlier.requests,
            failures=self.failures - earlier.failures,
            response_times={value: count for value, count in histogram.items() if count > 0},
        )

    @property
    def error_ratio(self) -> float | None:
        return self.failures / self.requests if self.requests else None

    def percentile(self, quantile: float) -> float | None:
        return percentile(self.response_times, quantile)


def percentile(histogram: Mapping[float, int], quantile: float) -> float | None:
    """Nearest-rank percentile of a {value: count} histogram; None when it is empty.

    The smallest value with at least `quantile` of all observations at or below it, e.g. with 100
    observations p95 is the 95th smallest.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(quantile * total - 1e-9))  # 0.95 * 100 is 95.00000000000001
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


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


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Check:
    """One threshold of one endpoint against what was observed."""

    endpoint: str
    metric: str  # p95_ms | p99_ms | error_ratio | rps | requests
    threshold: float
    observed: float | None
    status: str  # pass | fail | not_checked
    note: str = ""

    @property
    def breached(self) -> bool:
        return self.status == "fail"

    @property
    def comparison(self) -> str:
        return ">=" if self.metric in ("rps", "requests") else "<="

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "metric": self.metric,
            "comparison": self.comparison,
            "threshold": self.threshold,
            "observed": self.observed,
            "status": self.status,
            "note": self.note,
        }


def evaluate(
    traffic: Mapping[str, Traffic],
    thresholds: Mapping[str, EndpointThresholds],
    seconds: float | None,
    skip_min_rps: Mapping[str, str] | None = None,
    min_requests: int = 1,
    min_tail: int = 0,
) -> list[Check]:
    """Check every endpoint of the SLO file against its traffic.

    Args:
        traffic: endpoint -> what it saw over the measured period.
        thresholds: endpoint -> objectives (from the SLO file).
        seconds: length of the measured period; None skips the throughput checks (a window).
        skip_min_rps: endpoint -> why its throughput floor is not checked in this run.
        min_requests: fewer requests than this leave latency and error checks undecided
            (`not_checked`); with the default of 1 only an endpoint with no traffic is undecided.
        min_tail: a percentile is decided only when at least this many requests lie beyond it
            (with 1: p95 needs 20 requests, p99 needs 100), so that one slow request in a short
            window does not count as a p99 breach.

    Returns:
        The checks, endpoint by endpoint in the SLO file's order. An endpoint that received no
        request at all over a whole run (`seconds` given) fails with metric `requests`.
    """
    skip_min_rps = skip_min_rps or {}
    checks: list[Check] = []
    for name, slo in thresholds.items():
        seen = traffic.get(name, Traffic())
        if seen.requests == 0 and seconds is not None:
            checks.append(Check(name, "requests", 1, 0, "fail", "no request reached this endpoint"))
            continue
        enough = seen.requests >= max(1, min_requests)
        few = f"only {seen.requests} requests"
        for metric, quantile, limit in (("p95_ms", 0.95, slo.p95_ms), ("p99_ms", 0.99, slo.p99_ms)):
            observed = seen.percentile(quantile)
            needed = max(min_requests, math.ceil(round(min_tail / (1 - quantile), 6)))
            if seen.requests < needed or observed is None:
                checks.append(Check(name, metric, limit, observed, "not_checked", few))
            else:
                checks.append(Check(name, metric, limit, observed, _status(observed <= limit)))
        ratio = seen.error_ratio
        if not enough or ratio is None:
            checks.append(
                Check(name, "error_ratio", slo.max_error_ratio, ratio, "not_checked", few)
            )
        else:
            passed = ratio <= slo.max_error_ratio
            checks.append(
                Check(
                    name,
                    "error_ratio",
                    slo.max_error_ratio,
                    round(ratio, 6),
                    _status(passed),
                    f"{seen.failures}/{seen.requests} failed",
                )
            )
        if seconds is None:
            continue
        rps = round((seen.requests - seen.failures) / seconds, 2) if seconds > 0 else 0.0
        if name in skip_min_rps:
            checks.append(Check(name, "rps", slo.min_rps, rps, "not_checked", skip_min_rps[name]))
        else:
            checks.append(Check(name, "rps", slo.min_rps, rps, _status(rps >= slo.min_rps)))
    return checks


def _status(passed: bool) -> str:
    return "pass" if passed else "fail"


def plan_min_rps_checks(
    thresholds: Mapping[str, EndpointThresholds],
    mode: str,
    planned_rps: Mapping[str, float] | None,
) -> dict[str, str]:
    """Which throughput floors a run does not check, and why.

    A paced run offers a fixed load (users x per-user rate), so it can only demonstrate a floor
    that its own offered load reaches; a floor above it would fail by construction, whatever the
    service does. Such floors are reported as `not_checked` with the reason, never passed.

    Args:
        thresholds: endpoint -> objectives.
        mode: `auto` (check the floors the planned load reaches; every floor when unpaced),
            `enforce` (check every floor) or `report` (check none, only report the throughput).
        planned_rps: endpoint -> offered req/s of this run; None for an unpaced (closed-loop) run.

    Returns:
        endpoint -> reason, for the floors left unchecked.
    """
    if mode == "enforce":
        return {}
    if mode == "report":
        return {
            name: "throughput floors off for this run (--min-rps-check report)"
            for name in thresholds
        }
    if mode != "auto":
        raise ValueError(f"unknown min-rps mode {mode!r} (auto, enforce or report)")
    if planned_rps is None:
        return {}
    skipped: dict[str, str] = {}
    for name, slo in thresholds.items():
        offered = planned_rps.get(name, 0.0)
        if offered < slo.min_rps:
            skipped[name] = f"offered load {offered:.1f} req/s is below the floor by design"
    return skipped


class SustainedBreachDetector:
    """Decides when a breach has lasted long enough to stop the run early.

    Fed one window of traffic at a time (after the warm-up); the same check failing in
    `consecutive` windows in a row is a sustained breach. A window in which an endpoint had fewer
    than `min_requests` requests decides nothing for it (its streak neither grows nor resets), and
    neither does a percentile with fewer than `min_tail` requests beyond it.
    """

    def __init__(
        self,
        thresholds: Mapping[str, EndpointThresholds],
        consecutive: int,
        min_requests: int = 20,
        min_tail: int = 1,
    ) -> None:
        self.thresholds = dict(thresholds)
        self.consecutive = consecutive
        self.min_requests = min_requests
        self.min_tail = min_tail
        self.streaks: dict[tuple[str, str], int] = {}
        self.sustained: list[Check] = []

    def observe(self, window: Mapping[str, Traffic]) -> list[Check]:
        """Record one window; returns the checks that failed in it."""
        checks = evaluate(
            window,
            self.thresholds,
            seconds=None,
            min_requests=self.min_requests,
            min_tail=self.min_tail,
        )
        for check in checks:
            key = (check.endpoint, check.metric)
            if check.status == "fail":
                self.streaks[key] = self.streaks.get(key, 0) + 1
            elif check.status == "pass":
                self.streaks[key] = 0
        failed = [c for c in checks if c.breached]
        if self.should_abort and not self.sustained:
            self.sustained = [
                c for c in failed if self.streaks.get((c.endpoint, c.metric), 0) >= self.consecutive
            ]
        return failed

    @property
    def should_abort(self) -> bool:
        return self.consecutive > 0 and any(n >= self.consecutive for n in self.streaks.values())


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
