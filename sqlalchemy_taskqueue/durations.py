"""Durations as users write them: ``timedelta``, seconds, or text such as ``"7d"``.

Example::

    >>> to_seconds("lease_duration", timedelta(minutes=1))
    60.0
    >>> parse_duration("1h30m")
    datetime.timedelta(seconds=5400)
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

__all__ = ["MAX_DURATION", "Duration", "parse_duration", "to_seconds"]

#: The longest duration any setting accepts: a century keeps ``now() +/- duration``
#: well inside PostgreSQL's timestamp range.
MAX_DURATION = timedelta(days=36500)

#: A duration argument: a ``timedelta`` or a number of seconds.
Duration = timedelta | int | float

#: What a ``timedelta`` and a database interval resolve: anything shorter is zero.
_RESOLUTION = 1e-6

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def to_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Seconds in ``value``, which must be a positive ``timedelta`` or number.

    >>> to_seconds("poll_interval", 0.5)
    0.5
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be a timedelta or a number of seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{name} must be at most {MAX_DURATION.days} days, got {value!r}")
    if 0 < seconds < _RESOLUTION:
        raise ValueError(
            f"{name} must be at least a microsecond (shorter rounds to nothing), got {value!r}"
        )
    return seconds


def parse_duration(text: str) -> timedelta:
    """Parse ``"90s"``, ``"15m"``, ``"7d"``, ``"1h30m"`` or a plain number of seconds.

    >>> parse_duration("7d")
    datetime.timedelta(days=7)
    """
    cleaned = text.strip().lower().replace(" ", "")
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _PART.findall(cleaned)
        if not cleaned or "".join(number + unit for number, unit in parts) != cleaned:
            raise ValueError(
                f"invalid duration {text!r}: use a number of seconds or units like "
                "90s, 15m, 12h, 7d"
            ) from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {text!r}: must be a finite number >= 0")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"invalid duration {text!r}: must be at most {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)
