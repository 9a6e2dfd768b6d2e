"""Firing schedules: exactly one task per (schedule, fire time), with no leader.

Every worker that carries a schedule may fire it.  A fire happens in one transaction
that locks the schedule's row (``FOR UPDATE SKIP LOCKED``), enqueues the task (or tasks,
for missed fires) and moves the row's ``next_fire_at`` past the database clock, then
commits: a second worker looking at the same moment skips the locked row, and one
looking after the commit finds the schedule no longer due.  A worker killed in the
middle leaves no trace (its transaction rolls back), so the next worker to look fires
the schedule.  Nothing here runs on the claim path: a worker fires from its supervisor
when the earliest fire time it knows of has come.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue._validation import RUN_AT_PAST_LIMIT
from sqlalchemy_taskqueue.backends.base import Backend
from sqlalchemy_taskqueue.repository import TaskRepository
from sqlalchemy_taskqueue.status import TaskStatus

from ._schedule import Schedule, schedule_columns
from ._table import schedules_table

__all__ = ["FireReport", "fire_due_schedules", "sync_schedules"]

_ACTIVE = {TaskStatus.PENDING.value, TaskStatus.IN_PROGRESS.value}
#: A fire older than this is enqueued to run at once (``run_at`` now) rather than at its
#: fire time, which the queue would refuse as too far in the past.
_OLDEST_RUN_AT = RUN_AT_PAST_LIMIT - timedelta(hours=1)


@dataclass(frozen=True)
class FireReport:
    """What one firing turn did.

    :ivar enqueued: ``(schedule name, fire time, task id)`` of each task enqueued.
    :ivar held_back: ``(schedule name, fire time, task id)`` of fires not enqueued because
        the schedule's previous task was still pending or running.
    :ivar next_fire_at: the earliest fire time to come among the carried schedules
        (``None``: none, all paused).
    :ivar now: the database clock.
    :ivar failed: ``(schedule name, error)`` of schedules whose fire failed (rolled back
        alone; they stay due and are tried again at the next turn).

    Example::

        report = fire_due_schedules(repo, schedules)
        wait = (report.next_fire_at - report.now).total_seconds()
    """

    enqueued: list[tuple[str, datetime, int]]
    held_back: list[tuple[str, datetime, int]]
    next_fire_at: datetime | None
    now: datetime
    failed: list[tuple[str, BaseException]] = field(default_factory=list)


def sync_schedules(repo: TaskRepository[Any], schedules: Sequence[Schedule]) -> None:
    """Record the schedules a worker carries in the schedules table (in the
    repository's session; the caller commits): their definitions, that a worker
    carries them now, and for a new schedule (or one whose timing changed) its next
    fire time by the database clock.

    Example::

        sync_schedules(repo, [make_schedule("report", cron="0 3 * * *")])
    """
    if not schedules:
        return
    backend, session, table = _parts(repo)
    now = backend.clock(session)
    rows = [  # by name: every worker locks the rows in one order (no deadlock)
        {"name": schedule.name, "next_fire_at": schedule.next_fire(now), **schedule.definition()}
        for schedule in sorted(schedules, key=lambda schedule: schedule.name)
    ]
    backend.sync_schedules(session, table, rows)


def fire_due_schedules(repo: TaskRepository[Any], schedules: Mapping[str, Schedule]) -> FireReport:
    """Fire the due ones among ``schedules`` (by name), in the repository's session:
    the caller commits, and the fires and their tasks commit together.

    Example::

        with Session(engine) as session, session.begin():
            report = fire_due_schedules(TaskRepository(session, Task), {"report": schedule})
    """
    backend, session, table = _parts(repo)
    names = sorted(schedules)
    enqueued: list[tuple[str, datetime, int]] = []
    held_back: list[tuple[str, datetime, int]] = []
    if not names:
        return FireReport(enqueued, held_back, None, backend.clock(session))
    now = backend.clock(session)
    failed: list[tuple[str, BaseException]] = []
    for row in backend.due_schedules(session, table, names):
        schedule = schedules[row.name]
        try:
            with session.begin_nested():  # one schedule that cannot fire holds back no other
                fired, waiting = _fire(repo, schedule, row, now)
        except Exception as exc:  # rolled back to the savepoint: left due, tried next turn
            failed.append((schedule.name, exc))
            continue
        enqueued += fired
        held_back += waiting
    soonest, now = backend.next_fire(session, table, names)
    return FireReport(enqueued, held_back, soonest, now, failed)


def _fire(
    repo: TaskRepository[Any], schedule: Schedule, row: Any, now: datetime
) -> tuple[list[tuple[str, datetime, int]], list[tuple[str, datetime, int]]]:
    """Enqueue the due fires of one locked schedule row and record them: the fires
    enqueued and those held back."""
    backend, session, table = _parts(repo)
    enqueued: list[tuple[str, datetime, int]] = []
    held_back: list[tuple[str, datetime, int]] = []
    last_fire, last_task = row.last_fire_at, row.last_task_id
    # no pile-up: while the last fire's task is pending or running, fires wait
    blocking = None if schedule.overlap else _active(backend, session, repo, last_task)
    for fire in schedule.due_fires(row.next_fire_at, now):
        if blocking is not None:
            held_back.append((schedule.name, fire, blocking))
            continue
        task_id, created = _enqueue_fire(repo, schedule, fire, now)
        if not created:  # this very fire is enqueued already (its task is active)
            held_back.append((schedule.name, fire, task_id))
            continue
        enqueued.append((schedule.name, fire, task_id))
        last_fire, last_task = fire, task_id
        if not schedule.overlap:
            blocking = task_id
    backend.record_fire(
        session,
        table,
        schedule.name,
        next_fire_at=schedule.next_fire(now),
        last_fire_at=last_fire,
        last_task_id=last_task,
    )
    return enqueued, held_back


def _enqueue_fire(
    repo: TaskRepository[Any], schedule: Schedule, fire: datetime, now: datetime
) -> tuple[int, bool]:
    run_at = fire if now - fire < _OLDEST_RUN_AT else now
    return repo.enqueue_if_not_exists(
        schedule.task_type,
        schedule.payload,
        dedupe_key=schedule.dedupe_key(fire),
        run_at=run_at,
        **schedule_columns(schedule),
    )


def _active(
    backend: Backend, session: Session, repo: TaskRepository[Any], task_id: int | None
) -> int | None:
    """``task_id`` if that task is pending or running, else ``None``."""
    if task_id is None:
        return None
    found = backend.diagnose(session, repo.model.__table__, task_id)
    return task_id if found is not None and found[0] in _ACTIVE else None


def _parts(repo: TaskRepository[Any]) -> tuple[Backend, Session, Table]:
    return repo.backend, repo.session, schedules_table(repo.model.__table__)
