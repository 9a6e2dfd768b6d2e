"""The PostgreSQL statements that read tasks for people: a page of tasks by filter, and
outcomes over time (the dashboard's task list and chart).

Both read without locking, so browsing never holds up a claim or an outcome.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import CompoundSelect, Select, Table, func, select

from sqlalchemy_taskqueue.backends import _portable
from sqlalchemy_taskqueue.backends.base import TaskQuery
from sqlalchemy_taskqueue.status import FINISHED_STATUSES, TaskStatus

__all__ = [
    "browse_tasks_statement",
    "outcome_timeline_statement",
    "recent_status_counts_statement",
]


def browse_tasks_statement(table: Table, query: TaskQuery) -> Select[Any]:
    """See :func:`sqlalchemy_taskqueue.backends._portable.browse_tasks_statement`.

    Example::

        stmt = browse_tasks_statement(Task.__table__, TaskQuery(statuses=("failed",)))
    """
    return _portable.browse_tasks_statement(table, query)


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
    within ``window`` (see :func:`sqlalchemy_taskqueue.backends._portable.recent_status_counts_statement`).

    Example::

        stmt = recent_status_counts_statement(Task.__table__, window=timedelta(hours=24))
    """
    return _portable.recent_status_counts_statement(table, since=func.now() - window)
