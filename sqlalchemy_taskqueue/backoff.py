"""Retry delay policy.

A failed attempt with retries left goes back to ``pending`` with ``run_at`` pushed into
the future; workers never sleep for backoff.  The delay after the *n*-th failure
(``retry_count`` already incremented to *n*) is::

    min(cap, base * 2 ** n * (1 + jitter * random()))

so by default 2 s, 4 s, 8 s ... with up to 25 % extra jitter (never less than the
un-jittered delay) and at most one hour.  The queue evaluates this expression in the
database, inside the same ``UPDATE`` that records the failure, so the decision is atomic.

Example::

    >>> policy = BackoffPolicy(base_seconds=1.0, cap_seconds=600.0, jitter=0.25)
    >>> policy.delay_bounds(3)
    (8.0, 10.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_BACKOFF", "BackoffPolicy"]

#: Exponents above this would overflow a double; the cap is far smaller anyway.
MAX_EXPONENT = 62
#: The longest delay a policy may use (ten years), far inside PostgreSQL's date range.
MAX_DELAY_SECONDS = 10 * 365 * 86400.0


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff with jitter and a cap.

    :param base_seconds: delay multiplier; the *n*-th retry waits ``base * 2**n`` seconds.
    :param cap_seconds: the longest delay ever used.
    :param jitter: fraction of extra random delay, ``0 <= jitter <= 1``; jitter only ever
        lengthens the delay so ``2**n * base`` stays a lower bound.

    Example::

        gentle = BackoffPolicy(base_seconds=5.0, cap_seconds=600.0, jitter=0.1)
        worker = Worker(sessionmaker(engine), Task, handlers, backoff=gentle)
    """

    base_seconds: float = 1.0
    cap_seconds: float = 3600.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        for name in ("base_seconds", "cap_seconds", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.jitter > 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        for name in ("base_seconds", "cap_seconds"):
            if getattr(self, name) > MAX_DELAY_SECONDS:
                raise ValueError(
                    f"{name} must be at most {MAX_DELAY_SECONDS:.0f} s (ten years), "
                    f"got {getattr(self, name)!r}"
                )

    def delay_bounds(self, retry_count: int) -> tuple[float, float]:
        """Shortest and longest delay (seconds) after the failure that set ``retry_count``.

        >>> BackoffPolicy().delay_bounds(1)
        (2.0, 2.5)
        """
        raw = self.base_seconds * 2.0 ** min(retry_count, MAX_EXPONENT)
        return min(self.cap_seconds, raw), min(self.cap_seconds, raw * (1 + self.jitter))


#: The policy workers and repositories use unless given one: 2 s, 4 s, 8 s ... up to an hour.
DEFAULT_BACKOFF = BackoffPolicy()
