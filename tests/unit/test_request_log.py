"""What the resilience tests count as a dropped call (loadtests.request_log.dropped_calls)."""

from loadtests.request_log import dropped_calls


def _answer(t: float, *reasons: str) -> dict:
    return {"t": t, "reasons": list(reasons)}


def test_timeouts_and_the_breaker_they_open_are_not_drops():
    records = [_answer(1, "ranking:timeout"), _answer(2, "ranking:circuit_open"), _answer(3)]
    assert dropped_calls(records) == []


def test_an_outright_failure_and_the_breaker_it_opens_are_drops():
    failed, refused = _answer(1, "ranking:unavailable"), _answer(2, "ranking:circuit_open")
    assert dropped_calls([refused, failed]) == [failed, refused]  # in time order


def test_a_breaker_refusal_with_no_failure_before_it_is_a_drop():
    assert dropped_calls([_answer(1, "retrieval:circuit_open")]) == [
        _answer(1, "retrieval:circuit_open")
    ]


def test_stages_are_judged_apart():
    records = [_answer(1, "retrieval:timeout"), _answer(2, "ranking:circuit_open")]
    assert dropped_calls(records) == [records[1]]
