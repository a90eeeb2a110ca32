"""The gateway's circuit breaker with concurrent calls (pure logic, no server).

The gateway has many stage calls in flight at once. When the breaker opens, calls that were let
through before are still running; how they end must not undo the opening. Under the spike
scenario's load the gateway's log showed the ranking breaker going open -> closed within the
same millisecond, again and again, because a late success closed it.
"""

from __future__ import annotations

from recsys.serving.pipeline import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def opened_with_calls_in_flight(in_flight: int = 3) -> tuple[CircuitBreaker, FakeClock]:
    """A breaker that opened on 5 failures while `in_flight` more calls were running."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout_s=2.0, clock=clock)
    assert all(breaker.allow() for _ in range(5 + in_flight))
    for _ in range(5):
        breaker.record_failure()
    assert breaker.state == OPEN
    return breaker, clock


def test_a_late_success_does_not_close_an_open_circuit():
    breaker, clock = opened_with_calls_in_flight()
    breaker.record_success()  # a call let through before the opening ends well
    assert breaker.state == OPEN
    clock.now += 1.0
    assert not breaker.allow(), "calls must fail at once for the whole reset period"


def test_a_late_failure_does_not_extend_the_open_period():
    breaker, clock = opened_with_calls_in_flight()
    clock.now += 1.5
    breaker.record_failure()  # a call from before the opening times out late
    clock.now += 0.6  # 2.1 s after the opening
    assert breaker.allow() and breaker.state == HALF_OPEN


def test_half_open_lets_one_probe_through_and_its_success_closes():
    breaker, clock = opened_with_calls_in_flight(in_flight=0)
    clock.now += 2.0
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow(), "a second probe while the first is running"
    breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow()


def test_a_failed_probe_opens_again_for_a_full_period():
    breaker, clock = opened_with_calls_in_flight(in_flight=0)
    clock.now += 2.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN
    clock.now += 1.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
