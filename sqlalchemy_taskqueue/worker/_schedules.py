"""A worker's periodic schedules: when to fire them, and what firing did.

The supervisor (not the claim loop) fires: it wakes when the earliest fire time of the
schedules the worker carries has come, runs one transaction that fires whatever is due
(:func:`~sqlalchemy_taskqueue.scheduling._firing.fire_due_schedules`) and sleeps until the
next fire time the database reports.  Every :data:`CARRY_INTERVAL` (and at the first
turn) the same transaction records the schedules' definitions and that this worker
carries them.  A claim never pays for any of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue._messages import error_line
from sqlalchemy_taskqueue._validation import require_app_columns
from sqlalchemy_taskqueue.repository import TaskRepository
from sqlalchemy_taskqueue.scheduling._firing import (
    FireReport,
    fire_due_schedules,
    sync_schedules,
)
from sqlalchemy_taskqueue.scheduling._schedule import Schedule
from sqlalchemy_taskqueue.scheduling._state import CARRY_INTERVAL

__all__ = ["ScheduleKeeper"]

logger = logging.getLogger("sqlalchemy_taskqueue.worker")

#: After a firing turn fails (the database is away), the next one is tried this much
#: later, doubling up to :data:`_RETRY_MAX`.
_RETRY_FIRST = 0.5
_RETRY_MAX = 30.0
#: A schedule still due after a turn is being fired by another worker (its row was
#: locked); look again this much later rather than at once.
_PEER_FIRING = 0.2


class ScheduleKeeper:
    """The schedules one worker carries, and when its supervisor fires them next.

    Example::

        keeper = ScheduleKeeper(registry.schedules, "Task", Task.__table__)
        if keeper.due(time.monotonic()):
            report = run_in_a_transaction(keeper.body(repository_for))
            keeper.fired(report)
    """

    def __init__(self, schedules: Iterable[Schedule], model_name: str, table: Table) -> None:
        self.schedules: Mapping[str, Schedule] = {s.name: s for s in schedules}
        for schedule in self.schedules.values():
            try:
                require_app_columns(model_name, table, schedule.columns)
            except TypeError as exc:
                raise TypeError(f"schedule {schedule.name!r}: {exc}") from None
        self._next_turn = 0.0
        self._next_carry = 0.0
        self._carrying = False
        self._failures = 0

    def __bool__(self) -> bool:
        return bool(self.schedules)

    def restart(self) -> None:
        """A new run: fire and record carrying at the first turn."""
        self._next_turn = self._next_carry = 0.0
        self._failures = 0

    def due(self, now: float) -> bool:
        """Whether a firing turn is due at monotonic time ``now``."""
        return bool(self.schedules) and now >= self._next_turn

    def seconds_until_due(self, now: float) -> float:
        """Seconds from monotonic ``now`` to the next firing turn (``inf``: none)."""
        if not self.schedules:
            return float("inf")
        return max(self._next_turn - now, 0.0)

    def body(
        self, repository: Callable[[Session], TaskRepository[Any]]
    ) -> Callable[[Session], FireReport]:
        """The transaction body of one firing turn (records carrying when that is due)."""
        carry = self._carrying = time.monotonic() >= self._next_carry
        schedules = self.schedules

        def fire(session: Session) -> FireReport:
            repo = repository(session)
            if carry:
                sync_schedules(repo, list(schedules.values()))
            return fire_due_schedules(repo, schedules)

        return fire

    def fired(self, report: FireReport) -> None:
        """Log what a committed turn did and plan the next one."""
        if self._carrying:  # recorded now that it committed (a failed turn carries again)
            self._next_carry = time.monotonic() + CARRY_INTERVAL.total_seconds()
        for name, exc in report.failed:
            logger.warning(
                "schedule.fire_failed name=%s (tried again next turn): %s", name, error_line(exc)
            )
        if self._failures:
            logger.info("schedule.firing_resumed after=%d failed turns", self._failures)
        self._failures = 0
        for name, fire, task_id in report.enqueued:
            logger.info(
                "schedule.fired name=%s fire_at=%s task=%d", name, fire.isoformat(), task_id
            )
        for name, fire, task_id in report.held_back:
            logger.info(
                "schedule.held_back name=%s fire_at=%s (task %d is still pending or running)",
                name,
                fire.isoformat(),
                task_id,
            )
        now = time.monotonic()
        until = self._next_carry - now
        if report.next_fire_at is not None:
            until = min(until, (report.next_fire_at - report.now).total_seconds())
        self._next_turn = now + (until if until > 0 else _PEER_FIRING)

    def failed(self, exc: BaseException, *, from_database: bool) -> None:
        """A turn that did not commit (nothing of it happened): try again later.
        ``from_database``: the database is away or refused it (else a bug: its traceback
        is logged)."""
        self._failures += 1
        delay = min(_RETRY_FIRST * 2 ** (self._failures - 1), _RETRY_MAX)
        if self._failures == 1:
            logger.warning(
                "schedule.firing_failed (will retry): %s",
                error_line(exc),
                exc_info=not from_database,
            )
        self._next_turn = time.monotonic() + delay
