"""CPU accounting: what the whole machine and given process trees used, in CPU seconds.

On a shared machine a latency figure means little without knowing what else ran: these feed
the load test's CPU shares and the benchmark's quiet-machine checks.
"""

from __future__ import annotations

import psutil

from recsys.ops.processes import process_tree


def cores() -> int:
    """Logical cores of this machine (at least 1)."""
    return psutil.cpu_count() or 1


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores added up.

    Idle and I/O wait are not busy; guest time is left out (the kernel counts it in user too).
    """
    times = psutil.cpu_times()
    total = sum(times) - sum(getattr(times, name, 0.0) for name in ("guest", "guest_nice"))
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) of the given processes and all their descendants, each once."""
    seen: set[int] = set()
    total = 0.0
    for pid in pids:
        for process in process_tree(pid):
            if process.pid in seen:
                continue
            seen.add(process.pid)
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
    return total
