"""Statements every backend writes alike, given its database clock as SQL.

Each builder takes the queue's table and, where time matters, ``now`` (the backend's
clock expression, or an instant derived from it); the backends add what only their
database has (``RETURNING`` with a notification, locks) around them.

Example::

    select(Task).where(*query_conditions(Task.__table__, TaskQuery(task_type="email")))
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Select,
    Table,
    Text,
    Update,
    and_,
    case,
    false,
    func,
    literal,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)

from sqlalchemy_taskqueue.backends.base import TaskQuery
from sqlalchemy_taskqueue.status import ACTIVE_STATUSES, FINISHED_STATUSES, TaskStatus

__all__ = [
    "LEASE_CLEARED",
    "browse_tasks_statement",
    "checked_json_text",
    "failure_values",
    "insert_columns",
    "keys_at_limit_statement",
    "query_conditions",
    "recent_status_counts_statement",
    "retry_statement",
]

#: The SET clause that ends a lease.
LEASE_CLEARED: dict[str, Any] = {"lease_token": None, "lease_expires_at": None}


def insert_columns(values: Iterable[str]) -> tuple[str, ...]:
    """The table columns a row of insert parameters sets (``run_delay`` is not one),
    sorted: one cached statement per column set.

    >>> insert_columns(["type", "run_delay", "payload"])
    ('payload', 'type')
    """
    return tuple(sorted(name for name in values if name != "run_delay"))


def checked_json_text(payload: Any) -> str:
    """A payload checked already, as JSON text (as the repository's check encodes it).

    >>> checked_json_text({"to": "ana"})
    '{"to": "ana"}'
    """
    return json.dumps(payload, allow_nan=False, ensure_ascii=False)


def _search(table: Table, text: str) -> ColumnElement[bool]:
    # digits are an id, found through the primary key (an OR with the dedupe key would
    # read the whole table)
    if text.isdigit() and len(text) <= 18:
        return table.c.id == int(text)
    return table.c.dedupe_key == text


def query_conditions(table: Table, query: TaskQuery) -> list[ColumnElement[bool]]:
    """The conditions of ``query``'s filters (not its cursor or limit), as SQL.

    Example::

        conditions = query_conditions(Task.__table__, TaskQuery(task_type="email"))
    """
    c = table.c
    conditions: list[ColumnElement[bool]] = []
    if query.statuses:
        conditions.append(c.status.in_(list(query.statuses)))
    if query.task_type is not None:
        conditions.append(c.type == query.task_type)
    if query.created_after is not None:
        conditions.append(c.created_at >= query.created_after)
    if query.created_before is not None:
        conditions.append(c.created_at < query.created_before)
    for name, value in query.columns.items():
        conditions.append(c[name] == value)
    if query.search is not None:
        conditions.append(_search(table, query.search))
    return conditions


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


def recent_status_counts_statement(table: Table, *, since: Any) -> CompoundSelect[Any]:
    """``type``, ``status``, ``total``: the tasks in progress, and the tasks finished at
    or after the instant ``since`` (SQL), each read through its own partial index (the
    lease-expiry and the finished-tasks index), never the whole table.

    Example::

        stmt = recent_status_counts_statement(Task.__table__, since=func.now() - timedelta(hours=24))
    """
    c = table.c
    running = (
        select(c.type, c.status, func.count().label("total"))
        .where(c.status == TaskStatus.IN_PROGRESS)
        .group_by(c.type, c.status)
    )
    finished = (
        select(c.type, c.status, func.count().label("total"))
        .where(c.status.in_(FINISHED_STATUSES), c.completed_at >= since)
        .group_by(c.type, c.status)
    )
    return union_all(running, finished)


def failure_values(
    table: Table,
    error_message: Any,
    retry_at: ColumnElement[Any] | None,
    *,
    retry: bool,
    now: ColumnElement[Any],
    unstarted_message: str | None = None,
) -> dict[str, Any]:
    """SET clause of the atomic retry rule.

    While ``retry_count < max_retries`` the task returns to ``pending`` with
    ``retry_count + 1``, due at ``retry_at`` (the backend's backoff in SQL; ``None``:
    its ``run_at`` is kept, so it is due at once, in its old place in the queue);
    otherwise it becomes ``failed``.  Every right-hand side reads the row as it was
    before the update, so the decision is atomic.

    With ``unstarted_message``, a task whose attempt never started (``started_at`` is
    NULL: it waited in a worker for a slot) is not charged: it goes back to ``pending``
    with its ``retry_count`` unchanged and that message.

    Example::

        update(table).values(**failure_values(table, message, None, retry=True, now=func.now()))
    """
    c = table.c
    will_retry = and_(true() if retry else false(), c.retry_count < c.max_retries)
    retry_count: ColumnElement[Any] = c.retry_count + 1
    if unstarted_message is not None:
        unstarted = c.started_at.is_(None)
        will_retry = or_(unstarted, will_retry)
        retry_count = case((unstarted, c.retry_count), else_=retry_count)
        error_message = case((unstarted, literal(unstarted_message, Text)), else_=error_message)
    return {
        "status": case(
            (will_retry, literal(TaskStatus.PENDING.value)), else_=literal(TaskStatus.FAILED.value)
        ),
        "retry_count": retry_count,
        "progress": case((will_retry, 0), else_=c.progress),
        "error_message": error_message,
        "started_at": case((will_retry, null()), else_=func.coalesce(c.started_at, now)),
        "completed_at": case((will_retry, null()), else_=now),
        "run_at": case((will_retry, c.run_at if retry_at is None else retry_at), else_=c.run_at),
        **LEASE_CLEARED,
    }


def retry_statement(
    table: Table,
    *,
    task_id: int | None,
    task_type: str | None,
    matching: TaskQuery | None,
    now: ColumnElement[Any],
) -> Update:
    """Put failed tasks back in the queue, due now, with a fresh retry budget (no
    ``RETURNING``: each backend adds its own).

    With ``task_id`` only that task; otherwise every failed task (of ``task_type``, and
    matching the filters of ``matching`` when given).  A failed task whose dedupe key an
    active task holds stays failed, and of several failed tasks sharing a dedupe key
    only the newest is retried: the unique index allows one active task per key.

    Example::

        stmt = retry_statement(Task.__table__, task_id=None, task_type="webhook",
                               matching=None, now=func.now()).returning(Task.id)
    """
    c = table.c
    holder = table.alias("holder")
    duplicate_active = (
        select(holder.c.id)
        .where(
            holder.c.type == c.type,
            holder.c.dedupe_key == c.dedupe_key,
            holder.c.status.in_(ACTIVE_STATUSES),
        )
        .exists()
    )
    condition = and_(c.status == TaskStatus.FAILED, or_(c.dedupe_key.is_(None), ~duplicate_active))
    if task_id is not None:
        condition = and_(condition, c.id == task_id)
    if task_type is not None:
        condition = and_(condition, c.type == task_type)
    if matching is not None:
        condition = and_(condition, *query_conditions(table, matching))
    alone = case((c.dedupe_key.is_(None), c.id))  # tasks without a key stand alone
    ranked = (
        select(
            c.id,
            func.row_number()
            .over(partition_by=(c.type, c.dedupe_key, alone), order_by=c.id.desc())
            .label("newest_first"),
        )
        .where(condition)
        .subquery("candidates")
    )
    newest = select(ranked.c.id).where(ranked.c.newest_first == 1)
    return (
        update(table)
        # the status again on the row itself: a row changed while this statement waited
        # for its lock is rechecked against this condition (not against the subquery's)
        .where(c.id.in_(newest.scalar_subquery()), c.status == TaskStatus.FAILED)
        .values(
            status=TaskStatus.PENDING,
            retry_count=0,
            progress=0,
            run_at=now,
            started_at=None,
            completed_at=None,
            **LEASE_CLEARED,
        )
    )


def keys_at_limit_statement(table: Table, *, now: ColumnElement[Any]) -> Select[Any]:
    """Keys whose every slot is taken: ``concurrency_key``, ``slot_limit``, ``running``
    and ``waiting`` (its due pending tasks), by key.

    Example::

        rows = session.execute(keys_at_limit_statement(Task.__table__, now=func.now())).all()
    """
    from sqlalchemy_taskqueue._concurrency import key_slots_table

    c = table.c
    s = key_slots_table(table).c
    per_key = (
        select(
            s.concurrency_key,
            func.count().label("slot_limit"),
            func.count(s.task_id).label("running"),
        )
        .group_by(s.concurrency_key)
        .having(func.count(s.task_id) >= func.count())
        .subquery("per_key")
    )
    waiting = (
        select(func.count())
        .where(
            c.concurrency_key == per_key.c.concurrency_key,
            c.status == TaskStatus.PENDING,
            c.run_at <= now,
        )
        .scalar_subquery()
    )
    return select(
        per_key.c.concurrency_key,
        per_key.c.slot_limit,
        per_key.c.running,
        waiting.label("waiting"),
    ).order_by(per_key.c.concurrency_key)
