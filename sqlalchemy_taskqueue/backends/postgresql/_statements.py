"""Every SQL statement the PostgreSQL backend runs, built with SQLAlchemy Core.

``FOR UPDATE SKIP LOCKED``, ``INSERT ... ON CONFLICT`` on the partial unique index,
interval arithmetic, ``jsonb`` containment, arrays through ``unnest()`` and
``pg_notify`` are written here.  Each builder takes the queue's
:class:`~sqlalchemy.schema.Table` and plain values and returns an executable statement; it
runs nothing (:mod:`._backend` runs them).

All times come from the database clock (``now()``), so workers on machines with skewed
clocks agree on leases and ``run_at``.

The statements can be compiled without a database, which is how their shape is tested::

    stmt = claim_statement(Task.__table__, type_filter="one")
    sql = str(stmt.compile(dialect=postgresql.psycopg2.dialect()))
    assert "FOR UPDATE SKIP LOCKED" in sql

Hot statements (claim, insert, complete, fail, progress, heartbeat, release) are built
once per table and variant (``functools.cache``) with bind parameters, and executed with
the values as parameters; batches pass arrays through ``unnest()``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from sqlalchemy import (
    ARRAY,
    CTE,
    BigInteger,
    ColumnElement,
    Delete,
    Float,
    Insert,
    Integer,
    Interval,
    Select,
    SmallInteger,
    Table,
    Text,
    Update,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import ColumnDefault
from sqlalchemy.sql.dml import ReturningDelete

from sqlalchemy_taskqueue._controls import QUEUE_WIDE, controls_table
from sqlalchemy_taskqueue._schema import (
    ACTIVE_DEDUPE_PREDICATE,
    CLAIM_ORDER,
    UNSTARTED_RESCUE,
)
from sqlalchemy_taskqueue.backends import _portable
from sqlalchemy_taskqueue.backends.base import TaskQuery
from sqlalchemy_taskqueue.backends.postgresql._key_slots import freeing_slots, keyed_claim_ids
from sqlalchemy_taskqueue.backends.postgresql._workers import record_worker_statement
from sqlalchemy_taskqueue.backoff import MAX_EXPONENT, BackoffPolicy
from sqlalchemy_taskqueue.status import ACTIVE_STATUSES, FINISHED_STATUSES, TaskStatus

__all__ = [
    "CLAIM_ORDER",
    "TypeFilter",
    "active_dedupe_lookup_statement",
    "cancel_statement",
    "claim_statement",
    "clear_rate_limit_statement",
    "complete_many_statement",
    "complete_statement",
    "constant_defaults",
    "diagnose_statement",
    "duplicate_holder_statement",
    "fail_statement",
    "insert_if_absent_statement",
    "insert_many_statement",
    "insert_rows_statement",
    "insert_statement",
    "is_permanent_error",
    "listen_statement",
    "lock_rate_budget_statement",
    "notify_statement",
    "outcome_counts_statement",
    "paused_types_statement",
    "payload_contains",
    "processing_times_statement",
    "progress_lookup_statement",
    "progress_statement",
    "purge_statement",
    "purgeable_count_statement",
    "queue_depth_statement",
    "rate_limits_statement",
    "recent_failures_statement",
    "record_rate_starts_statement",
    "record_starts_statement",
    "relaxed_commit_statement",
    "release_statement",
    "renew_leases_statement",
    "rescue_statement",
    "retry_statement",
    "set_paused_statement",
    "set_rate_limit_statement",
    "status_counts_statement",
    "stuck_tasks_statement",
]

#: SQLSTATE classes of errors that the same statement would meet again: data
#: exceptions (a value too long, invalid JSON), integrity constraint violations, syntax
#: and access rule violations, program limits (a value over 255 MiB), unsupported
#: features.  Connection losses (08), serialization failures and deadlocks (40),
#: exhausted resources (53) and cancelled statements (57) may pass.
_PERMANENT_SQLSTATE_CLASSES = frozenset({"0A", "22", "23", "42", "54"})


def is_permanent_error(exc: BaseException) -> bool:
    """Whether the database refused a statement for a reason retrying cannot fix, read
    from the SQLSTATE the driver reports (psycopg2's ``pgcode``; psycopg 3 and asyncpg,
    as SQLAlchemy adapts it, ``sqlstate``).

    >>> from sqlalchemy.exc import OperationalError
    >>> class ProgramLimitExceeded(Exception):
    ...     pgcode = "54000"
    >>> is_permanent_error(OperationalError("UPDATE ...", {}, ProgramLimitExceeded()))
    True
    """
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    return isinstance(code, str) and code[:2] in _PERMANENT_SQLSTATE_CLASSES


# --------------------------------------------------------------------------- schema


# --------------------------------------------------------------------------- time


def _now() -> ColumnElement[Any]:
    return func.now()


def _after(seconds: ColumnElement[Any] | float) -> ColumnElement[Any]:
    """``now()`` plus a number of seconds given as a SQL expression."""
    return _now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)


# --------------------------------------------------------------------------- enqueue


@functools.cache
def insert_statement(
    table: Table,
    columns: tuple[str, ...],
    *,
    channel: str | None,
    delayed: bool = False,
    payload_text: bool = False,
) -> Insert:
    """Insert one task and return its id; with ``channel``, also announce it.

    Parameters: one per name in ``columns``, plus ``run_delay`` (an interval added to the
    database clock for ``run_at``) when ``delayed``.  With ``payload_text`` the
    ``payload`` parameter is the payload's JSON text (as
    :func:`~sqlalchemy_taskqueue._validation.json_text` returns it), which the server
    parses, so a payload already encoded to be checked is not encoded again.  The
    notification is sent from the same statement (``pg_notify`` in ``RETURNING``: one
    round trip) and PostgreSQL delivers it only when the enqueuing transaction commits.
    The queue's own columns left to a constant default (``status``, ``progress``,
    ``retry_count``; see :func:`constant_defaults`) are written as SQL constants rather
    than parameters.  Statements are cached per table and column set.

    Example::

        stmt = insert_statement(Task.__table__, ("payload", "type"), channel="taskqueue_tasks")
        row = {"type": "email", "payload": {"to": "a@example.com"}}
        task_id = session.execute(stmt, row).scalar_one()
    """
    values = _one_row_values(table, columns, delayed, payload_text)
    return _returning_id(insert(table).values(**values), table, channel)


def _row_binds(
    table: Table, columns: tuple[str, ...], delayed: bool, *, payload_text: bool = False
) -> dict[str, Any]:
    binds: dict[str, Any] = {name: bindparam(name, type_=table.c[name].type) for name in columns}
    if payload_text and "payload" in binds:
        binds["payload"] = cast(bindparam("payload", type_=Text), table.c.payload.type)
    if delayed:
        binds["run_at"] = _now() + bindparam("run_delay", type_=Interval)
    return binds


#: Integer types whose values the driver sends as they are (no bind processing).
_PLAIN_INTEGER_TYPES = (Integer, BigInteger, SmallInteger)


@functools.cache
def constant_defaults(table: Table) -> Mapping[str, Any]:
    """The columns whose constant Python default the one-row insert statements write into
    the SQL as a constant, with that default.

    SQLAlchemy would otherwise send such a default as a parameter on every execution.
    Covered: integers of a plain integer type and the status of the library's status
    type (written as the text that type binds); any other default is left to
    SQLAlchemy.  A value equal to its column's constant default may be left out of the
    parameters: the row is the same.

    Example::

        constant_defaults(Task.__table__)["max_retries"]  # 3
    """
    from sqlalchemy_taskqueue.models import TaskStatusType  # models imports this module

    constants: dict[str, Any] = {}
    for column in table.c:
        default = column.default
        if not isinstance(default, ColumnDefault) or not default.is_scalar:
            continue
        value = default.arg
        integer = type(column.type) in _PLAIN_INTEGER_TYPES and type(value) is int
        status = type(column.type) is TaskStatusType and isinstance(value, TaskStatus)
        if integer or status:
            constants[column.key] = value
    return MappingProxyType(constants)


def _one_row_values(
    table: Table, columns: tuple[str, ...], delayed: bool, payload_text: bool
) -> dict[str, Any]:
    """The VALUES of a one-row insert: a parameter per name in ``columns`` (and
    ``run_delay``), and the constant defaults of the queue's other columns as SQL."""
    values = _row_binds(table, columns, delayed, payload_text=payload_text)
    values.update(_constant_columns(table, values))
    return values


def _constant_columns(table: Table, values: Mapping[str, Any]) -> dict[str, ColumnElement[Any]]:
    """The :func:`constant_defaults` of the columns ``values`` does not set, as SQL."""
    return {
        key: literal_column(
            f"'{value.value}'" if isinstance(value, TaskStatus) else str(value),
            table.c[key].type,
        )
        for key, value in constant_defaults(table).items()
        if key not in values
    }


def _returning_id(stmt: Insert, table: Table, channel: str | None) -> Insert:
    """``stmt`` returning the new id and, with ``channel``, announcing each new row there."""
    return _announcing(stmt, channel, table.c.id)


_DML = TypeVar("_DML", Insert, Update)


def _announcing(stmt: _DML, channel: str | None, *columns: ColumnElement[Any]) -> _DML:
    """``stmt`` returning ``columns`` and, with ``channel``, announcing every row it
    made claimable there (``pg_notify`` is called once per returned row, so a statement
    that changes nothing announces nothing; PostgreSQL sends one notification per
    transaction for identical ones)."""
    return stmt.returning(*_announced(channel, *columns))


def _announced(channel: str | None, *columns: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    """``columns`` and, with ``channel``, the ``pg_notify`` call of :func:`_announcing`."""
    if channel is None:
        return list(columns)
    return [*columns, func.pg_notify(_text_constant(channel), literal_column("''"))]


def _text_constant(value: str) -> ColumnElement[Any]:
    """``value`` as an SQL string constant written into the statement (no parameter to
    send on every execution); a bound parameter if it holds a backslash, which a server
    with ``standard_conforming_strings = off`` would read as an escape."""
    if "\\" in value:
        return literal(value, Text)
    quoted = value.replace("'", "''")
    return literal_column(f"'{quoted}'", Text)


@functools.cache
def insert_many_statement(
    table: Table, columns: tuple[str, ...], *, delayed: bool = False
) -> Insert:
    """Insert one task per element of ``:payloads`` (the text of a JSON array of the
    payloads), in one statement whose size does not grow with the batch; returns the new
    ids.  The server parses the array: one parameter however many tasks.

    Every other column named in ``columns`` takes the same bound value in each row (the
    batch shares its type and options); with ``delayed``, ``run_at`` is the database
    clock plus ``run_delay``.  Rows are inserted in array order, so their identity ids
    ascend in that order.

    Example::

        stmt = insert_many_statement(Task.__table__, ("type",))
        params = {"type": "email", "payloads": '[{"to": "a@x"}, {"to": "b@x"}]'}
        ids = sorted(session.execute(stmt, params).scalars())
    """
    batch = (
        func.jsonb_array_elements(cast(bindparam("payloads", type_=Text), postgresql.JSONB))
        .table_valued("value", with_ordinality="position")
        .render_derived(name="batch")
    )
    shared = _row_binds(table, columns, delayed)
    source = select(*[bind.label(name) for name, bind in shared.items()], batch.c.value)
    return (
        insert(table)
        .from_select([*shared, "payload"], source.order_by(batch.c.position))
        .returning(table.c.id)
    )


@functools.cache
def insert_rows_statement(table: Table, *, delayed: bool = False) -> Insert:
    """Insert many tasks given as a list of row dicts, returning ids in input order.

    The fallback of :func:`insert_many_statement` for tables with Python-side callable
    column defaults (evaluated once per row here, but only once per statement there).
    When ``delayed``, each row carries ``run_delay``.

    Example::

        rows = [{"type": "email", "payload": {"to": to}} for to in addresses]
        ids = session.execute(insert_rows_statement(Task.__table__), rows).scalars().all()
    """
    stmt = insert(table)
    if delayed:
        stmt = stmt.values(run_at=_now() + bindparam("run_delay", type_=Interval))
    return stmt.returning(table.c.id, sort_by_parameter_order=True)


@functools.cache
def insert_if_absent_statement(
    table: Table,
    columns: tuple[str, ...],
    *,
    channel: str | None,
    delayed: bool = False,
    payload_text: bool = False,
) -> Insert:
    """Insert one task unless an active task with the same type and dedupe key exists.

    Parameters as :func:`insert_statement` (``columns`` includes ``dedupe_key``).
    Returns the new id, or no row when the unique partial index reported a conflict (and
    then announces nothing).  The index arbitrates concurrent callers, so two
    transactions can never both insert.

    Example::

        columns = ("dedupe_key", "payload", "type")
        stmt = insert_if_absent_statement(Task.__table__, columns, channel=None)
        row = {"type": "import", "payload": {}, "dedupe_key": "a.csv"}
        created = session.execute(stmt, row).first()  # None: an active task holds the key
    """
    values = _one_row_values(table, columns, delayed, payload_text)
    inserted = (
        postgresql.insert(table)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=[table.c.type, table.c.dedupe_key],
            index_where=text(ACTIVE_DEDUPE_PREDICATE),
        )
    )
    return _returning_id(inserted, table, channel)


def listen_statement(channel: str) -> str:
    """``LISTEN`` on ``channel`` (raw SQL for the listener's dedicated connection).

    >>> listen_statement("taskqueue_tasks")
    'LISTEN "taskqueue_tasks"'
    """
    quoted = channel.replace('"', '""')
    return f'LISTEN "{quoted}"'


def notify_statement(channel: str) -> Select[Any]:
    """Announce new work on ``channel`` (delivered when the transaction commits).

    Example::

        session.execute(notify_statement(notify_channel(Task.__table__)))
    """
    return select(func.pg_notify(channel, ""))


@functools.cache
def relaxed_commit_statement() -> Select[Any]:
    """Let the current transaction commit without waiting for its WAL flush
    (``synchronous_commit = off`` for this transaction only).

    Workers use it for transactions that only claim tasks: if the server crashes, a
    claim from its last moments may be forgotten, and the task is simply claimed again
    (the first claimant's writes are then refused by the lease fencing).  Outcomes are
    always committed synchronously.

    Example::

        session.execute(relaxed_commit_statement())
    """
    return select(func.set_config("synchronous_commit", "off", True))


def _relaxing_commit() -> ColumnElement[bool]:
    """A condition that is always true and does what :func:`relaxed_commit_statement`
    does, once per statement (a CTE evaluated before the scan): a statement relaxes its
    own transaction's commit without a round trip of its own."""
    relaxed = relaxed_commit_statement().cte("relaxed")
    return select(relaxed.c[0]).scalar_subquery().is_not(None)


def active_dedupe_lookup_statement(table: Table, task_type: str, dedupe_key: str) -> Select[Any]:
    """The id of the active task holding ``dedupe_key`` for ``task_type``, if any.

    Example::

        stmt = active_dedupe_lookup_statement(Task.__table__, "import", "a.csv")
        holder_id = session.execute(stmt).scalar_one_or_none()
    """
    c = table.c
    return select(c.id).where(
        c.type == task_type,
        c.dedupe_key == dedupe_key,
        c.status.in_(ACTIVE_STATUSES),
    )


# --------------------------------------------------------------------------- claim


def _type_filter(table: Table, type_filter: TypeFilter) -> ColumnElement[bool]:
    if type_filter == "any":
        return true()
    if type_filter == "one":
        return table.c.type == bindparam("task_type")
    return table.c.type.in_(bindparam("task_types", expanding=True))


#: How a claim filters by type: ``any`` type, ``one`` (param ``task_type``) or ``many``
#: (param ``task_types``, a list).
TypeFilter = Literal["any", "one", "many"]


@functools.cache
def claim_statement(
    table: Table,
    *,
    type_filter: TypeFilter,
    relaxed_commit: bool = False,
    prefetch: bool = False,
    rate_limited: bool = False,
    keyed: bool = False,
) -> Update:
    """Claim up to ``limit`` due tasks in one statement and return the claimed rows.

    Parameters: ``limit``, ``lease`` (interval), ``owner``, ``token`` and the type
    parameter of ``type_filter``.  With ``relaxed_commit`` the statement also does what
    :func:`relaxed_commit_statement` does (evaluated once, before the scan), saving a
    round trip for transactions that only claim.

    1. The sub-select picks the due pending rows without a concurrency key, lowest
       ``priority`` first, then oldest ``run_at``, then ``id``; it walks the partial
       claimable index in that order.
    2. ``FOR UPDATE SKIP LOCKED`` passes over rows another worker is claiming right now,
       so concurrent workers never wait for or double-claim one another.
    3. The ``UPDATE`` marks the picked rows ``in_progress`` and stamps the lease: owner,
       a token unique to this claim (used to fence later writes) and an expiry; it
       finds the picked rows as :func:`_picked_rows` does.
    4. ``started_at`` records that an attempt started: with ``prefetch`` (parameter
       ``starting``) only the first ``starting`` picked rows, which go straight to free
       slots, are started; the rest wait in the worker and are started later
       (:func:`record_starts_statement`).  A rescue charges an attempt only to a started
       task.
    5. With ``keyed``, tasks with a concurrency key come first: as many as there are
       free key slots for them (:func:`._key_slots.keyed_claim_ids`), each taking its
       slot (first in the ids, so a prefetching claim starts them first); the tasks
       without a key fill the rest of ``limit``.  Without ``keyed`` the statement never
       claims a keyed task.

    Example::

        stmt = claim_statement(Task.__table__, type_filter="one")
        params = {
            "task_type": "email",
            "limit": 10,
            "lease": timedelta(seconds=60),
            "owner": "w1",
            "token": uuid.uuid4(),
        }
        claimed = session.execute(stmt, params).all()
    """
    c = table.c
    limit: ColumnElement[Any] = bindparam("limit", type_=Integer)
    starting = bindparam("starting", type_=Integer)
    conditions = [
        c.status == TaskStatus.PENDING,
        c.run_at <= _now(),
        _type_filter(table, type_filter),
        *_not_held(table, rate_limited=rate_limited),
    ]
    if relaxed_commit:
        conditions.append(_relaxing_commit())
    keyed_ids: CTE | None = None
    plain_limit = limit
    if keyed:
        keyed_ids = keyed_claim_ids(table, conditions, limit).cte("keyed")
        plain_limit = limit - select(func.count()).select_from(keyed_ids).scalar_subquery()
    claimable: Select[Any] = (
        select(c.id)
        .where(*conditions, c.concurrency_key.is_(None))
        .order_by(*(c[name] for name in CLAIM_ORDER))
        .limit(plain_limit)
        .with_for_update(skip_locked=True)
    )
    if keyed_ids is not None:
        # the keyed ids first: a prefetching claim starts them (they count in `starting`)
        both = select(keyed_ids.c.task_id.label("id")).union_all(claimable.subquery().select())
        claimable = select(both.subquery("claimable").c.id)
    started: ColumnElement[Any] = _now()
    if prefetch:
        # the picked ids once (a CTE), in claim order: the first `starting` are started
        picked = select(func.array(claimable.correlate(None).scalar_subquery()).label("ids"))
        ids = cast(select(picked.cte("picked").c.ids).scalar_subquery(), ARRAY(BigInteger))
        started = case(
            (starting >= limit, _now()),  # nothing prefetched
            (func.array_position(ids, c.id) <= starting, _now()),
            else_=null(),
        )
        where = c.id == any_(ids)
    else:
        where = _picked_rows(table, claimable)
    return (
        update(table)
        .where(where)
        .values(
            status=TaskStatus.IN_PROGRESS,
            started_at=started,
            completed_at=None,
            lease_owner=bindparam("owner", type_=c.lease_owner.type),
            lease_token=bindparam("token", type_=c.lease_token.type),
            lease_expires_at=_now() + bindparam("lease", type_=Interval),
        )
        .returning(*c)
    )


def _not_held(table: Table, *, rate_limited: bool) -> list[ColumnElement[bool]]:
    """Claims skip paused types, and everything while the whole queue is paused: two
    look-ups in the small controls table, each evaluated once per statement (a hashed
    sub-plan and an init-plan), not once per row.  A plain claim also skips the
    rate-limited types, which only a claim that reserved their budget takes
    (``rate_limited``)."""
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


def _picked_rows(table: Table, picked_ids: Select[Any]) -> ColumnElement[bool]:
    """``id = ANY(ARRAY(picked_ids))``: the rows a bounded, locking sub-select picked,
    for the ``UPDATE`` or ``DELETE`` around it.

    The ids are computed once, then each row is fetched through the primary key,
    whatever the batch and table sizes.  Joined to a CTE of the ids (or with
    ``id IN (...)``), a batch of a few hundred made the planner hash-join a sequential
    scan of the whole table once it held tens of thousands of rows: every claim and
    every cleanup batch then read the entire table.
    """
    # correlate(None): the sub-select scans the table itself, not the row being changed
    return table.c.id == any_(func.array(picked_ids.correlate(None).scalar_subquery()))


# --------------------------------------------------------------------------- finish


def _owned(table: Table, *, fenced: bool) -> ColumnElement[bool]:
    """The task ``task_id`` while in progress and, when ``fenced``, leased with ``token``."""
    c = table.c
    condition = and_(c.id == bindparam("task_id"), c.status == TaskStatus.IN_PROGRESS)
    if fenced:
        condition = and_(condition, c.lease_token == bindparam("token", type_=c.lease_token.type))
    return condition


_LEASE_CLEARED: dict[str, Any] = {"lease_token": None, "lease_expires_at": None}


def _completed_values(table: Table, result: Any) -> dict[str, Any]:
    return {
        "status": TaskStatus.COMPLETED,
        # a prefetched task may finish before its start was recorded
        "started_at": func.coalesce(table.c.started_at, _now()),
        "progress": 100,
        "completed_at": _now(),
        "result": result,
        **_LEASE_CLEARED,
    }


@functools.cache
def complete_statement(table: Table, *, fenced: bool) -> Select[Any]:
    """Mark an in-progress task completed (progress 100) with a JSON result.

    Parameters: ``task_id``, ``new_result`` and, when ``fenced``, ``token``.

    Example::

        stmt = complete_statement(Task.__table__, fenced=True)
        params = {"task_id": 42, "new_result": {"rows": 10}, "token": task.lease_token}
        completed = session.execute(stmt, params).first() is not None
    """
    result = bindparam("new_result", type_=table.c.result.type)
    completed = update(table).where(_owned(table, fenced=fenced))
    return freeing_slots(table, completed.values(**_completed_values(table, result)), table.c.id)


def _leases(table: Table, *, with_results: bool = False) -> Any:
    """``unnest(:ids, :tokens[, :results])`` as a table: many (id, token) pairs in one
    array parameter each, so one cached statement serves any batch size."""
    arrays = [
        bindparam("ids", type_=ARRAY(BigInteger)),
        cast(bindparam("tokens", type_=ARRAY(Text)), ARRAY(Uuid())),
    ]
    names = ["id", "token"]
    if with_results:
        arrays.append(cast(bindparam("results", type_=ARRAY(Text)), ARRAY(postgresql.JSONB())))
        names.append("result")
    return func.unnest(*arrays).table_valued(*names).render_derived(name="leases")


def _update_leased(table: Table, leases: Any) -> Update:
    """``UPDATE`` of the in-progress rows whose (id, lease token) is among ``leases``."""
    c = table.c
    return update(table).where(
        c.id == leases.c.id,
        c.lease_token == leases.c.token,
        c.status == TaskStatus.IN_PROGRESS,
    )


@functools.cache
def complete_many_statement(table: Table) -> Select[Any]:
    """Complete a batch of leased tasks in one statement; returns the ids completed.

    Parameters: ``ids``, ``tokens`` (text) and ``results`` (JSON text or NULL), arrays
    of equal length.  Pairs whose lease is no longer current are left untouched.

    Example::

        params = {"ids": [42, 43], "tokens": [str(t1), str(t2)], "results": ['{"ok": true}', None]}
        done = set(session.execute(complete_many_statement(Task.__table__), params).scalars())
    """
    leases = _leases(table, with_results=True)
    completed = _update_leased(table, leases).values(**_completed_values(table, leases.c.result))
    return freeing_slots(table, completed, table.c.id)


def _failure_values(
    table: Table,
    error_message: Any,
    backoff: BackoffPolicy | None,
    *,
    retry: bool,
    unstarted_message: str | None = None,
) -> dict[str, Any]:
    """SET clause of the atomic retry rule, with backoff computed in SQL.

    While ``retry_count < max_retries`` the task returns to ``pending`` with
    ``retry_count + 1`` and ``run_at = now() + min(cap, base * 2^(retry_count + 1) *
    (1 + jitter * random()))`` (with ``backoff`` ``None``, ``run_at`` is kept: the task
    is due at once, in its old place in the queue); otherwise it becomes ``failed``.  Every right-hand side reads the row as it was before the update,
    so the decision is atomic.

    With ``unstarted_message``, a task whose attempt never started (``started_at`` is
    NULL: it waited in a worker for a slot) is not charged: it goes back to ``pending``
    with its ``retry_count`` unchanged and that message.
    """
    c = table.c
    retry_at: ColumnElement[Any] | None = None
    if backoff is not None:
        exponent = func.least(c.retry_count + 1, MAX_EXPONENT)
        retry_at = _after(
            func.least(
                backoff.cap_seconds,
                backoff.base_seconds
                * func.power(2, exponent)
                * (1 + backoff.jitter * func.random()),
            )
        )
    return _portable.failure_values(
        table,
        error_message,
        retry_at,
        retry=retry,
        now=_now(),
        unstarted_message=unstarted_message,
    )


@functools.cache
def fail_statement(
    table: Table, *, fenced: bool, backoff: BackoffPolicy, retry: bool = True
) -> Select[Any]:
    """Record a failed attempt: back to ``pending`` with backoff, or ``failed``.

    Parameters: ``task_id``, ``message`` and, when ``fenced``, ``token``.

    Example::

        stmt = fail_statement(Task.__table__, fenced=True, backoff=DEFAULT_BACKOFF)
        params = {"task_id": 42, "message": "ValueError: bad row", "token": task.lease_token}
        new_status = session.execute(stmt, params).scalar_one()
    """
    message = bindparam("message", type_=Text)
    failed = update(table).where(_owned(table, fenced=fenced))
    values = _failure_values(table, message, backoff, retry=retry)
    return freeing_slots(table, failed.values(**values), table.c.status)


@functools.cache
def progress_statement(table: Table, *, fenced: bool, relaxed_commit: bool = False) -> Update:
    """Set the progress of an unfinished task (only ``progress``, so the update is HOT).

    Parameters: ``task_id``, ``new_progress`` and, when ``fenced``, ``token``; unfenced,
    a pending task may be updated too.  With ``relaxed_commit`` the statement also does
    what :func:`relaxed_commit_statement` does.

    Example::

        stmt = progress_statement(Task.__table__, fenced=False)
        session.execute(stmt, {"task_id": 42, "new_progress": 40})
    """
    c = table.c
    if fenced:
        condition = _owned(table, fenced=True)
    else:
        condition = and_(c.id == bindparam("task_id"), c.status.in_(ACTIVE_STATUSES))
    if relaxed_commit:
        condition = and_(condition, _relaxing_commit())
    return (
        update(table)
        .where(condition)
        .values(progress=bindparam("new_progress", type_=Integer))
        .returning(c.id)
    )


def duplicate_holder_statement(table: Table, task_id: int) -> Select[Any]:
    """The active task, other than task ``task_id`` itself, that holds its dedupe key.

    Example::

        holder_id = session.execute(duplicate_holder_statement(Task.__table__, 42)).scalar()
    """
    c = table.c
    holder = table.alias("holder")
    return select(holder.c.id).where(
        c.id == task_id,
        holder.c.id != c.id,
        holder.c.type == c.type,
        holder.c.dedupe_key == c.dedupe_key,
        holder.c.status.in_(ACTIVE_STATUSES),
    )


def diagnose_statement(table: Table, task_id: int) -> Select[Any]:
    """The status and lease token of one task, to explain why a guarded update missed.

    Example::

        status, lease_token = session.execute(diagnose_statement(Task.__table__, 42)).one()
    """
    return select(table.c.status, table.c.lease_token).where(table.c.id == task_id)


def cancel_statement(table: Table, task_id: int) -> Select[Any]:
    """Cancel a pending or running task; a running one's lease is revoked, so its worker
    finds it gone at its next heartbeat and every write it makes afterwards is refused.

    Example::

        cancelled = session.execute(cancel_statement(Task.__table__, 42)).first() is not None
    """
    c = table.c
    cancelled = (
        update(table)
        .where(c.id == task_id, c.status.in_([TaskStatus.PENDING, TaskStatus.IN_PROGRESS]))
        .values(status=TaskStatus.CANCELLED, completed_at=_now(), **_LEASE_CLEARED)
    )
    return freeing_slots(table, cancelled, c.id)


def discard_statement(table: Table, task_id: int) -> ReturningDelete[Any]:
    """Delete a finished task (completed, failed or cancelled), returning its id.

    Example::

        discarded = session.execute(discard_statement(Task.__table__, 42)).first() is not None
    """
    c = table.c
    return delete(table).where(c.id == task_id, c.status.in_(FINISHED_STATUSES)).returning(c.id)


def retry_statement(
    table: Table,
    *,
    task_id: int | None,
    task_type: str | None,
    channel: str | None = None,
    matching: TaskQuery | None = None,
) -> Update:
    """Put failed tasks back in the queue, due now, with a fresh retry budget.

    With ``task_id`` only that task; otherwise every failed task (of ``task_type``, and
    matching the filters of ``matching`` when given).  A
    failed task whose dedupe key an active task holds stays failed, and of several failed
    tasks sharing a dedupe key only the newest is retried: the unique index allows one
    active task per key.  With ``channel``, idle workers listening there are woken.

    Example::

        stmt = retry_statement(Task.__table__, task_id=None, task_type="webhook")
        retried_ids = session.execute(stmt).scalars().all()
    """
    stmt = _portable.retry_statement(
        table, task_id=task_id, task_type=task_type, matching=matching, now=_now()
    )
    return _announcing(stmt, channel, table.c.id)


# --------------------------------------------------------------------------- leases


@functools.cache
def record_starts_statement(table: Table) -> Update:
    """Record that claimed tasks which waited in a worker (prefetched) have started:
    from now on a rescue charges them an attempt.  Returns the ids recorded.

    Parameters: ``ids`` and ``tokens`` (arrays).

    Example::

        params = {"ids": [42], "tokens": [str(task.lease_token)]}
        session.execute(record_starts_statement(Task.__table__), params)
    """
    return (
        _update_leased(table, _leases(table))
        .where(table.c.started_at.is_(None))
        .values(started_at=_now())
        .returning(table.c.id)
    )


@functools.cache
def renew_leases_statement(table: Table, *, registering: bool = False) -> Update:
    """Heartbeat: extend every listed lease that is still current; return their ids.

    Parameters: ``ids`` and ``tokens`` (arrays) and ``lease`` (interval).  One statement
    renews the leases of all tasks a worker holds; an id missing from the result has lost
    its lease (rescued, or changed by an operator).  With ``registering``, it also
    refreshes the worker's registration (the parameters of
    :func:`._workers.record_worker_statement`): a heartbeat is one statement.

    Example::

        params = {"ids": [42], "tokens": [str(task.lease_token)], "lease": timedelta(seconds=60)}
        kept = set(session.execute(renew_leases_statement(Task.__table__), params).scalars())
    """
    renewed = (
        _update_leased(table, _leases(table))
        .values(lease_expires_at=_now() + bindparam("lease", type_=Interval))
        .returning(table.c.id)
    )
    if registering:  # the worker's registration too, in the same statement
        renewed = renewed.add_cte(record_worker_statement(table).cte("registration"))
    return renewed


@functools.cache
def release_statement(table: Table, channel: str | None = None) -> Select[Any]:
    """Hand unfinished tasks back to ``pending`` without consuming a retry (shutdown).

    The task is due at once and keeps its place in the queue (its ``run_at``), as a
    rescued task does; its progress starts again from 0, as a retried one's does.  With
    ``channel``, idle workers listening there are woken to take it.

    Parameters: ``ids`` and ``tokens`` (arrays).

    Example::

        params = {"ids": [42], "tokens": [str(task.lease_token)]}
        released = set(session.execute(release_statement(Task.__table__), params).scalars())
    """
    released = _update_leased(table, _leases(table)).values(
        status=TaskStatus.PENDING,
        progress=0,
        started_at=None,
        lease_owner=None,
        **_LEASE_CLEARED,
    )
    return freeing_slots(table, released, *_announced(channel, table.c.id))


def rescue_statement(table: Table, *, limit: int, channel: str | None = None) -> Select[Any]:
    """Return tasks whose lease expired to the queue, consuming a retry if they started.

    A worker that dies (``kill -9``, lost machine, lost connection) stops renewing its
    leases; once a lease has expired, any worker rescues the task with the same rule as a
    failed attempt, except that a rescued task is due at once and keeps its place in the
    queue (its ``run_at``): the attempt already waited out its lease, so it runs before
    tasks enqueued after it.  A task whose attempt had not started (it waited in the
    worker for a slot: ``started_at`` is NULL) is not charged (:data:`UNSTARTED_RESCUE`).  ``SKIP LOCKED`` lets several workers rescue concurrently.
    With ``channel``, idle workers listening there are woken (a rescue that fails a
    task out of retries wakes them too, for nothing).

    Example::

        stmt = rescue_statement(Task.__table__, limit=1000)
        rescued = {task_id: status for task_id, status in session.execute(stmt)}
    """
    c = table.c
    expired = (
        select(c.id)
        .where(c.status == TaskStatus.IN_PROGRESS, c.lease_expires_at < _now())
        .order_by(c.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    message = "lease expired: the worker running this task stopped renewing its lease"
    values = _failure_values(
        table, literal(message, Text), None, retry=True, unstarted_message=UNSTARTED_RESCUE
    )
    rescued = update(table).where(_picked_rows(table, expired)).values(**values)
    return freeing_slots(table, rescued, *_announced(channel, c.id, c.status))


# --------------------------------------------------------------------------- reads


def payload_contains(table: Table, match: Mapping[str, Any]) -> ColumnElement[bool]:
    """The payload has every key of ``match`` with exactly that value.

    ``payload @> match`` (which a GIN index on ``payload`` can serve) and, per key,
    ``payload -> key = value``: containment alone would also accept a list or object
    that merely contains the value asked for (``["a", "b"]`` for ``["a"]``).

    Example::

        stmt = select(Task.id).where(payload_contains(Task.__table__, {"project_id": 7}))
    """
    payload = table.c.payload
    whole = [
        payload.op("->", return_type=postgresql.JSONB)(literal(key, Text))
        == cast(literal(json.dumps(value)), postgresql.JSONB)
        for key, value in match.items()
    ]
    return and_(payload.op("@>")(cast(literal(json.dumps(match)), postgresql.JSONB)), *whole)


def progress_lookup_statement(
    table: Table, task_type: str, match: Mapping[str, Any]
) -> Select[Any]:
    """Progress of the newest unfinished task of a type whose payload matches.

    Example::

        stmt = progress_lookup_statement(Task.__table__, "data_export", {"project_id": 7})
        progress = session.execute(stmt).scalar_one_or_none()  # 45
    """
    c = table.c
    condition = and_(c.type == task_type, c.status.in_(ACTIVE_STATUSES))
    if match:
        condition = and_(condition, payload_contains(table, match))
    return select(c.progress).where(condition).order_by(c.created_at.desc(), c.id.desc()).limit(1)


# --------------------------------------------------------------------------- monitoring


def _seconds_between(later: Any, earlier: Any) -> ColumnElement[Any]:
    return func.extract("epoch", later - earlier)


def status_counts_statement(table: Table) -> Select[Any]:
    """Tasks per type and status.

    Example::

        for task_type, status, total in session.execute(status_counts_statement(Task.__table__)):
            print(task_type, status, total)
    """
    c = table.c
    return (
        select(c.type, c.status, func.count().label("total"))
        .group_by(c.type, c.status)
        .order_by(c.type, c.status)
    )


def queue_depth_statement(table: Table) -> Select[Any]:
    """Pending tasks per type: due now, scheduled for later, and the oldest due one's age.

    Reads only pending rows, through the partial claimable index.

    Example::

        for row in session.execute(queue_depth_statement(Task.__table__)):
            print(row.type, row.ready, row.scheduled, row.oldest_ready_seconds)
    """
    c = table.c
    due = c.run_at <= _now()
    return (
        select(
            c.type,
            func.count().filter(due).label("ready"),
            func.count().filter(c.run_at > _now()).label("scheduled"),
            func.coalesce(func.max(_seconds_between(_now(), c.run_at)).filter(due), 0).label(
                "oldest_ready_seconds"
            ),
        )
        .where(c.status == TaskStatus.PENDING)
        .group_by(c.type)
        .order_by(c.type)
    )


def unclaimed_types_statement(table: Table, *, since: timedelta) -> Select[Any]:
    """Task types with tasks ready to run that no worker has claimed within ``since``:
    none of their tasks is in progress or started within it (a sign that no running
    worker has a handler for them).

    The pending rows are read through the partial claimable index; each such type's
    recent claims by a scan of that type's rows, so this is for operators' commands,
    not hot paths.

    Example::

        stmt = unclaimed_types_statement(Task.__table__, since=timedelta(hours=1))
        types = session.execute(stmt).scalars().all()
    """
    c = table.c
    claimed = table.alias("claimed")
    recently_claimed = (
        select(claimed.c.id)
        .where(
            claimed.c.type == c.type,
            or_(
                claimed.c.status == TaskStatus.IN_PROGRESS,
                claimed.c.started_at >= _now() - since,
            ),
        )
        .exists()
    )
    return (
        select(c.type)
        .where(c.status == TaskStatus.PENDING, c.run_at <= _now())
        .group_by(c.type)
        .having(~recently_claimed)
        .order_by(c.type)
    )


def stuck_tasks_statement(
    table: Table, *, running_longer_than: timedelta, limit: int
) -> Select[Any]:
    """In-progress tasks that run longer than a threshold or whose lease has expired.

    Example::

        stmt = stuck_tasks_statement(
            Task.__table__, running_longer_than=timedelta(hours=1), limit=100
        )
        stuck = session.execute(stmt).all()
    """
    c = table.c
    expired = c.lease_expires_at < _now()
    return (
        select(
            c.id,
            c.type,
            c.started_at,
            c.lease_owner,
            c.lease_expires_at,
            c.retry_count,
            c.progress,
            expired.label("lease_expired"),
        )
        .where(
            c.status == TaskStatus.IN_PROGRESS,
            (c.started_at < _now() - running_longer_than) | expired,
        )
        .order_by(c.started_at)
        .limit(limit)
    )


def processing_times_statement(table: Table, *, window: timedelta) -> Select[Any]:
    """Average and 95th percentile run time of tasks completed within ``window``.

    Example::

        stmt = processing_times_statement(Task.__table__, window=timedelta(hours=24))
        for row in session.execute(stmt):
            print(row.type, row.completed, row.average_seconds, row.p95_seconds)
    """
    c = table.c
    seconds = _seconds_between(c.completed_at, c.started_at)
    return (
        select(
            c.type,
            func.count().label("completed"),
            func.avg(seconds).label("average_seconds"),
            func.percentile_cont(0.95).within_group(seconds).label("p95_seconds"),
        )
        .where(c.status == TaskStatus.COMPLETED, c.completed_at >= _now() - window)
        .group_by(c.type)
        .order_by(c.type)
    )


def outcome_counts_statement(table: Table, *, window: timedelta) -> Select[Any]:
    """Finished tasks per type within ``window``: completed, failed, cancelled, retried.

    Example::

        stmt = outcome_counts_statement(Task.__table__, window=timedelta(hours=24))
        for row in session.execute(stmt):
            print(row.type, row.completed, row.failed, row.cancelled, row.retried)
    """
    c = table.c
    return (
        select(
            c.type,
            func.count().filter(c.status == TaskStatus.COMPLETED).label("completed"),
            func.count().filter(c.status == TaskStatus.FAILED).label("failed"),
            func.count().filter(c.status == TaskStatus.CANCELLED).label("cancelled"),
            # the retry rule counts the final failure in retry_count too
            func.count()
            .filter(
                case(
                    (c.status == TaskStatus.FAILED, c.retry_count > 1),
                    else_=c.retry_count > 0,
                )
            )
            .label("retried"),
        )
        .where(c.status.in_(FINISHED_STATUSES), c.completed_at >= _now() - window)
        .group_by(c.type)
        .order_by(c.type)
    )


def recent_failures_statement(
    table: Table, *, limit: int, task_type: str | None = None
) -> Select[Any]:
    """The latest permanently failed tasks with their error messages.

    Example::

        stmt = recent_failures_statement(Task.__table__, limit=20, task_type="webhook")
        for row in session.execute(stmt):
            print(row.id, row.error_message)
    """
    c = table.c
    condition = c.status == TaskStatus.FAILED
    if task_type is not None:
        condition = and_(condition, c.type == task_type)
    return (
        select(c.id, c.type, c.error_message, c.retry_count, c.created_at, c.completed_at)
        .where(condition)
        # newest first in the finished-rows index's own order (read backwards), so the
        # scan stops after ``limit`` failures instead of sorting every failed row
        .order_by(c.completed_at.desc(), c.id.desc())
        .limit(limit)
    )


# --------------------------------------------------------------------------- cleanup


def _purgeable(table: Table, older_than: timedelta) -> ColumnElement[bool]:
    c = table.c
    return and_(c.status.in_(FINISHED_STATUSES), c.completed_at < _now() - older_than)


def purge_statement(table: Table, *, older_than: timedelta, batch_size: int) -> Delete:
    """Delete one bounded batch of finished tasks that finished before ``now() - older_than``.

    Example::

        stmt = purge_statement(Task.__table__, older_than=timedelta(days=7), batch_size=1000)
        deleted = session.execute(stmt).rowcount
    """
    c = table.c
    batch = (
        select(c.id)
        .where(_purgeable(table, older_than))
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    return delete(table).where(_picked_rows(table, batch))


def purgeable_count_statement(table: Table, *, older_than: timedelta) -> Select[Any]:
    """How many tasks :func:`purge_statement` would delete (for dry runs).

    Example::

        stmt = purgeable_count_statement(Task.__table__, older_than=timedelta(days=7))
        count = session.execute(stmt).scalar_one()
    """
    return select(func.count()).select_from(table).where(_purgeable(table, older_than))


# --------------------------------------------------------------------------- schedules

#: The columns of a schedule's row that say when it fires: a change to one of them
#: moves the schedule's next fire time (a change to its payload does not).
_TIMING_COLUMNS = ("cron", "every_seconds", "timezone")


def clock_statement() -> Select[Any]:
    """The database clock (the transaction's start time, as every statement sees it).

    Example::

        now = session.execute(clock_statement()).scalar_one()
    """
    return select(_now())


@functools.cache
def sync_schedules_statement(table: Table) -> Insert:
    """Insert or update the schedules a worker carries, one row of parameters each: the
    definition is the code's, ``carried_at`` is now, and ``next_fire_at`` is the row's
    own unless the schedule is new or its timing changed.

    Example::

        session.execute(sync_schedules_statement(schedules), rows)
    """
    stmt = postgresql.insert(table).values(carried_at=_now())
    excluded = stmt.excluded
    timing_changed = or_(
        *(table.c[name].is_distinct_from(excluded[name]) for name in _TIMING_COLUMNS)
    )
    definition = {
        column.name: excluded[column.name]
        for column in table.c
        if column.name
        in (
            "task_type",
            "cron",
            "every_seconds",
            "timezone",
            "missed",
            "catch_up_seconds",
            "overlap",
            "payload",
            "priority",
            "max_retries",
            "columns",
        )
    }
    return stmt.on_conflict_do_update(
        index_elements=[table.c.name],
        set_={
            **definition,
            "carried_at": _now(),
            # a new timing's first fire, unless a peer has fired that time already (its
            # fire committed while this upsert waited for the row): never fire it twice
            "next_fire_at": case(
                (
                    and_(
                        timing_changed,
                        or_(
                            table.c.last_fire_at.is_(None),
                            excluded.next_fire_at > table.c.last_fire_at,
                        ),
                    ),
                    excluded.next_fire_at,
                ),
                else_=table.c.next_fire_at,
            ),
        },
    )


def due_schedules_statement(table: Table, names: Sequence[str]) -> Select[Any]:
    """The carried schedules due to fire, locked (``SKIP LOCKED``: a worker firing one
    holds its row until it commits the fire and the tasks it enqueued together, so each
    fire time is enqueued once however many workers look).

    Example::

        rows = session.execute(due_schedules_statement(schedules, ["report"])).all()
    """
    c = table.c
    return (
        select(c.name, c.next_fire_at, c.last_fire_at, c.last_task_id)
        .where(c.name.in_(names), c.paused.is_(false()), c.next_fire_at <= _now())
        .order_by(c.name)
        .with_for_update(skip_locked=True)
    )


@functools.cache
def record_fire_statement(table: Table) -> Update:
    """Record a schedule's fire: its next fire time, last fire and last task.

    Example::

        session.execute(record_fire_statement(schedules), {"schedule": "report", ...})
    """
    c = table.c
    return (
        update(table)
        .where(c.name == bindparam("schedule"))
        .values(
            next_fire_at=bindparam("next_fire_at"),
            last_fire_at=bindparam("last_fire_at"),
            last_task_id=bindparam("last_task_id"),
        )
    )


def next_fire_statement(table: Table, names: Sequence[str]) -> Select[Any]:
    """The earliest next fire time of the carried schedules that are not paused, and
    the database clock.

    Example::

        soonest, now = session.execute(next_fire_statement(schedules, ["report"])).one()
    """
    c = table.c
    return select(func.min(c.next_fire_at), _now()).where(c.name.in_(names), c.paused.is_(false()))


def schedules_statement(table: Table, name: str | None = None) -> Select[Any]:
    """Every schedule's row (or one), by name.

    Example::

        rows = session.execute(schedules_statement(schedules)).all()
    """
    stmt = select(table).order_by(table.c.name)
    return stmt if name is None else stmt.where(table.c.name == name)


def pause_schedule_statement(table: Table, name: str, *, paused: bool) -> Update:
    """Pause or resume a schedule; returns its name when it exists.

    Example::

        found = session.execute(pause_schedule_statement(schedules, "report", paused=True))
    """
    return update(table).where(table.c.name == name).values(paused=paused).returning(table.c.name)


# --------------------------------------------------------------------------- flow controls


def set_paused_statement(table: Table) -> Insert:
    """Pause or resume a type's claims (parameters ``task_type`` and ``paused``): the
    controls row is made if there is none.

    Example::

        session.execute(set_paused_statement(controls), {"task_type": "export", "paused": True})
    """
    stmt = postgresql.insert(table).values(
        task_type=bindparam("task_type", type_=table.c.task_type.type),
        paused=bindparam("paused", type_=table.c.paused.type),
        updated_at=_now(),
    )
    return stmt.on_conflict_do_update(
        index_elements=[table.c.task_type],
        set_={"paused": stmt.excluded.paused, "updated_at": _now()},
    )


def paused_types_statement(table: Table) -> Select[Any]:
    """The task types whose claims are paused (``''``: the whole queue), sorted.

    Example::

        paused = session.scalars(paused_types_statement(controls)).all()
    """
    return select(table.c.task_type).where(table.c.paused).order_by(table.c.task_type)


def set_rate_limit_statement(table: Table) -> Insert:
    """Limit a type's claims (parameters ``task_type``, ``rate_limit``,
    ``rate_period_seconds``); the starts recorded so far are kept.

    Example::

        session.execute(set_rate_limit_statement(controls), {"task_type": "t", "rate_limit": 20, "rate_period_seconds": 1.0})
    """
    stmt = postgresql.insert(table).values(
        task_type=bindparam("task_type", type_=table.c.task_type.type),
        rate_limit=bindparam("rate_limit", type_=Integer),
        rate_period_seconds=bindparam("rate_period_seconds", type_=Float),
        updated_at=_now(),
    )
    return stmt.on_conflict_do_update(
        index_elements=[table.c.task_type],
        set_={
            "rate_limit": stmt.excluded.rate_limit,
            "rate_period_seconds": stmt.excluded.rate_period_seconds,
            "updated_at": _now(),
        },
    )


def clear_rate_limit_statement(table: Table, task_type: str) -> Update:
    """Lift a type's rate limit (and forget its recorded starts).

    Example::

        cleared = session.execute(clear_rate_limit_statement(controls, "t")).first() is not None
    """
    c = table.c
    return (
        update(table)
        .where(c.task_type == task_type, c.rate_limit.is_not(None))
        .values(rate_limit=None, rate_period_seconds=None, rate_starts=None, updated_at=_now())
        .returning(c.task_type)
    )


def rate_limits_statement(table: Table) -> Select[Any]:
    """The rate-limited types, their limits and recorded starts, by type.

    Example::

        rows = session.execute(rate_limits_statement(controls)).all()
    """
    c = table.c
    return (
        select(c.task_type, c.rate_limit, c.rate_period_seconds, c.rate_starts, c.paused)
        .where(c.rate_limit.is_not(None))
        .order_by(c.task_type)
    )


def lock_rate_budget_statement(table: Table, task_type: str) -> Select[Any]:
    """A rate-limited type's row, locked for this claim (``SKIP LOCKED``: another worker
    reserving that type's budget right now is passed over, not waited for), with the
    database clock as epoch seconds.

    Example::

        row = session.execute(lock_rate_budget_statement(controls, "t")).first()
    """
    c = table.c
    return (
        select(
            c.rate_limit,
            c.rate_period_seconds,
            c.rate_starts,
            func.extract("epoch", _now()).label("now"),
        )
        .where(c.task_type == task_type, c.rate_limit.is_not(None))
        .with_for_update(skip_locked=True)
    )


def record_rate_starts_statement(table: Table, task_type: str, starts: list[list[float]]) -> Update:
    """Record a rate-limited type's claims within its period (``[epoch seconds, tasks]``).

    Example::

        session.execute(record_rate_starts_statement(controls, "t", [[1765000000.5, 3]]))
    """
    return (
        update(table)
        .where(table.c.task_type == task_type)
        .values(rate_starts=starts, updated_at=_now())
    )
