"""The PostgreSQL statements that read tasks for people: a page of tasks by filter, and
outcomes over time (the dashboard's task list and chart).

Both read without locking, so browsing never holds up a claim or an outcome.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import CompoundSelect, Select, Table, func, select, union_all

from sqlalchemy_taskqueue.backends._filters import query_conditions
from sqlalchemy_taskqueue.backends.base import TaskQuery
from sqlalchemy_taskqueue.status import FINISHED_STATUSES, TaskStatus

__all__ = [
    "browse_tasks_statement",
    "outcome_timeline_statement",
    "recent_status_counts_statement",
]


def browse_tasks_statement(table: Table, query: TaskQuery) -> Select[Any]:
    """Every column of the tasks ``query`` selects, newest first (by id: the primary key
    read backwards, so a page costs its own rows whatever the table holds below the
    cursor).

    Example::

        stmt = browse_tasks_statement(Task.__table__, TaskQuery(statuses=("failed",)))
    """
    c = table.c
    conditions = query_conditions(table, query)
    if query.before_id is not None:
        conditions.append(c.id < query.before_id)
    return select(table).where(*conditions).order_by(c.id.desc()).limit(query.limit)


def outcome_timeline_statement(
    table: Table, *, window: timedelta, bucket: timedelta
) -> Select[Any]:
    """Tasks finished within ``window`` per ``bucket``: ``bucket_start``, ``completed``,
    ``failed`` (read through the finished-tasks index).

    Example::

        stmt = outcome_timeline_statement(
            Task.__table__, window=timedelta(hours=1), bucket=timedelta(minutes=5)
        )
    """
    c = table.c
    seconds = int(bucket.total_seconds())
    epoch = func.extract("epoch", c.completed_at)
    start = func.to_timestamp(func.floor(epoch / seconds) * seconds).label("bucket_start")
    return (
        select(
            start,
            func.count().filter(c.status == TaskStatus.COMPLETED).label("completed"),
            func.count().filter(c.status == TaskStatus.FAILED).label("failed"),
        )
        .where(c.status.in_(FINISHED_STATUSES), c.completed_at >= func.now() - window)
        .group_by(start)
        .order_by(start)
    )


def recent_status_counts_statement(table: Table, *, window: timedelta) -> CompoundSelect[Any]:
    """``type``, ``status``, ``total``: the tasks in progress, and the tasks finished
    within ``window``, each read through its own partial index (the lease-expiry and the
    finished-tasks index), never the whole table.

    Example::

        stmt = recent_status_counts_statement(Task.__table__, window=timedelta(hours=24))
    """
    c = table.c
    running = (
        select(c.type, c.status, func.count().label("total"))
        .where(c.status == TaskStatus.IN_PROGRESS)
        .group_by(c.type, c.status)
    )
    finished = (
        select(c.type, c.status, func.count().label("total"))
        .where(c.status.in_(FINISHED_STATUSES), c.completed_at >= func.now() - window)
        .group_by(c.type, c.status)
    )
    return union_all(running, finished)
