"""The SLO gate, part 2 of 3: evaluation, free of Locust: traffic, percentiles, checks.

The locustfile feeds it per-endpoint counts and response-time histograms taken from Locust's
stats; everything here is plain data in, plain data out, so it is unit tested without a load
generator. Standard library only: it runs in the chart's Job next to the locustfile (stock Locust
image, flat directory), which is why it imports no sibling module at run time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadtests.gate_thresholds import EndpointThresholds


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


def percentile_of(values: Iterable[float], quantile: float) -> float | None:
    """Nearest-rank percentile of plain values (quantile in (0, 1]); None when there are none."""
    return percentile(Counter(values), quantile)


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
