"""The SQL the SQLite backend runs, built with SQLAlchemy Core.

Times are text in one format (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC), as SQLAlchemy binds
datetimes on SQLite, so comparing two of them compares the instants; the database clock
is ``strftime(..., 'now')`` in that format, and arithmetic goes through SQLite's date
modifiers.  JSON is text.  Each builder returns a statement and runs nothing
(:mod:`._backend` runs them, several per operation where PostgreSQL needs one).

Example::

    stmt = claim_statement(Task.__table__, type_filter="one", keyed=False)
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Float,
    Insert,
    Integer,
    Table,
    Text,
    Update,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import sqlite

from sqlalchemy_taskqueue._controls import QUEUE_WIDE, controls_table
from sqlalchemy_taskqueue._schema import ACTIVE_DEDUPE_PREDICATE, CLAIM_ORDER
from sqlalchemy_taskqueue._timestamps import Timestamp
from sqlalchemy_taskqueue.backends import _portable
from sqlalchemy_taskqueue.backoff import MAX_EXPONENT, BackoffPolicy
from sqlalchemy_taskqueue.status import ACTIVE_STATUSES, FINISHED_STATUSES, TaskStatus

__all__ = [
    "CLOCK_SQL",
    "TypeFilter",
    "after",
    "before",
    "claim_statement",
    "failure_values",
    "insert_if_absent_statement",
    "insert_statement",
    "not_held",
    "now",
    "seconds_between",
    "type_filter_condition",
    "upsert",
]

#: The database clock as SQL, in the format SQLAlchemy stores datetimes in.
CLOCK_SQL = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"

#: How a claim filters by type: ``any``, ``one`` (``task_type``) or ``many`` (``task_types``).
TypeFilter = Literal["any", "one", "many"]


def now() -> ColumnElement[Any]:
    """The database clock (the same instant for every row of one statement).

    Example::

        select(now())
    """
    return literal_column(CLOCK_SQL, Timestamp)


def after(seconds: ColumnElement[Any] | float) -> ColumnElement[Any]:
    """The database clock plus ``seconds`` (an SQL expression or a number).

    Example::

        update(table).values(lease_expires_at=after(bindparam("lease_seconds")))
    """
    modifier = func.printf("%+.6f seconds", seconds)
    return func.strftime("%Y-%m-%d %H:%M:%f000", "now", modifier, type_=Timestamp)


def before(delta: timedelta) -> ColumnElement[Any]:
    """The database clock minus ``delta``.

    Example::

        table.c.completed_at < before(timedelta(days=7))
    """
    return after(-delta.total_seconds())


def seconds_between(later: Any, earlier: Any) -> ColumnElement[Any]:
    """Seconds from ``earlier`` to ``later`` (two timestamps), as a float.

    Example::

        seconds_between(table.c.completed_at, table.c.started_at)
    """
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


# --------------------------------------------------------------------------- enqueue


def _row_values(table: Table, columns: tuple[str, ...], *, delayed: bool) -> dict[str, Any]:
    values: dict[str, Any] = {name: bindparam(name, type_=table.c[name].type) for name in columns}
    if "payload" in values:  # JSON text, checked and encoded already
        values["payload"] = bindparam("payload", type_=Text)
    if delayed:
        values["run_at"] = after(bindparam("run_delay", type_=Float))
    return values


@functools.cache
def insert_statement(
    table: Table, columns: tuple[str, ...], *, delayed: bool, many: bool = False
) -> Insert:
    """Insert one task (parameters: one per name in ``columns``, plus ``run_delay`` in
    seconds when ``delayed``); returns its id.  With ``many``, executed with a list of
    parameter rows, it returns the ids in the rows' order.

    Example::

        stmt = insert_statement(Task.__table__, ("payload", "type"), delayed=False)
    """
    values = _row_values(table, columns, delayed=delayed)
    return insert(table).values(**values).returning(table.c.id, sort_by_parameter_order=many)


@functools.cache
def insert_if_absent_statement(table: Table, columns: tuple[str, ...], *, delayed: bool) -> Insert:
    """Insert one task unless an active task of its type holds its dedupe key (the
    partial unique index arbitrates); returns the new id, or no row.

    Example::

        stmt = insert_if_absent_statement(Task.__table__, ("dedupe_key", "payload", "type"), delayed=False)
    """
    values = _row_values(table, columns, delayed=delayed)
    return (
        sqlite.insert(table)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=[table.c.type, table.c.dedupe_key],
            index_where=text(ACTIVE_DEDUPE_PREDICATE),
        )
        .returning(table.c.id)
    )


def upsert(table: Table, key: str, values: dict[str, Any], updated: list[str]) -> Insert:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` setting ``updated`` from the new row.

    Example::

        upsert(controls, "task_type", {"task_type": bindparam("t"), "paused": True}, ["paused"])
    """
    stmt = sqlite.insert(table).values(**values)
    set_ = {name: stmt.excluded[name] for name in updated}
    return stmt.on_conflict_do_update(index_elements=[table.c[key]], set_=set_)


# --------------------------------------------------------------------------- claim


def type_filter_condition(table: Table, type_filter: TypeFilter) -> ColumnElement[bool]:
    """The claim's condition on ``type``.

    Example::

        type_filter_condition(Task.__table__, "one")  # type = :task_type
    """
    if type_filter == "any":
        return true()
    if type_filter == "one":
        return table.c.type == bindparam("task_type")
    return table.c.type.in_(bindparam("task_types", expanding=True))


def not_held(table: Table, *, rate_limited: bool) -> list[ColumnElement[bool]]:
    """Claims skip paused types, everything while the queue is paused, and (unless
    ``rate_limited``) the rate-limited types.

    Example::

        conditions = not_held(Task.__table__, rate_limited=False)
    """
    controls = controls_table(table)
    held = (
        controls.c.paused
        if rate_limited
        else or_(controls.c.paused, controls.c.rate_limit.is_not(None))
    )
    return [
        table.c.type.not_in(select(controls.c.task_type).where(held)),
        ~exists().where(controls.c.paused, controls.c.task_type == QUEUE_WIDE),
    ]


def due_conditions(
    table: Table, type_filter: TypeFilter, *, rate_limited: bool
) -> list[ColumnElement[bool]]:
    """The conditions every claimable task meets (pending, due, of the types asked for,
    not held by a pause or a rate limit).

    Example::

        due_conditions(Task.__table__, "any", rate_limited=False)
    """
    c = table.c
    return [
        c.status == TaskStatus.PENDING,
        c.run_at <= now(),
        type_filter_condition(table, type_filter),
        *not_held(table, rate_limited=rate_limited),
    ]


@functools.cache
def claim_statement(
    table: Table,
    *,
    type_filter: TypeFilter,
    rate_limited: bool,
    started: Literal["now", "given", "later"],
) -> Update:
    """Claim up to ``limit`` due tasks without a concurrency key, in claim order, plus
    the tasks whose ids are in ``keyed_ids`` (their slots taken already); returns every
    column of the claimed rows.

    Parameters: ``limit``, ``keyed_ids`` (a list, maybe empty), ``lease_seconds``,
    ``owner``, ``token`` and the type parameter.  ``started`` says what ``started_at``
    becomes: ``now``; ``given`` (parameter ``started_at``: the instant a rate-limited
    claim counted its starts at); ``later``, NULL (a prefetching claim records the
    first ones afterwards).

    Example::

        stmt = claim_statement(Task.__table__, type_filter="any", rate_limited=False, started="now")
    """
    c = table.c
    conditions = due_conditions(table, type_filter, rate_limited=rate_limited)
    plain = (
        select(c.id)
        .where(*conditions, c.concurrency_key.is_(None))
        .order_by(*(c[name] for name in CLAIM_ORDER))
        .limit(bindparam("limit", type_=Integer))
    )
    keyed = c.id.in_(bindparam("keyed_ids", expanding=True))
    return (
        update(table)
        .where(or_(c.id.in_(plain.scalar_subquery()), keyed))
        .values(
            status=TaskStatus.IN_PROGRESS,
            started_at={
                "now": now(),
                "given": bindparam("started_at", type_=Timestamp),
                "later": null(),
            }[started],
            completed_at=None,
            lease_owner=bindparam("owner", type_=c.lease_owner.type),
            lease_token=bindparam("token", type_=c.lease_token.type),
            lease_expires_at=after(bindparam("lease_seconds", type_=Float)),
        )
        .returning(*c)
    )


# --------------------------------------------------------------------------- outcomes


def failure_values(
    table: Table,
    error_message: Any,
    backoff: BackoffPolicy | None,
    *,
    retry: bool,
    unstarted_message: str | None = None,
) -> dict[str, Any]:
    """SET clause of the retry rule (as on PostgreSQL: back to ``pending`` with backoff
    while retries remain, else ``failed``; an unstarted attempt is not charged when
    ``unstarted_message`` is given).

    Example::

        update(table).values(**failure_values(table, bindparam("message"), DEFAULT_BACKOFF, retry=True))
    """
    c = table.c
    retry_at: ColumnElement[Any] | None = None
    if backoff is not None:
        exponent = func.min(c.retry_count + 1, MAX_EXPONENT)
        # random() is a signed 64-bit integer: scaled to [0, 1)
        unit_random = (func.random() / 18446744073709551616.0) + 0.5
        retry_at = after(
            func.min(
                backoff.cap_seconds,
                backoff.base_seconds
                * func.power(2.0, exponent)
                * (1 + backoff.jitter * unit_random),
            )
        )
    return _portable.failure_values(
        table,
        error_message,
        retry_at,
        retry=retry,
        now=now(),
        unstarted_message=unstarted_message,
    )


def finished_before(table: Table, older_than: timedelta) -> ColumnElement[bool]:
    """Finished tasks that finished more than ``older_than`` ago.

    Example::

        select(func.count()).where(finished_before(Task.__table__, timedelta(days=7)))
    """
    c = table.c
    return and_(c.status.in_(FINISHED_STATUSES), c.completed_at < before(older_than))


def active(table: Table) -> ColumnElement[bool]:
    """Pending or in progress.

    Example::

        select(Task.id).where(active(Task.__table__))
    """
    return table.c.status.in_(ACTIVE_STATUSES)
