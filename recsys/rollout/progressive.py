"""Progressive rollout: raise the canary's weight step by step, analyse at each step, decide.

    start (or set) weight W1 -> wait `interval` -> analyse the window since the change
      pass          -> next step; the step 100 means promote
      fail          -> roll back at once, exit 1
      inconclusive  -> wait another interval (window grows), up to `max_inconclusive` times,
                       then hold (exit 3, canary left as is) or roll back (`on_inconclusive`)

Every decision is recorded with its evidence (the analysis report, the helm command lines).
The actions (helm, or the rehearsal's simulated split) and the analysis are injected, and so are
`sleep` and `clock`, so the loop is tested without a cluster, a server or real waiting.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from recsys.rollout.analysis import AnalysisReport, Verdict
from recsys.rollout.errors import HelmError, RolloutError

MAX_STEPS = 20
MAX_INTERVAL_S = 3600.0


class RolloutActions(Protocol):
    """What a step does to traffic; each returns the command lines it ran (or printed)."""

    def start(self, weight: int) -> list[str]: ...

    def set_weight(self, weight: int) -> list[str]: ...

    def promote(self) -> list[str]: ...

    def rollback(self) -> list[str]: ...


Analyzer = Callable[[float], AnalysisReport]


def parse_steps(text: str) -> tuple[int, ...]:
    """`5,25,50,100` -> (5, 25, 50, 100): strictly increasing percentages in 1..100.

    Raises:
        RolloutError: not integers, out of range, not increasing, or too many steps.
    """
    try:
        steps = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as exc:
        raise RolloutError(f"--steps must be comma-separated percentages, got {text!r}") from exc
    if not steps or len(steps) > MAX_STEPS:
        raise RolloutError(f"--steps needs 1 to {MAX_STEPS} percentages, got {text!r}")
    if any(not 1 <= s <= 100 for s in steps):
        raise RolloutError(f"--steps percentages must be within 1..100, got {text!r}")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise RolloutError(f"--steps must increase, got {text!r}")
    return steps


@dataclass(frozen=True)
class RunPolicy:
    """How the rollout proceeds.

    Attributes:
        steps: canary percentages; 100 means "promote" (stable takes the canary's version).
        interval_s: wait after each weight change before analysing.
        start: the first step starts the canary (else the canary already runs).
        max_inconclusive: extra intervals to wait when the analysis is inconclusive.
        on_inconclusive: after those, `hold` (leave the canary, exit 3) or `rollback`.
    """

    steps: tuple[int, ...]
    interval_s: float
    start: bool = False
    max_inconclusive: int = 2
    on_inconclusive: Literal["hold", "rollback"] = "hold"

    def __post_init__(self) -> None:
        if not 0 < self.interval_s <= MAX_INTERVAL_S:
            raise RolloutError(f"--interval must be within 0..{MAX_INTERVAL_S:.0f}s")
        if not 0 <= self.max_inconclusive <= 10:
            raise RolloutError("--max-inconclusive must be within 0..10")
        if self.on_inconclusive not in ("hold", "rollback"):
            raise RolloutError("--on-inconclusive must be hold or rollback")
        if self.start and self.steps and self.steps[0] == 100:
            raise RolloutError("the first step cannot be 100: start the canary at a share")


@dataclass
class Decision:
    """One logged decision: what was done, why, and the evidence."""

    at: float
    elapsed_s: float
    step: int
    weight: int
    action: str
    reason: str
    verdict: str | None = None
    attempt: int | None = None
    commands: list[str] = field(default_factory=list)
    evidence: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunResult:
    """How the rollout ended."""

    outcome: Literal["promoted", "rolled_back", "held", "completed"]
    exit_code: int
    decisions: list[Decision]
    started_at: float
    finished_at: float
    traffic_at: float | None = None
    rollback_at: float | None = None

    @property
    def time_to_rollback_s(self) -> float | None:
        """Seconds from the canary's first traffic to the rollback command."""
        if self.traffic_at is None or self.rollback_at is None:
            return None
        return self.rollback_at - self.traffic_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "traffic_at": self.traffic_at,
            "rollback_at": self.rollback_at,
            "time_to_rollback_s": self.time_to_rollback_s,
            "decisions": [d.to_dict() for d in self.decisions],
        }


def run_progressive(
    policy: RunPolicy,
    actions: RolloutActions,
    analyze: Analyzer,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    on_decision: Callable[[Decision], None] | None = None,
) -> RunResult:
    """Carry out the rollout; the first failed analysis rolls back.

    Args:
        policy: steps, interval and what to do when evidence is short.
        actions: carries out start / weight / promote / rollback.
        analyze: window (seconds) -> report; the window covers the time since the step began.
        sleep: waits (injected in tests).
        clock: Unix time (injected in tests).
        on_decision: called with each decision as it is made (logging, printing).

    Returns:
        The outcome: promoted (exit 0), completed without a 100 step (exit 0, canary left at
        the last weight), rolled_back (exit 1 after a failed analysis, 3 after inconclusive),
        held (exit 3).
    """
    started = clock()
    decisions: list[Decision] = []
    traffic_at: float | None = None

    def record(step: int, weight: int, action: str, reason: str, **extra: Any) -> Decision:
        now = clock()
        decision = Decision(now, now - started, step, weight, action, reason, **extra)
        decisions.append(decision)
        if on_decision:
            on_decision(decision)
        return decision

    def finish(outcome, code: int, rollback_at: float | None = None) -> RunResult:
        return RunResult(outcome, code, decisions, started, clock(), traffic_at, rollback_at)

    def roll_back(step: int, weight: int, reason: str, **extra: Any) -> float:
        commands = actions.rollback()
        return record(step, weight, "rollback", reason, commands=commands, **extra).at

    previous = 0
    for index, weight in enumerate(policy.steps, start=1):
        if weight == 100:
            commands = actions.promote()
            record(
                index,
                weight,
                "promote",
                f"every analysed step up to {previous}% passed",
                commands=commands,
            )
            return finish("promoted", 0)
        first = index == 1 and policy.start
        try:
            commands = actions.start(weight) if first else actions.set_weight(weight)
        except HelmError as exc:
            # The upgrade may be half-applied (a canary whose pods never got ready): take
            # traffic away from it, then report the original failure.
            try:
                roll_back(index, weight, f"{'start' if first else 'weight change'} failed: {exc}")
            except RolloutError as rollback_error:
                raise HelmError(f"{exc}; the rollback failed too: {rollback_error}") from exc
            raise
        step_started = record(
            index,
            weight,
            "start" if first else "weight",
            f"canary at {weight}%" + (f" (was {previous}%)" if previous else ""),
            commands=commands,
        ).at
        traffic_at = step_started if traffic_at is None else traffic_at
        previous = weight
        for attempt in range(1, policy.max_inconclusive + 2):
            sleep(policy.interval_s)
            try:
                report = analyze(max(1.0, clock() - step_started))
            except RolloutError as exc:
                # No evidence is not good evidence: the canary goes, the error is reported.
                roll_back(index, weight, f"analysis failed: {exc}", attempt=attempt)
                raise
            evidence = report.to_dict()
            if report.verdict is Verdict.PASS:
                record(
                    index,
                    weight,
                    "analyze",
                    report.reason,
                    verdict=report.verdict.value,
                    attempt=attempt,
                    evidence=evidence,
                )
                break
            if report.verdict is Verdict.FAIL:
                at = roll_back(
                    index,
                    weight,
                    f"analysis failed: {report.reason}",
                    verdict=report.verdict.value,
                    attempt=attempt,
                    evidence=evidence,
                )
                return finish("rolled_back", 1, at)
            more = attempt <= policy.max_inconclusive
            record(
                index,
                weight,
                "analyze",
                report.reason + ("; waiting another interval" if more else ""),
                verdict=report.verdict.value,
                attempt=attempt,
                evidence=evidence,
            )
        else:
            if policy.on_inconclusive == "rollback":
                at = roll_back(
                    index,
                    weight,
                    f"still inconclusive after {policy.max_inconclusive + 1} analyses",
                )
                return finish("rolled_back", 3, at)
            record(
                index,
                weight,
                "hold",
                f"still inconclusive after {policy.max_inconclusive + 1} analyses: canary "
                f"left at {weight}%; decide with `recsys rollout analyze`, then promote or "
                "roll back",
            )
            return finish("held", 3)
    record(
        len(policy.steps),
        previous,
        "done",
        f"every step passed; canary left at {previous}% (promote with `recsys rollout promote`)",
    )
    return finish("completed", 0)
