"""Durations as people type them: one parser for every option that takes one."""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
EXAMPLES = "90, 90s, 500ms, 15m, 1m30s, 1h30m"


class DurationError(ValueError):
    """The text is not a positive duration; the message quotes it and shows the accepted forms."""


def parse_duration(text: str | float, maximum_s: float | None = None) -> float:
    """Seconds of a duration.

    Accepted: a number of seconds (`90`, `2.5`, or an int/float), or one or more
    `<number><unit>` parts with units `h`, `m`, `s`, `ms` and no spaces (`90s`, `500ms`, `15m`,
    `1m30s`, `1h30m`). This is Locust's `--run-time` format plus `ms` and bare seconds.

    Args:
        text: the duration as typed (or a number of seconds).
        maximum_s: the largest duration allowed, if any.

    Returns:
        The duration in seconds, greater than 0.

    Raises:
        DurationError: the text is not a duration, not positive, or above `maximum_s`.
    """
    if isinstance(text, bool):
        raise DurationError(f"not a duration: {text!r} (e.g. {EXAMPLES})")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", raw):
            seconds = float(raw)
        else:
            parts = _PART.findall(raw)
            if not parts or "".join(n + u for n, u in parts) != raw:
                raise DurationError(f"not a duration: {text!r} (e.g. {EXAMPLES})")
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not seconds > 0 or math.isinf(seconds):
        raise DurationError(f"a duration must be positive, got {text!r} (e.g. {EXAMPLES})")
    if maximum_s is not None and seconds > maximum_s:
        raise DurationError(f"a duration must be at most {maximum_s:g} s, got {text!r}")
    return seconds
