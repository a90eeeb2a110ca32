"""The SLO file (`slo.yaml`): one source for load tests, alert rules and canary analysis."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recsys import REPO_ROOT
from recsys.errors import ConfigError

DEFAULT_SLO_FILE = REPO_ROOT / "slo.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointSLO(_Strict):
    """Objectives of one gateway endpoint."""

    p95_ms: float = Field(gt=0, description="95th percentile latency ceiling (ms).")
    p99_ms: float = Field(gt=0, description="99th percentile latency ceiling (ms).")
    max_error_ratio: float = Field(ge=0, le=1, description="Largest failed/all ratio.")
    min_rps: float = Field(ge=0, description="Throughput a load test must sustain (req/s).")

    @model_validator(mode="after")
    def _ordered(self) -> EndpointSLO:
        if self.p99_ms < self.p95_ms:
            raise ValueError(f"p99_ms ({self.p99_ms}) must not be below p95_ms ({self.p95_ms})")
        return self


class CanarySLO(_Strict):
    """How much worse than stable a canary may be."""

    max_latency_ratio: float = Field(gt=1, description="Canary p95 / stable p95 ceiling.")
    max_error_ratio_delta: float = Field(ge=0, le=1)
    max_fallback_ratio: float = Field(ge=0, le=1)
    min_requests: int = Field(ge=1, description="Fewer canary requests -> inconclusive.")


class SLOFile(_Strict):
    """The whole file."""

    version: int = Field(ge=1, le=1)
    objective: float = Field(gt=0, lt=1, description="Availability objective, e.g. 0.999.")
    window_days: int = Field(ge=1, le=90)
    endpoints: dict[str, EndpointSLO] = Field(min_length=1)
    canary: CanarySLO

    @property
    def error_budget(self) -> float:
        return 1.0 - self.objective


def load_slo(path: str | Path | None = None) -> SLOFile:
    """Read and validate an SLO file.

    Raises:
        ConfigError: with the file name and every problem found (path: message).
    """
    path = Path(path) if path is not None else DEFAULT_SLO_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"SLO file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return SLOFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: invalid SLO file: {problems}") from exc
