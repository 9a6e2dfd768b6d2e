"""Durations as users write them: parsed or refused with a ValueError."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sqlalchemy_taskqueue.durations import MAX_DURATION, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", timedelta(seconds=90)), ("1h30m", timedelta(minutes=90)), ("36500d", MAX_DURATION)],
)
def test_durations_are_parsed(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["1e20", "99999999999999d", "36501d", "5000000w", "-1s", "7 days"])
def test_durations_out_of_range_or_malformed_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
