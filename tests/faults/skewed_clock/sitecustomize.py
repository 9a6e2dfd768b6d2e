"""Loaded by Python at start-up when this folder is on ``PYTHONPATH``: moves the
process's wall clock by ``TASKQUEUE_TEST_CLOCK_SKEW`` seconds, as a host with a wrong
clock would have it (``time.time`` and ``datetime.now``; monotonic time is unaffected,
as on a real host)."""

from __future__ import annotations

import datetime
import os
import time

_SKEW = float(os.environ.get("TASKQUEUE_TEST_CLOCK_SKEW", "0"))
_real_time, _real_time_ns = time.time, time.time_ns
time.time = lambda: _real_time() + _SKEW
time.time_ns = lambda: _real_time_ns() + int(_SKEW * 1e9)


class _SkewedDateTime(datetime.datetime):
    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> _SkewedDateTime:
        return super().now(tz) + datetime.timedelta(seconds=_SKEW)

    @classmethod
    def utcnow(cls) -> _SkewedDateTime:
        return cls.now(datetime.timezone.utc).replace(tzinfo=None)


datetime.datetime = _SkewedDateTime  # type: ignore[misc]
