"""Test-only fault injection (latency, errors) driven by the serving settings."""

from __future__ import annotations

import asyncio
import random

from recsys.serving.settings import ServingSettings


class InjectedFault(RuntimeError):
    """A failure produced on purpose by the fault-injection settings."""


async def inject_faults(settings: ServingSettings) -> None:
    """Apply the test-only latency and error settings (no-ops at their defaults)."""
    if settings.fault_latency_ms > 0:
        await asyncio.sleep(settings.fault_latency_ms / 1000.0)
    if settings.fault_error_rate > 0 and random.random() < settings.fault_error_rate:
        raise InjectedFault("injected fault (RECSYS_FAULT_ERROR_RATE)")
