"""A schedule as operators see it: its row, read back, and whether a worker carries it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = ["CARRY_INTERVAL", "ORPHANED_AFTER", "ScheduleState"]

#: A schedule no worker has recorded carrying for this long is orphaned: it was removed
#: from the code, or no worker that declares it runs.  Workers record the schedules they
#: carry when they start and every :data:`CARRY_INTERVAL` after.
ORPHANED_AFTER = timedelta(minutes=5)
#: How often a running worker records the schedules it carries.
CARRY_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class ScheduleState:
    """One schedule's row: its definition, when it fires next, what it last enqueued.

    :ivar name: the schedule's unique name.
    :ivar task_type: the type of the tasks it enqueues.
    :ivar spec: its cron expression, or ``every <seconds>s``.
    :ivar timezone: the IANA time zone its cron expression is read in.
    :ivar missed: ``latest``, ``skip`` or ``all``.
    :ivar paused: whether operators paused it.
    :ivar next_fire_at: the next fire time (``None`` before a worker first recorded it).
    :ivar last_fire_at: the fire time of the last task it enqueued.
    :ivar last_task_id: that task's id.
    :ivar carried_at: when a worker last recorded carrying it.
    :ivar orphaned: no worker has carried it for :data:`ORPHANED_AFTER`: it does not fire.

    Example::

        [s.name for s in repo.schedules() if s.orphaned]
    """

    name: str
    task_type: str
    spec: str
    timezone: str
    missed: str
    paused: bool
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    last_task_id: int | None
    carried_at: datetime | None
    orphaned: bool

    @classmethod
    def from_row(cls, row: Any, now: datetime) -> ScheduleState:
        """The state of a schedules table row, judged at the database clock ``now``.

        Example::

            ScheduleState.from_row(row, backend.clock(session))
        """
        every = row.every_seconds
        spec = row.cron if row.cron is not None else f"every {every:g}s"
        carried = row.carried_at is not None and now - row.carried_at < ORPHANED_AFTER
        return cls(
            name=row.name,
            task_type=row.task_type,
            spec=spec,
            timezone=row.timezone,
            missed=row.missed,
            paused=bool(row.paused),
            next_fire_at=row.next_fire_at,
            last_fire_at=row.last_fire_at,
            last_task_id=row.last_task_id,
            carried_at=row.carried_at,
            orphaned=not carried,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (times as ISO 8601 text).

        Example::

            json.dumps([s.as_dict() for s in repo.schedules()])
        """
        values: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            values[name] = value.isoformat() if isinstance(value, datetime) else value
        return values
