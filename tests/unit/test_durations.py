"""recsys.ops.durations: the one duration parser of the CLI, the load tests and the soak test."""

from __future__ import annotations

import pytest

from recsys.ops.durations import DurationError, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("2.5", 2.5),
        ("90s", 90),
        ("500ms", 0.5),
        ("15m", 900),
        ("2h", 7200),
        ("1m30s", 90),
        ("1h30m", 5400),
        (" 5M ", 300),
        (30, 30),
        (1.5, 1.5),
    ],
)
def test_every_documented_form(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "0", "0s", "-5m", "m", "2x", "1m30", "1m 30s", "ten minutes", "inf", True]
)
def test_anything_else_is_one_clear_error(text):
    with pytest.raises(DurationError, match="duration") as error:
        parse_duration(text)
    assert "e.g." in str(error.value)  # says what would have been accepted


def test_a_maximum_is_enforced():
    assert parse_duration("24h", maximum_s=86400) == 86400
    with pytest.raises(DurationError, match="at most 86400 s"):
        parse_duration("25h", maximum_s=86400)


def test_it_is_a_value_error_for_argparse_and_callers():
    assert issubclass(DurationError, ValueError)
