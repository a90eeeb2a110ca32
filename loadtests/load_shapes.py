"""Load shapes as pure functions of elapsed time: how many simulated users, started how fast.

The locustfile's `LoadTestShape` asks `users_at` once a second; keeping the arithmetic here lets
the tests check every shape without Locust. Standard library only (see gate_checks.py for why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SHAPES = ("constant", "step", "spike", "soak")

# Run length when none is given (--run-time), per shape, in seconds.
DEFAULT_RUN_TIME_S = {"constant": 60.0, "step": 300.0, "spike": 120.0, "soak": 1800.0}

# Spike: the baseline is this share of --users; the spike holds all of them in this part of the run.
SPIKE_BASELINE_SHARE = 0.2
SPIKE_WINDOW = (0.4, 0.6)


@dataclass(frozen=True)
class Target:
    """What the runner should have right now."""

    users: int
    spawn_rate: float


def users_at(
    shape: str, elapsed_s: float, users: int, spawn_rate: float, run_time_s: float, steps: int = 5
) -> Target | None:
    """The target at `elapsed_s` seconds into the run, or None once the run is over.

    Args:
        shape: `constant` (CI gate), `step` (capacity search: `steps` equal increments up to
            `users`), `spike` (a baseline, then every user at once for a fifth of the run, then
            the baseline again) or `soak` (constant, meant for long runs).
        elapsed_s: seconds since the shape started.
        users: the peak number of simulated users.
        spawn_rate: users started per second when ramping.
        run_time_s: the length of the whole run.
        steps: number of steps of the step shape.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if users < 1 or spawn_rate <= 0 or run_time_s <= 0 or steps < 1:
        raise ValueError("users, spawn rate, run time and steps must be positive")
    if elapsed_s >= run_time_s:
        return None
    if shape in ("constant", "soak"):
        return Target(users, spawn_rate)
    if shape == "step":
        step = min(steps - 1, int(elapsed_s // (run_time_s / steps)))
        return Target(max(1, math.ceil(users * (step + 1) / steps)), spawn_rate)
    baseline = max(1, round(users * SPIKE_BASELINE_SHARE))
    start, end = (run_time_s * edge for edge in SPIKE_WINDOW)
    if start <= elapsed_s < end:
        return Target(users, max(spawn_rate, float(users)))  # the whole spike within a second
    return Target(baseline, max(spawn_rate, float(users)))
