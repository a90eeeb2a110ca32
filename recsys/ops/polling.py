"""Waiting for a condition, bounded in time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    condition: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"
) -> float:
    """Poll `condition()` until true; returns the time.time() it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")
