"""Latency summaries shared by the sections."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def summarize_ms(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99, mean and max of latencies in milliseconds (rounded to 10 µs)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    return {
        "count": int(values.size),
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(values.mean()), 3),
        "max": round(float(values.max()), 3),
    }
