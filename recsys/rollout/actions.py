"""Rollout actions carried out with helm (or printed, with `--dry-run`).

Each action plans its commands from the values the release has at that moment: read once from
`helm get values`, then updated locally with what every command set, so a dry run chains the
same commands a real run would.
"""

from __future__ import annotations

from collections.abc import Callable

from recsys.rollout.helm import Helm
from recsys.rollout.plan import (
    ChartValues,
    HelmCommand,
    apply_settings,
    plan_promote,
    plan_rollback,
    plan_set_weight,
    plan_start,
)


class HelmActions:
    """start / set_weight / promote / rollback of one component's canary through helm.

    Args:
        helm: the release's helm wrapper.
        values: the release's current values.
        component: gateway, retrieval or ranking.
        image_tag, model_tag, image_repository: what `start` deploys.
        fault_latency_ms, fault_error_rate: TEST ONLY fault injection for `start`.
        dry_run: print the commands instead of running them.
        echo: called with (command, dry_run) before each command.
    """

    def __init__(
        self,
        helm: Helm,
        values: ChartValues,
        component: str,
        *,
        image_tag: str | None = None,
        model_tag: str | None = None,
        image_repository: str | None = None,
        fault_latency_ms: int = 0,
        fault_error_rate: float = 0.0,
        dry_run: bool = False,
        echo: Callable[[HelmCommand, bool], None] | None = None,
    ) -> None:
        self.helm = helm
        self.values = values
        self.component = component
        self.image_tag = image_tag
        self.model_tag = model_tag
        self.image_repository = image_repository
        self.faults = (fault_latency_ms, fault_error_rate)
        self.dry_run = dry_run
        self.echo = echo

    def _do(self, commands: list[HelmCommand]) -> list[str]:
        try:
            self.helm.execute(commands, self.dry_run, self.echo)
        finally:
            # Even a failed upgrade may have applied part of its values (a canary Deployment
            # whose pods never got ready): plan the next step, e.g. the rollback, from them.
            self.values = ChartValues(apply_settings(self.values.raw, commands))
        return [command.shell() for command in commands]

    def start(self, weight: int) -> list[str]:
        if not self.image_tag:
            from recsys.rollout.errors import RolloutError

            raise RolloutError("starting a canary needs --image-tag")
        return self._do(
            plan_start(
                self.helm.target,
                self.values,
                self.component,
                self.image_tag,
                weight,
                model_tag=self.model_tag,
                image_repository=self.image_repository,
                fault_latency_ms=self.faults[0],
                fault_error_rate=self.faults[1],
            )
        )

    def set_weight(self, weight: int) -> list[str]:
        return self._do(plan_set_weight(self.helm.target, self.values, self.component, weight))

    def promote(self) -> list[str]:
        return self._do(plan_promote(self.helm.target, self.values, self.component))

    def rollback(self, to_revision: int | None = None) -> list[str]:
        return self._do(
            plan_rollback(self.helm.target, self.values, self.component, to_revision=to_revision)
        )
