"""Runs the helm binary: reads a release's values, executes (or prints) planned commands.

The command runner is a parameter, so tests check the exact argv without a cluster and
`--dry-run` prints instead of running. Failures become typed errors with helm's own message.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.rollout.errors import HelmError, ReleaseNotFoundError
from recsys.rollout.plan import ChartValues, HelmCommand, HelmTarget

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHART = REPO_ROOT / "helm" / "recsys"
# A helm command (upgrade --wait included) must finish within this many seconds.
HELM_TIMEOUT_S = 1200.0


@dataclass(frozen=True)
class CommandResult:
    """What a finished command returned."""

    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str]], CommandResult]


def subprocess_runner(argv: Sequence[str]) -> CommandResult:
    """Run argv (no shell) with a timeout; a missing binary is a HelmError."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            check=False,
            timeout=HELM_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise HelmError(
            f"{argv[0]} not found: install helm (bash scripts/install-helm.sh) or pass --helm PATH"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise HelmError(f"{' '.join(argv[:3])} did not finish in {HELM_TIMEOUT_S:.0f}s") from exc
    return CommandResult(done.returncode, done.stdout, done.stderr)


def find_helm(explicit: str | None = None) -> str:
    """The helm binary: --helm, else PATH, else .tools/bin/helm (scripts/install-helm.sh)."""
    if explicit:
        return explicit
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    local = REPO_ROOT / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return "helm"  # fails with a clear HelmError when run


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


class Helm:
    """One release, through the helm binary.

    Args:
        target: release, namespace, chart and flags.
        runner: executes an argv; default runs it as a subprocess.
    """

    def __init__(self, target: HelmTarget, runner: Runner | None = None) -> None:
        self.target = target
        self.runner = runner or subprocess_runner

    def _run(self, argv: Sequence[str]) -> CommandResult:
        result = self.runner(argv)
        if result.returncode == 0:
            return result
        message = _last_line(result.stderr or result.stdout)
        if "not found" in message and "release" in message:
            raise ReleaseNotFoundError(
                f"release {self.target.release!r} not found in namespace "
                f"{self.target.namespace!r} (helm list -n {self.target.namespace}; "
                "--release/--namespace pick another)"
            )
        if "cluster unreachable" in message.lower():
            raise HelmError(f"helm cannot reach the Kubernetes cluster: {message}")
        raise HelmError(f"{' '.join(argv[1:3])} failed: {message}")

    def get_values(self) -> ChartValues:
        """The release's computed values (chart defaults merged with what was set)."""
        result = self._run(self.target.get_values())
        try:
            raw = json.loads(result.stdout or "{}")
        except ValueError as exc:
            raise HelmError(f"helm get values returned something else than JSON: {exc}") from exc
        return ChartValues(raw or {})

    def history(self) -> list[dict[str, Any]]:
        """`helm history` entries (revision, status, description, ...)."""
        result = self._run(self.target.history())
        return json.loads(result.stdout or "[]")

    def execute(
        self,
        commands: Sequence[HelmCommand],
        dry_run: bool,
        echo: Callable[[HelmCommand, bool], None] | None = None,
    ) -> None:
        """Run the commands in order (stop at the first failure); with dry_run only echo them.

        Args:
            commands: from recsys.rollout.plan.
            dry_run: print, do not run.
            echo: called with (command, dry_run) before each command.
        """
        for command in commands:
            if echo:
                echo(command, dry_run)
            if not dry_run:
                self._run(command.argv)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def chart_values(given: dict[str, Any], chart: Path | None = DEFAULT_CHART) -> ChartValues:
    """The chart's defaults (its values.yaml) merged with `given`, as helm computes them."""
    import yaml

    defaults: dict[str, Any] = {}
    if chart is not None and (Path(chart) / "values.yaml").is_file():
        defaults = yaml.safe_load((Path(chart) / "values.yaml").read_text()) or {}
    return ChartValues(_deep_merge(defaults, given))


def values_from_file(path: Path, chart: Path | None = DEFAULT_CHART) -> ChartValues:
    """Offline stand-in for `helm get values --all`: the chart defaults merged with a file.

    For `--dry-run` planning without cluster access. The file holds the values the release was
    installed or last upgraded with (YAML or JSON).
    """
    import yaml

    from recsys.rollout.errors import RolloutError

    try:
        given = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RolloutError(f"cannot read values file {path}: {exc}") from exc
    if not isinstance(given, dict):
        raise RolloutError(f"values file {path} must hold a mapping")
    return chart_values(given, chart)
