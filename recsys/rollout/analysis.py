"""Canary analysis without I/O: the PromQL of each signal, and the verdict from its numbers.

Signals come from the metrics every BentoML server exports, split by the `track` label that the
ServiceMonitor (Kubernetes), the pod-label mapping (KServe) or the rehearsal's scrape config adds:

- requests and 5xx errors: `bentoml_service_request_total` of the component's BentoML service
  (`runner_name`) on one endpoint (the gateway's `/recommend` by default);
- p95 / p99 latency: the `bentoml_service_request_duration_seconds` histogram on that endpoint;
- fallback ratio (gateway only): `recsys_fallback_total` per request of the gateway's API.

Limits come from `slo.yaml`: the endpoint's absolute objectives, and the `canary:` section for
the comparison with stable and the minimum request count below which nothing is decided.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from recsys.ops import durations
from recsys.rollout.errors import RolloutError, UnknownComponentError

if TYPE_CHECKING:
    from recsys.slo import SLOFile

COMPONENTS = ("gateway", "retrieval", "ranking")
# BentoML service (the `runner_name` label) that serves each component.
SERVICE_OF = {"gateway": "Recommender", "retrieval": "Retrieval", "ranking": "Ranking"}
# Endpoint analysed by default: the one every user request goes through.
ENDPOINT_OF = {"gateway": "/recommend", "retrieval": "/retrieve", "ranking": "/rank"}
# Gateway endpoints that can fall back (the denominator of the fallback ratio).
GATEWAY_API_ENDPOINTS = ("/recommend", "/recommend_batch", "/similar_items")
TRACKS = ("stable", "canary")

REQUESTS_METRIC = "bentoml_service_request_total"
DURATION_METRIC = "bentoml_service_request_duration_seconds"
FALLBACK_METRIC = "recsys_fallback_total"
MODEL_INFO_METRIC = "recsys_model_info"

# One label matcher: name, operator, double-quoted value (escapes allowed).
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'
_SELECTOR = re.compile(rf"{_MATCHER}(?:,{_MATCHER})*")
# Floating-point slack when comparing an observed value with its limit.
_EPSILON = 1e-9


class Verdict(StrEnum):
    """Outcome of one analysis."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"

    @property
    def exit_code(self) -> int:
        """Process exit code of `recsys rollout analyze` (2 is reserved for errors)."""
        return {"pass": 0, "fail": 1, "inconclusive": 3}[self.value]


class CheckStatus(StrEnum):
    """Outcome of one check."""

    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no data"
    NOT_APPLICABLE = "n/a"


def parse_duration(text: str | float | int) -> float:
    """Seconds of a duration such as `90`, `90s`, `2m`, `1m30s`, `1h`, `500ms`.

    Raises:
        RolloutError: the text is not a positive duration (recsys.ops.durations says why).
    """
    try:
        return durations.parse_duration(text)
    except durations.DurationError as exc:
        raise RolloutError(str(exc)) from exc


def promql_duration(seconds: float) -> str:
    """A PromQL range (`[...]`) of whole seconds, at least 1s."""
    return f"{max(1, round(seconds))}s"


def validate_selector(selector: str) -> str:
    """Extra label matchers (`namespace="recsys",release="recsys"`), normalised; '' when empty.

    Raises:
        RolloutError: the text is not a comma-separated list of Prometheus label matchers.
    """
    text = selector.strip().strip(",").strip()
    if not text:
        return ""
    if not _SELECTOR.fullmatch(text):
        raise RolloutError(
            f"--selector must be Prometheus label matchers like "
            f'namespace="recsys",release="recsys" (no braces), got {selector!r}'
        )
    return ",".join(part.strip() for part in _split_matchers(text))


def _split_matchers(text: str) -> list[str]:
    """Split on the commas between matchers (not those inside quoted values)."""
    return [m.group(0) for m in re.finditer(_MATCHER, text)]


def check_component(component: str) -> str:
    """The component name, or UnknownComponentError listing the valid ones."""
    if component not in COMPONENTS:
        raise UnknownComponentError(
            f"unknown component {component!r}: choose one of {', '.join(COMPONENTS)}"
        )
    return component


@dataclass(frozen=True)
class AnalysisTarget:
    """What to analyse: one component's canary against its stable track over a window.

    Attributes:
        component: gateway, retrieval or ranking.
        window_s: length of the window ending at the evaluation time, in seconds.
        selector: extra label matchers narrowing the series (namespace, release, ...).
        endpoint: HTTP path analysed; default: the component's main endpoint.
    """

    component: str
    window_s: float
    selector: str = ""
    endpoint: str | None = None

    def __post_init__(self) -> None:
        check_component(self.component)
        if not self.window_s > 0:
            raise RolloutError(f"the analysis window must be positive, got {self.window_s}")
        object.__setattr__(self, "selector", validate_selector(self.selector))
        if self.endpoint is not None and not re.fullmatch(r"/[A-Za-z0-9_/.-]*", self.endpoint):
            raise RolloutError(
                f"--endpoint must be an HTTP path like /recommend: {self.endpoint!r}"
            )

    @property
    def service(self) -> str:
        return SERVICE_OF[self.component]

    @property
    def path(self) -> str:
        return self.endpoint or ENDPOINT_OF[self.component]

    def _labels(self, *matchers: str) -> str:
        extra = (self.selector,) if self.selector else ()
        return "{" + ",".join((*matchers, 'track=~"stable|canary"', *extra)) + "}"

    def queries(self) -> dict[str, str]:
        """The PromQL of every signal, each summed per `track`.

        Returns:
            name -> query: requests, errors, p95, p99, model_info, and for the gateway
            fallbacks and api_requests (the fallback ratio's denominator).
        """
        window = promql_duration(self.window_s)
        on_endpoint = self._labels(f'runner_name="{self.service}"', f'endpoint="{self.path}"')
        errors_only = self._labels(
            f'runner_name="{self.service}"', f'endpoint="{self.path}"', 'http_response_code=~"5.."'
        )
        queries = {
            "requests": f"sum by (track) (increase({REQUESTS_METRIC}{on_endpoint}[{window}]))",
            "errors": f"sum by (track) (increase({REQUESTS_METRIC}{errors_only}[{window}]))",
            "p95": _quantile(0.95, on_endpoint, window),
            "p99": _quantile(0.99, on_endpoint, window),
            "model_info": (
                f"max by (track, component, model_version) ({MODEL_INFO_METRIC}{self._labels()})"
            ),
        }
        if self.component == "gateway":
            api = "|".join(GATEWAY_API_ENDPOINTS)
            gateway_api = self._labels('runner_name="Recommender"', f'endpoint=~"{api}"')
            queries["fallbacks"] = (
                f"sum by (track) (increase({FALLBACK_METRIC}{self._labels()}[{window}]))"
            )
            queries["api_requests"] = (
                f"sum by (track) (increase({REQUESTS_METRIC}{gateway_api}[{window}]))"
            )
        return queries


def _quantile(q: float, labels: str, window: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (track, le) "
        f"(rate({DURATION_METRIC}_bucket{labels}[{window}])))"
    )


@dataclass
class TrackNumbers:
    """What Prometheus reported for one track; None where it had no data."""

    requests: float | None = None
    errors: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    fallbacks: float | None = None
    api_requests: float | None = None

    @property
    def error_ratio(self) -> float | None:
        if not self.requests:
            return None
        # The 5xx series may not exist yet: no series means no error.
        return (self.errors or 0.0) / self.requests

    @property
    def fallback_ratio(self) -> float | None:
        if not self.api_requests:
            return None
        return (self.fallbacks or 0.0) / self.api_requests

    @property
    def p95_ms(self) -> float | None:
        return None if self.p95_s is None else self.p95_s * 1000.0

    @property
    def p99_ms(self) -> float | None:
        return None if self.p99_s is None else self.p99_s * 1000.0

    def to_dict(self) -> dict[str, float | None]:
        raw = asdict(self)
        raw.update(
            error_ratio=self.error_ratio,
            fallback_ratio=self.fallback_ratio,
            p95_ms=self.p95_ms,
            p99_ms=self.p99_ms,
        )
        return raw


_SIGNAL_FIELDS = {
    "requests": "requests",
    "errors": "errors",
    "p95": "p95_s",
    "p99": "p99_s",
    "fallbacks": "fallbacks",
    "api_requests": "api_requests",
}


def numbers_by_track(per_query: dict[str, dict[str, float | None]]) -> dict[str, TrackNumbers]:
    """Turn {query name: {track: value}} into one TrackNumbers per track (NaN -> None)."""
    tracks = {track: TrackNumbers() for track in TRACKS}
    for name, attribute in _SIGNAL_FIELDS.items():
        for track, value in per_query.get(name, {}).items():
            if track in tracks and value is not None and math.isfinite(value):
                setattr(tracks[track], attribute, float(value))
    return tracks


@dataclass(frozen=True)
class Thresholds:
    """Every limit of the analysis (from `slo.yaml`, optionally overridden).

    Attributes:
        p95_ms: absolute p95 ceiling of the endpoint (slo.yaml endpoints.<name>.p95_ms).
        p99_ms: absolute p99 ceiling.
        max_error_ratio: absolute 5xx ratio ceiling.
        max_latency_ratio: canary p95 at most this multiple of stable p95.
        max_error_ratio_delta: canary 5xx ratio at most this above stable's.
        max_fallback_ratio: share of gateway requests served by a fallback on the canary.
        min_requests: canary (and stable) requests needed before anything is decided.
        latency_slack_ms: differences of p95 below this count as noise (histogram bucket
            width); 0 = the ratio alone decides, as in slo.yaml.
    """

    p95_ms: float
    p99_ms: float
    max_error_ratio: float
    max_latency_ratio: float
    max_error_ratio_delta: float
    max_fallback_ratio: float
    min_requests: int
    latency_slack_ms: float = 0.0

    @classmethod
    def from_slo(cls, slo: SLOFile, endpoint: str = "recommend") -> Thresholds:
        """Limits of one `slo.yaml` endpoint plus its `canary:` section.

        Raises:
            RolloutError: the endpoint is not in the SLO file.
        """
        if endpoint not in slo.endpoints:
            raise RolloutError(
                f"endpoint {endpoint!r} is not in the SLO file; it has: "
                + ", ".join(sorted(slo.endpoints))
            )
        objectives = slo.endpoints[endpoint]
        return cls(
            p95_ms=objectives.p95_ms,
            p99_ms=objectives.p99_ms,
            max_error_ratio=objectives.max_error_ratio,
            max_latency_ratio=slo.canary.max_latency_ratio,
            max_error_ratio_delta=slo.canary.max_error_ratio_delta,
            max_fallback_ratio=slo.canary.max_fallback_ratio,
            min_requests=slo.canary.min_requests,
        )

    def with_overrides(self, **overrides: float | int | None) -> Thresholds:
        """A copy with every non-None override applied (unknown names raise TypeError)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown threshold(s): {sorted(unknown)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Check:
    """One comparison with its evidence."""

    name: str
    status: CheckStatus
    observed: float | None
    limit: float | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


@dataclass
class AnalysisReport:
    """The verdict and everything it was decided from."""

    component: str
    window_s: float
    verdict: Verdict
    reason: str
    checks: list[Check]
    stable: TrackNumbers
    canary: TrackNumbers
    thresholds: Thresholds
    queries: dict[str, str] = field(default_factory=dict)
    evaluated_at: float | None = None
    model_versions: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "window_s": self.window_s,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "evaluated_at": self.evaluated_at,
            "checks": [c.to_dict() for c in self.checks],
            "stable": self.stable.to_dict(),
            "canary": self.canary.to_dict(),
            "thresholds": asdict(self.thresholds),
            "model_versions": self.model_versions,
            "queries": self.queries,
        }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "no data"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "ratio":
        return f"{value:.2%}"
    return f"{value:g}"


def _ceiling(name: str, observed: float | None, limit: float | None, unit: str, what: str) -> Check:
    """observed <= limit, or no data when either side is missing."""
    if observed is None or limit is None:
        missing = "canary" if observed is None else "stable"
        return Check(name, CheckStatus.NO_DATA, observed, limit, f"{what}: no {missing} data")
    ok = observed <= limit + _EPSILON
    relation = "<=" if ok else ">"
    status = CheckStatus.PASS if ok else CheckStatus.FAIL
    detail = f"{what} {_fmt(observed, unit)} {relation} {_fmt(limit, unit)}"
    return Check(name, status, observed, limit, detail)


def compute_checks(
    component: str, stable: TrackNumbers, canary: TrackNumbers, limits: Thresholds
) -> list[Check]:
    """Every check of the canary, against slo.yaml and against stable.

    Comparisons with stable need stable to have served `min_requests` too; otherwise they
    report no data (and the verdict is inconclusive unless something else failed).
    """
    stable_enough = (stable.requests or 0) >= limits.min_requests
    if stable_enough and stable.p95_ms is not None:
        relative_p95: float | None = max(
            limits.max_latency_ratio * stable.p95_ms, stable.p95_ms + limits.latency_slack_ms
        )
    else:
        relative_p95 = None
    if stable_enough and canary.error_ratio is not None and stable.error_ratio is not None:
        error_delta: float | None = canary.error_ratio - stable.error_ratio
    else:
        error_delta = None
    checks = [
        _ceiling("p95_vs_slo", canary.p95_ms, limits.p95_ms, "ms", "canary p95"),
        _ceiling("p99_vs_slo", canary.p99_ms, limits.p99_ms, "ms", "canary p99"),
        _ceiling(
            "p95_vs_stable",
            canary.p95_ms,
            relative_p95,
            "ms",
            f"canary p95 vs {limits.max_latency_ratio:g}x stable p95"
            + (f" (or stable + {limits.latency_slack_ms:g} ms)" if limits.latency_slack_ms else ""),
        ),
        _ceiling(
            "error_ratio_vs_slo",
            canary.error_ratio,
            limits.max_error_ratio,
            "ratio",
            "canary 5xx ratio",
        ),
    ]
    if error_delta is None and canary.error_ratio is not None:
        checks.append(
            Check(
                "error_ratio_vs_stable",
                CheckStatus.NO_DATA,
                None,
                limits.max_error_ratio_delta,
                "5xx ratio vs stable: not enough stable data",
            )
        )
    else:
        checks.append(
            _ceiling(
                "error_ratio_vs_stable",
                error_delta,
                limits.max_error_ratio_delta,
                "ratio",
                "canary 5xx ratio minus stable's",
            )
        )
    if component == "gateway":
        checks.append(
            _ceiling(
                "fallback_ratio",
                canary.fallback_ratio,
                limits.max_fallback_ratio,
                "ratio",
                "canary fallback ratio",
            )
        )
    else:
        checks.append(
            Check(
                "fallback_ratio",
                CheckStatus.NOT_APPLICABLE,
                None,
                None,
                "fallbacks are counted by the gateway, which cannot tell which track of a "
                "stage failed; stage failures show in this stage's 5xx ratio",
            )
        )
    return checks


def decide(
    component: str, stable: TrackNumbers, canary: TrackNumbers, limits: Thresholds, window_s: float
) -> tuple[Verdict, str, list[Check]]:
    """The verdict of one analysis.

    Returns:
        (verdict, one-line reason, checks). Inconclusive when the canary served fewer than
        `min_requests` requests (whatever the checks say) or a check had no data; fail when
        any check failed; pass otherwise.
    """
    checks = compute_checks(component, stable, canary, limits)
    served = canary.requests or 0.0
    window = promql_duration(window_s)
    if canary.requests is None and stable.requests is None:
        reason = (
            f"no request series of either track in {window}: check --selector, and that "
            "Prometheus puts the `track` label on the series (ServiceMonitor / scrape config)"
        )
        return Verdict.INCONCLUSIVE, reason, checks
    if served < limits.min_requests:
        reason = (
            f"canary served {served:.0f} requests in {window}, fewer than min_requests "
            f"{limits.min_requests}: not enough evidence to decide"
        )
        return Verdict.INCONCLUSIVE, reason, checks
    failed = [c for c in checks if c.status is CheckStatus.FAIL]
    if failed:
        return Verdict.FAIL, "; ".join(c.detail for c in failed), checks
    missing = [c for c in checks if c.status is CheckStatus.NO_DATA]
    if missing:
        return Verdict.INCONCLUSIVE, "; ".join(c.detail for c in missing), checks
    passed = sum(c.status is CheckStatus.PASS for c in checks)
    reason = f"all {passed} checks passed on {served:.0f} canary requests in {window}"
    return Verdict.PASS, reason, checks


def build_report(
    target: AnalysisTarget,
    per_query: dict[str, dict[str, float | None]],
    limits: Thresholds,
    evaluated_at: float | None = None,
    model_versions: list[dict[str, str]] | None = None,
) -> AnalysisReport:
    """The full report from query results ({query name: {track: value}})."""
    tracks = numbers_by_track(per_query)
    verdict, reason, checks = decide(
        target.component, tracks["stable"], tracks["canary"], limits, target.window_s
    )
    return AnalysisReport(
        component=target.component,
        window_s=target.window_s,
        verdict=verdict,
        reason=reason,
        checks=checks,
        stable=tracks["stable"],
        canary=tracks["canary"],
        thresholds=limits,
        queries=target.queries(),
        evaluated_at=evaluated_at,
        model_versions=model_versions or [],
    )
