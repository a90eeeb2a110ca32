"""Typed errors of `recsys rollout`; the CLI prints each as one `error: ...` line (exit 2)."""

from __future__ import annotations

from recsys.errors import RecsysError


class RolloutError(RecsysError):
    """Base class: a rollout step cannot be carried out as asked."""


class UnknownComponentError(RolloutError):
    """The component is not one of gateway, retrieval, ranking."""


class ReleaseNotFoundError(RolloutError):
    """Helm (or the Kubernetes API) knows no such release in the namespace."""


class CanaryAlreadyRunningError(RolloutError):
    """`start` was asked while the component already runs a canary."""


class NoCanaryError(RolloutError):
    """`promote`, `rollback` or a weight change was asked while no canary runs."""


class HelmError(RolloutError):
    """The helm binary is missing or a helm command failed."""


class PrometheusUnreachableError(RolloutError):
    """Nothing answers at the Prometheus URL (or it answered with something else)."""


class PrometheusQueryError(RolloutError):
    """Prometheus answered but rejected a query."""


class KubernetesError(RolloutError):
    """The Kubernetes API is unreachable or refused a read."""
