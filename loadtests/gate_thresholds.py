"""The SLO gate, part 1 of 3: loading the per-endpoint thresholds of the SLO file.

Where the project is installed (`python -m loadtests.run`, the tests) the SLO file is read and
validated by the project's loader, `recsys.slo.load_slo`: the one validator of record, which reads
YAML and JSON alike. In the Helm chart's Job (stock Locust image: no `recsys`, no PyYAML) the chart
renders the same numbers as JSON (`toJson`), so the standard library reads them; that copy of
slo.yaml was validated where it was made (tests/helm checks it is slo.yaml's byte copy).

Evaluation is in gate_checks.py, the verdict and exit code in gate_verdict.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path


class SLOFileError(Exception):
    """The SLO file is missing, unreadable or invalid; the message names the file and problem."""


@dataclass(frozen=True)
class EndpointThresholds:
    """One endpoint's objectives, as in slo.yaml's `endpoints.<name>`."""

    p95_ms: float
    p99_ms: float
    max_error_ratio: float
    min_rps: float


def load_thresholds(path: str | os.PathLike[str]) -> dict[str, EndpointThresholds]:
    """Read the per-endpoint thresholds of an SLO file.

    Args:
        path: the SLO file: the project's `slo.yaml`, or the JSON the chart renders from it.

    Returns:
        Endpoint name -> thresholds.

    Raises:
        SLOFileError: the file is missing or invalid, with every problem found.
    """
    try:
        from recsys.errors import ConfigError
        from recsys.slo import load_slo
    except ImportError:  # the stock Locust image: the chart's JSON rendering
        return thresholds_from_json(path)
    try:
        slo = load_slo(path)
    except ConfigError as exc:
        raise SLOFileError(str(exc)) from exc
    return {
        name: EndpointThresholds(e.p95_ms, e.p99_ms, e.max_error_ratio, e.min_rps)
        for name, e in slo.endpoints.items()
    }


def thresholds_from_json(path: str | os.PathLike[str]) -> dict[str, EndpointThresholds]:
    """The thresholds of an SLO file rendered as JSON, read with the standard library only.

    Raises:
        SLOFileError: the file is missing, not JSON, or has no complete `endpoints` section.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise SLOFileError(f"SLO file not found: {path}") from exc
    except OSError as exc:
        raise SLOFileError(f"{path}: cannot read the SLO file ({exc})") from exc
    except ValueError as exc:
        raise SLOFileError(
            f"{path}: not JSON ({exc}); without the recsys package the gate reads the SLO "
            "file as JSON, as the chart renders it"
        ) from exc
    names = [f.name for f in fields(EndpointThresholds)]
    try:
        return {
            str(name): EndpointThresholds(**{key: float(spec[key]) for key in names})
            for name, spec in raw["endpoints"].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SLOFileError(
            f"{path}: invalid SLO file: every endpoints.<name> needs {', '.join(names)} ({exc!r})"
        ) from exc
