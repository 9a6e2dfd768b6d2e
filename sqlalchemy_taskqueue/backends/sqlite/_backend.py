"""The queue operations on SQLite: :class:`SQLiteBackend`.

SQLite has one writer at a time, and a transaction that read before it writes may be
refused the write lock at once (``database is locked``, whatever the busy timeout) when
another connection wrote meanwhile.  So every operation here that writes begins with a
write: the lock is taken (waiting up to the busy timeout) before anything is read, and
held until the caller's transaction ends.  Within it nothing can change behind the
operation's back, which is what ``FOR UPDATE SKIP LOCKED`` buys on PostgreSQL; a claim
that takes key slots reads, picks and writes in several plain statements.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Row,
    Table,
    Text,
    TextClause,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from sqlalchemy_taskqueue._concurrency import key_slots_table
from sqlalchemy_taskqueue._registry import workers_table
from sqlalchemy_taskqueue._schema import CLAIM_ORDER, UNSTARTED_RESCUE
from sqlalchemy_taskqueue._timestamps import Timestamp
from sqlalchemy_taskqueue.backends import _portable
from sqlalchemy_taskqueue.backends._portable import checked_json_text, insert_columns
from sqlalchemy_taskqueue.backends.base import (
    AsyncListener,
    Capabilities,
    ClaimRequest,
    Lease,
    Listener,
    TaskQuery,
)
from sqlalchemy_taskqueue.backoff import BackoffPolicy
from sqlalchemy_taskqueue.exceptions import UnsupportedDialectError
from sqlalchemy_taskqueue.status import ACTIVE_STATUSES, FINISHED_STATUSES, TaskStatus

from . import _connections
from ._statements import (
    CLOCK_SQL,
    TypeFilter,
    active,
    after,
    before,
    claim_statement,
    due_conditions,
    failure_values,
    finished_before,
    insert_if_absent_statement,
    insert_statement,
    now,
    seconds_between,
    upsert,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["SQLiteBackend"]

_Executor = Session | Connection

#: Rounds of insert-then-look-up before ``insert_if_absent`` gives up.
_DEDUPE_ROUNDS = 5
#: How far a keyed claim looks ahead for tasks whose key has a free slot: this many
#: tasks per task asked for, plus :data:`_HEAD_EXTRA`.
_HEAD_PER_SLOT = 4
_HEAD_EXTRA = 64
#: A held slot whose task is no longer in progress is freed once taken this long ago.
_ORPHANED_SLOT_AGE = timedelta(seconds=60)
_LEASE_CLEARED = _portable.LEASE_CLEARED
_RESCUE_MESSAGE = "lease expired: the worker running this task stopped renewing its lease"


class _RateBudget(NamedTuple):
    rate_limit: int
    rate_period_seconds: float
    rate_starts: Any
    now: float


class _ProcessingTimes(NamedTuple):
    type: str
    completed: int
    average_seconds: float
    p95_seconds: float


class SQLiteBackend:
    """SQLite 3.35+ (``UPDATE ... RETURNING``) through ``sqlite3`` or aiosqlite.

    Example::

        from sqlalchemy_taskqueue.backends import backend_for

        backend = backend_for(engine.dialect)  # a SQLiteBackend on SQLite
    """

    name = "sqlite"
    capabilities = Capabilities(
        update_returning=True,
        skip_locked=False,
        listen=False,
        partial_indexes=True,
        relaxed_commit=False,
        aware_timestamps=False,
    )
    url_schemes: tuple[str, ...] = ("sqlite",)
    clock_sql = CLOCK_SQL
    claim_order: tuple[str, ...] = CLAIM_ORDER
    listen_drivers: tuple[str, ...] = ()
    async_listen_drivers: tuple[str, ...] = ()

    # ------------------------------------------------------------------ schema

    def json_type(self, dialect: Dialect) -> TypeEngine[Any]:
        """SQLite's ``JSON`` (text).

        Example::

            backend.json_type(engine.dialect)  # JSON(none_as_null=True)
        """
        return sqlite.JSON(none_as_null=True)

    def index_options(self, where: str) -> dict[str, Any]:
        """``sqlite_where``: SQLite has partial indexes.

        Example::

            Index("ix", "run_at", **backend.index_options("status = 'pending'"))
        """
        return {f"{self.name}_where": text(where)}

    def json_type_v1(self) -> TypeEngine[Any]:
        """``JSON`` (text), as in every version.

        Example::

            sa.Column("payload", backend.json_type_v1(), nullable=False)
        """
        return sqlite.JSON(none_as_null=True)

    def index_options_v1(self, where: str) -> dict[str, Any]:
        """``sqlite_where``.

        Example::

            op.create_index("ix", "tasks", ["run_at"], **backend.index_options_v1(where))
        """
        return self.index_options(where)

    def server_now_v1(self) -> TextClause:
        """``(strftime(...))``: SQLite takes an expression as a default in parentheses.

        Example::

            sa.Column("created_at", sa.DateTime(timezone=True), server_default=backend.server_now_v1())
        """
        return text(f"({CLOCK_SQL})")

    def tune_statements_v1(self, qualified_table: str) -> list[str]:
        """None: SQLite has no storage parameters per table.

        Example::

            backend.tune_statements_v1('"tasks"')  # []
        """
        return []

    def untune_statements_v1(self, qualified_table: str) -> list[str]:
        """None.

        Example::

            backend.untune_statements_v1('"tasks"')  # []
        """
        return []

    # ------------------------------------------------------------------ enqueue

    def insert_one(
        self, session: Session, table: Table, values: Mapping[str, Any], *, channel: str | None
    ) -> int:
        """One ``INSERT ... RETURNING id``.

        Example::

            backend.insert_one(session, Task.__table__, {"type": "t", "payload": "{}"}, channel=None)
        """
        params = _delay_in_seconds(values)
        stmt = insert_statement(table, insert_columns(params), delayed="run_delay" in params)
        return int(session.execute(stmt, params).scalar_one())

    def insert_many(
        self,
        session: Session,
        table: Table,
        shared: Mapping[str, Any],
        payloads: Sequence[Any],
        payload_json: str | Sequence[str],
        *,
        channel: str | None,
    ) -> list[int]:
        """One multi-row ``INSERT ... RETURNING id`` (SQLAlchemy's insertmanyvalues),
        ids in input order.

        Example::

            backend.insert_many(session, table, {"type": "t"}, [{}], "[{}]", channel=None)
        """
        if isinstance(payload_json, str):
            texts: Sequence[str] = [checked_json_text(payload) for payload in payloads]
        else:
            texts = payload_json
        params = _delay_in_seconds(shared)
        columns = insert_columns({**params, "payload": None})
        stmt = insert_statement(table, columns, delayed="run_delay" in params, many=True)
        rows = [{**params, "payload": payload} for payload in texts]
        return [int(task_id) for task_id in session.execute(stmt, rows).scalars()]

    def insert_if_absent(
        self, session: Session, table: Table, values: Mapping[str, Any], *, channel: str | None
    ) -> tuple[int, bool] | None:
        """``INSERT ... ON CONFLICT DO NOTHING`` on the partial unique index, then a
        lookup of the holder when it conflicted.

        Example::

            backend.insert_if_absent(session, table, {**values, "dedupe_key": "k"}, channel=None)
        """
        params = _delay_in_seconds(values)
        stmt = insert_if_absent_statement(
            table, insert_columns(params), delayed="run_delay" in params
        )
        c = table.c
        lookup = select(c.id).where(
            c.type == values["type"], c.dedupe_key == values["dedupe_key"], active(table)
        )
        for _ in range(_DEDUPE_ROUNDS):
            created = session.execute(stmt, params).first()
            if created is not None:
                return int(created[0]), True
            existing = session.execute(lookup).scalar_one_or_none()
            if existing is not None:
                return int(existing), False
        return None

    # ------------------------------------------------------------------ claim

    def prepare_writes(self, executor: Session | Connection, table: Table) -> None:
        """Take the write lock now (a write that changes nothing): a transaction that
        read first could otherwise be refused it later.

        Example::

            backend.prepare_writes(session, Task.__table__)
        """
        _take_write_lock(executor, table)

    def claim(
        self,
        executor: Session | Connection,
        table: Table,
        request: ClaimRequest,
        *,
        entity: Any = None,
    ) -> Sequence[Any]:
        """An ``UPDATE ... WHERE id IN (due tasks in claim order) RETURNING *``; with
        ``request.keyed``, free key slots are taken first (after the write lock); with a
        prefetch, the first ``starting`` tasks' starts are recorded by a second update.

        Example::

            rows = backend.claim(connection, table, ClaimRequest(None, 10, lease, "w1"))
        """
        type_filter, params = _type_params(request.task_types)
        keyed_ids: list[int] = []
        if request.keyed:
            keyed_ids = self._take_key_slots(executor, table, request, type_filter, params)
        token = uuid.uuid4()
        params.update(
            limit=request.limit - len(keyed_ids),
            keyed_ids=keyed_ids,
            lease_seconds=request.lease.total_seconds(),
            owner=request.owner,
            token=token,
        )
        starting = request.starting
        prefetching = starting is not None and starting < request.limit
        counted_at = _rate_clock(executor) if request.rate_limited else None
        if counted_at is not None:  # the instant its budget counted these starts at
            params["started_at"] = counted_at
        stmt = claim_statement(
            table,
            type_filter=type_filter,
            rate_limited=request.rate_limited,
            started="later" if prefetching else "now" if counted_at is None else "given",
        )
        if not prefetching:
            if entity is not None:
                return _orm_rows(executor, entity, stmt, params)
            return executor.execute(stmt, params).all()
        c = table.c
        claimed = list(executor.execute(stmt, params).all())
        order = {task_id: position for position, task_id in enumerate(keyed_ids)}
        claimed.sort(key=lambda row: (row.id not in order, order.get(row.id, 0), *_order(row)))
        starts = [row.id for row in claimed[:starting]]
        if starts:
            executor.execute(
                update(table)
                .where(c.id.in_(starts), c.lease_token == token)
                .values(started_at=now())
            )
        read = select(table).where(c.id.in_([row.id for row in claimed]))
        if entity is not None:
            return _orm_rows(executor, entity, read, {})
        return executor.execute(read).all()

    def _take_key_slots(
        self,
        executor: _Executor,
        table: Table,
        request: ClaimRequest,
        type_filter: TypeFilter,
        params: dict[str, Any],
    ) -> list[int]:
        """Take free slots for up to ``request.limit`` due keyed tasks; their ids in
        claim order.  The n-th due task of a key gets the key's n-th free slot, if that
        slot's number is within the task's own limit."""
        c = table.c
        slots = key_slots_table(table)
        s = slots.c
        _take_write_lock(executor, slots)
        conditions = due_conditions(table, type_filter, rate_limited=request.rate_limited)
        head = executor.execute(
            select(c.id, c.concurrency_key, c.concurrency_limit)
            .where(*conditions, c.concurrency_key.is_not(None))
            .order_by(*(c[name] for name in CLAIM_ORDER))
            .limit(request.limit * _HEAD_PER_SLOT + _HEAD_EXTRA),
            params,
        ).all()
        if not head:
            return []
        keys = sorted({row.concurrency_key for row in head})
        free: dict[str, list[int]] = {}
        for key, slot in executor.execute(
            select(s.concurrency_key, s.slot)
            .where(s.concurrency_key.in_(keys), s.task_id.is_(None))
            .order_by(s.concurrency_key, s.slot)
        ):
            free.setdefault(key, []).append(slot)
        taken: list[dict[str, Any]] = []
        nth: dict[str, int] = {}
        for row in head:
            key_free = free.get(row.concurrency_key, [])
            if not key_free or key_free[0] > row.concurrency_limit:
                continue  # no slot within its limit is free: it waits, taking no turn
            position = nth.get(row.concurrency_key, 0)
            nth[row.concurrency_key] = position + 1
            if position < len(key_free) and key_free[position] <= row.concurrency_limit:
                taken.append(
                    {
                        "slot_key": row.concurrency_key,
                        "slot_number": key_free[position],
                        "holder": row.id,
                    }
                )
                if len(taken) == request.limit:
                    break
        if taken:
            executor.execute(
                update(slots)
                .where(
                    s.concurrency_key == bindparam("slot_key"), s.slot == bindparam("slot_number")
                )
                .values(task_id=bindparam("holder"), claimed_at=now()),
                taken,
            )
        return [pair["holder"] for pair in taken]

    # ------------------------------------------------------------------ outcomes

    def complete(
        self, session: Session, table: Table, task_id: int, result: Any, token: uuid.UUID | None
    ) -> bool:
        """One ``UPDATE ... RETURNING``, then the task's key slot freed.

        Example::

            backend.complete(session, table, 42, {"rows": 10}, token)
        """
        stmt = update(table).where(_owned(table, task_id, token))
        stmt = stmt.values(
            **_completed_values(table, bindparam("result", type_=table.c.result.type))
        )
        return bool(_freeing_slots(session, table, stmt, {"result": result}))

    def complete_many(
        self,
        session: Session,
        table: Table,
        leases: Sequence[Lease],
        results: Sequence[str | None],
    ) -> set[int]:
        """One ``UPDATE`` per task (SQLite runs them in-process), slots freed together.

        Example::

            backend.complete_many(session, table, [(42, token)], ['{"rows": 10}'])
        """
        c = table.c
        stmt = (
            update(table)
            .where(
                c.id == bindparam("task_id"),
                c.lease_token == bindparam("token", type_=c.lease_token.type),
                c.status == TaskStatus.IN_PROGRESS,
            )
            .values(**_completed_values(table, bindparam("result", type_=Text)))
            .returning(c.id, c.concurrency_key)
        )
        done: list[Row[Any]] = []
        for (task_id, token), result in zip(leases, results, strict=True):
            params = {"task_id": task_id, "token": token, "result": result}
            done.extend(session.execute(stmt, params).all())
        _free_slots(session, table, done)
        return {int(row.id) for row in done}

    def fail(
        self,
        session: Session,
        table: Table,
        task_id: int,
        message: str,
        token: uuid.UUID | None,
        *,
        backoff: BackoffPolicy,
        retry: bool,
    ) -> TaskStatus | None:
        """One ``UPDATE`` deciding retry or failure from the row's own counts.

        Example::

            backend.fail(session, table, 42, "boom", token, backoff=DEFAULT_BACKOFF, retry=True)
        """
        values = failure_values(table, bindparam("message", type_=Text), backoff, retry=retry)
        stmt = update(table).where(_owned(table, task_id, token)).values(**values)
        rows = _freeing_slots(session, table, stmt, {"message": message}, table.c.status)
        return None if not rows else TaskStatus(rows[0].status)

    def set_progress(
        self,
        session: Session,
        table: Table,
        task_id: int,
        progress: int,
        token: uuid.UUID | None,
        *,
        relaxed_commit: bool,
    ) -> bool:
        """One ``UPDATE`` of ``progress``.

        Example::

            backend.set_progress(session, table, 42, 50, token, relaxed_commit=False)
        """
        c = table.c
        if token is None:
            condition = and_(c.id == task_id, active(table))
        else:
            condition = _owned(table, task_id, token)
        stmt = update(table).where(condition).values(progress=progress).returning(c.id)
        return session.execute(stmt).first() is not None

    def renew_leases(
        self,
        session: Session,
        table: Table,
        leases: Sequence[Lease],
        lease: timedelta,
        worker: Mapping[str, Any] | None = None,
    ) -> set[int]:
        """One ``UPDATE`` over the (id, token) pairs (and the worker's registration).

        Example::

            backend.renew_leases(session, table, [(42, token)], timedelta(seconds=30))
        """
        renewed: set[int] = set()
        if leases:
            stmt = (
                update(table)
                .where(_leased(table, leases))
                .values(lease_expires_at=after(lease.total_seconds()))
                .returning(table.c.id)
            )
            renewed = {int(task_id) for task_id in session.execute(stmt).scalars()}
        if worker is not None:
            self.record_worker(session, table, worker, lease)
        return renewed

    def record_starts(self, session: Session, table: Table, leases: Sequence[Lease]) -> set[int]:
        """One ``UPDATE`` of ``started_at``.

        Example::

            backend.record_starts(session, table, [(42, token)])
        """
        stmt = (
            update(table)
            .where(_leased(table, leases), table.c.started_at.is_(None))
            .values(started_at=now())
            .returning(table.c.id)
        )
        return {int(task_id) for task_id in session.execute(stmt).scalars()}

    def release(
        self, session: Session, table: Table, leases: Sequence[Lease], *, channel: str | None
    ) -> set[int]:
        """One ``UPDATE`` handing the tasks back, then their slots freed.

        Example::

            backend.release(session, table, [(42, token)], channel=None)
        """
        stmt = (
            update(table)
            .where(_leased(table, leases))
            .values(
                status=TaskStatus.PENDING,
                progress=0,
                started_at=None,
                lease_owner=None,
                **_LEASE_CLEARED,
            )
        )
        return {int(row.id) for row in _freeing_slots(session, table, stmt, {})}

    def rescue(
        self, session: Session, table: Table, *, limit: int, channel: str | None
    ) -> dict[int, TaskStatus]:
        """One ``UPDATE`` of up to ``limit`` expired leases, then their slots freed.

        Example::

            backend.rescue(session, table, limit=1000, channel=None)  # {17: TaskStatus.PENDING}
        """
        c = table.c
        expired = (
            select(c.id)
            .where(c.status == TaskStatus.IN_PROGRESS, c.lease_expires_at < now())
            .order_by(c.lease_expires_at)
            .limit(limit)
        )
        values = failure_values(
            table,
            literal(_RESCUE_MESSAGE, Text),
            None,
            retry=True,
            unstarted_message=UNSTARTED_RESCUE,
        )
        stmt = update(table).where(c.id.in_(expired.scalar_subquery())).values(**values)
        rows = _freeing_slots(session, table, stmt, {}, c.status)
        return {int(row.id): TaskStatus(row.status) for row in rows}

    # ------------------------------------------------------------------ operator actions

    def cancel(self, session: Session, table: Table, task_id: int) -> bool:
        """One ``UPDATE`` (a running task's lease revoked), then its slot freed.

        Example::

            backend.cancel(session, table, 42)  # True
        """
        c = table.c
        stmt = (
            update(table)
            .where(c.id == task_id, c.status.in_([TaskStatus.PENDING, TaskStatus.IN_PROGRESS]))
            .values(status=TaskStatus.CANCELLED, completed_at=now(), **_LEASE_CLEARED)
        )
        return bool(_freeing_slots(session, table, stmt, {}))

    def discard(self, session: Session, table: Table, task_id: int) -> bool:
        """``DELETE`` of a finished task.

        Example::

            backend.discard(session, table, 42)  # True
        """
        c = table.c
        stmt = delete(table).where(c.id == task_id, c.status.in_(FINISHED_STATUSES))
        return session.execute(stmt.returning(c.id)).first() is not None

    def retry(
        self,
        session: Session,
        table: Table,
        *,
        task_id: int | None,
        task_type: str | None,
        channel: str | None,
        matching: TaskQuery | None = None,
    ) -> list[int]:
        """One ``UPDATE`` of the failed tasks (the newest of those sharing a dedupe key
        that no active task holds).

        Example::

            backend.retry(session, table, task_id=None, task_type="webhook", channel=None)
        """
        stmt = _portable.retry_statement(
            table, task_id=task_id, task_type=task_type, matching=matching, now=now()
        ).returning(table.c.id)
        return sorted(int(found) for found in session.execute(stmt).scalars())

    def dedupe_holder(self, session: Session, table: Table, task_id: int) -> int | None:
        """The active task holding failed task ``task_id``'s dedupe key.

        Example::

            backend.dedupe_holder(session, table, 42)  # 57
        """
        c = table.c
        holder = table.alias("holder")
        stmt = select(holder.c.id).where(
            c.id == task_id,
            holder.c.id != c.id,
            holder.c.type == c.type,
            holder.c.dedupe_key == c.dedupe_key,
            holder.c.status.in_(ACTIVE_STATUSES),
        )
        found = session.execute(stmt).scalar()
        return None if found is None else int(found)

    def diagnose(
        self, session: Session, table: Table, task_id: int
    ) -> tuple[str, uuid.UUID | None] | None:
        """The task's status and lease token.

        Example::

            backend.diagnose(session, table, 42)  # ('completed', None)
        """
        stmt = select(table.c.status, table.c.lease_token).where(table.c.id == task_id)
        found = session.execute(stmt).first()
        return None if found is None else (str(found[0]), found[1])

    def purge(
        self, session: Session, table: Table, *, older_than: timedelta, batch_size: int
    ) -> int:
        """Delete one batch of old finished tasks.

        Example::

            backend.purge(session, table, older_than=timedelta(days=7), batch_size=1000)
        """
        c = table.c
        batch = select(c.id).where(finished_before(table, older_than)).limit(batch_size)
        stmt = delete(table).where(c.id.in_(batch.scalar_subquery()))
        return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def count_purgeable(self, session: Session, table: Table, *, older_than: timedelta) -> int:
        """Count old finished tasks.

        Example::

            backend.count_purgeable(session, table, older_than=timedelta(days=7))
        """
        stmt = select(func.count()).select_from(table).where(finished_before(table, older_than))
        return int(session.execute(stmt).scalar_one())

    def progress_of(
        self, session: Session, table: Table, task_type: str, match: Mapping[str, Any]
    ) -> int | None:
        """Progress of the newest active task whose payload has every key of ``match``
        with that value (compared as decoded JSON).

        Example::

            backend.progress_of(session, table, "data_export", {"project_id": 7})  # 45
        """
        c = table.c
        stmt = (
            select(c.progress, c.payload)
            .where(c.type == task_type, active(table))
            .order_by(c.created_at.desc(), c.id.desc())
        )
        for progress, payload in session.execute(stmt):
            if _contains(payload, match):
                return int(progress)
        return None

    # ------------------------------------------------------------------ schedules

    def clock(self, session: Session) -> datetime:
        """The database clock.

        Example::

            now = backend.clock(session)
        """
        found: datetime = session.execute(select(now())).scalar_one()
        return found

    def sync_schedules(
        self, session: Session, table: Table, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """One ``INSERT ... ON CONFLICT (name) DO UPDATE`` per schedule.

        Example::

            backend.sync_schedules(session, schedules, [{"name": "report", ...}])
        """
        if not rows:
            return
        stmt = sqlite.insert(table).values(carried_at=now())
        excluded = stmt.excluded
        timing_changed = or_(
            *(table.c[name].is_distinct_from(excluded[name]) for name in _TIMING_COLUMNS)
        )
        definition = {name: excluded[name] for name in _DEFINITION_COLUMNS}
        next_fire = case(
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
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.name],
            set_={**definition, "carried_at": now(), "next_fire_at": next_fire},
        )
        for row in rows:
            session.execute(stmt, dict(row))

    def due_schedules(
        self, session: Session, table: Table, names: Sequence[str]
    ) -> Sequence[Row[Any]]:
        """The due ones, after taking the write lock (the fire is written in the same
        transaction, so one worker fires each time).

        Example::

            backend.due_schedules(session, schedules, ["report"])
        """
        _take_write_lock(session, table)
        c = table.c
        stmt = (
            select(c.name, c.next_fire_at, c.last_fire_at, c.last_task_id)
            .where(c.name.in_(names), c.paused.is_(false()), c.next_fire_at <= now())
            .order_by(c.name)
        )
        return _all(session, stmt)

    def record_fire(
        self,
        session: Session,
        table: Table,
        name: str,
        *,
        next_fire_at: datetime,
        last_fire_at: datetime | None,
        last_task_id: int | None,
    ) -> None:
        """One ``UPDATE`` of the schedule's row.

        Example::

            backend.record_fire(session, schedules, "report", next_fire_at=t, last_fire_at=f, last_task_id=7)
        """
        session.execute(
            update(table)
            .where(table.c.name == name)
            .values(next_fire_at=next_fire_at, last_fire_at=last_fire_at, last_task_id=last_task_id)
        )

    def next_fire(
        self, session: Session, table: Table, names: Sequence[str]
    ) -> tuple[datetime | None, datetime]:
        """``min(next_fire_at)`` and the clock.

        Example::

            soonest, now = backend.next_fire(session, schedules, ["report"])
        """
        c = table.c
        stmt = select(func.min(c.next_fire_at).label("soonest"), now()).where(
            c.name.in_(names), c.paused.is_(false())
        )
        soonest, clock = session.execute(stmt).one()
        return soonest, clock

    def schedules(
        self, session: Session, table: Table, name: str | None = None
    ) -> Sequence[Row[Any]]:
        """The rows, by name.

        Example::

            backend.schedules(session, schedules)
        """
        stmt = select(table).order_by(table.c.name)
        return session.execute(stmt if name is None else stmt.where(table.c.name == name)).all()

    def set_schedule_paused(self, session: Session, table: Table, name: str, paused: bool) -> bool:
        """One ``UPDATE ... RETURNING name``.

        Example::

            backend.set_schedule_paused(session, schedules, "report", True)
        """
        stmt = update(table).where(table.c.name == name).values(paused=paused)
        return session.execute(stmt.returning(table.c.name)).first() is not None

    # ------------------------------------------------------------------ flow controls

    def set_paused(self, session: Session, table: Table, task_type: str, paused: bool) -> None:
        """One upsert of the type's controls row.

        Example::

            backend.set_paused(session, controls, "export", True)
        """
        values = {"task_type": task_type, "paused": paused, "updated_at": now()}
        session.execute(upsert(table, "task_type", values, ["paused", "updated_at"]))

    def paused_types(self, session: Session, table: Table) -> list[str]:
        """The paused rows.

        Example::

            backend.paused_types(session, controls)  # ['export']
        """
        stmt = select(table.c.task_type).where(table.c.paused).order_by(table.c.task_type)
        return list(session.scalars(stmt))

    def set_rate_limit(
        self, session: Session, table: Table, task_type: str, limit: int, period_seconds: float
    ) -> None:
        """One upsert of the type's controls row.

        Example::

            backend.set_rate_limit(session, controls, "webhook", 20, 1.0)
        """
        values = {
            "task_type": task_type,
            "rate_limit": limit,
            "rate_period_seconds": period_seconds,
            "updated_at": now(),
        }
        updated = ["rate_limit", "rate_period_seconds", "updated_at"]
        session.execute(upsert(table, "task_type", values, updated))

    def clear_rate_limit(self, session: Session, table: Table, task_type: str) -> bool:
        """One ``UPDATE ... RETURNING``.

        Example::

            backend.clear_rate_limit(session, controls, "webhook")
        """
        c = table.c
        stmt = (
            update(table)
            .where(c.task_type == task_type, c.rate_limit.is_not(None))
            .values(rate_limit=None, rate_period_seconds=None, rate_starts=None, updated_at=now())
            .returning(c.task_type)
        )
        return session.execute(stmt).first() is not None

    def rate_limits(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """The rate-limited types.

        Example::

            backend.rate_limits(session, controls)
        """
        c = table.c
        stmt = (
            select(c.task_type, c.rate_limit, c.rate_period_seconds, c.rate_starts, c.paused)
            .where(c.rate_limit.is_not(None))
            .order_by(c.task_type)
        )
        return _all(session, stmt)

    def lock_rate_budget(self, session: Session, table: Table, task_type: str) -> Row[Any] | None:
        """The type's budget, after taking the write lock (which the whole claim holds).

        Example::

            row = backend.lock_rate_budget(session, controls, "webhook")
        """
        _take_write_lock(session, table)
        c = table.c
        stmt = select(c.rate_limit, c.rate_period_seconds, c.rate_starts, now()).where(
            c.task_type == task_type, c.rate_limit.is_not(None)
        )
        found = session.execute(stmt).first()
        if found is None:
            return None
        limit, period, starts, clock = found
        # SQLite's clock is read per statement: the claim that follows records its starts
        # at this very instant (as PostgreSQL's transaction clock would), so the budget
        # and the stored start times agree to the microsecond
        session.info[_RATE_CLOCK] = (session.get_transaction(), clock)
        return typing.cast("Row[Any]", _RateBudget(limit, period, starts, clock.timestamp()))

    def record_rate_starts(
        self, session: Session, table: Table, task_type: str, starts: list[list[float]]
    ) -> None:
        """One ``UPDATE``.

        Example::

            backend.record_rate_starts(session, controls, "webhook", [[1765000000.5, 3]])
        """
        session.execute(
            update(table)
            .where(table.c.task_type == task_type)
            .values(rate_starts=starts, updated_at=now())
        )

    def add_key_slots(self, session: Session, table: Table, limits: Mapping[str, int]) -> None:
        """``INSERT ... ON CONFLICT DO NOTHING`` of each key's slots.

        Example::

            backend.add_key_slots(session, table, {"customer:42": 1})
        """
        slots = key_slots_table(table)
        rows = [
            {"concurrency_key": key, "slot": slot}
            for key in sorted(limits)
            for slot in range(1, limits[key] + 1)
        ]
        if rows:
            session.execute(sqlite.insert(slots).on_conflict_do_nothing(), rows)

    def has_key_slots(self, session: Session, table: Table) -> bool:
        """``SELECT EXISTS (...)``.

        Example::

            backend.has_key_slots(session, table)  # False
        """
        slots = key_slots_table(table)
        return bool(session.execute(select(exists().select_from(slots))).scalar())

    def free_orphaned_slots(self, session: Session, table: Table) -> list[str]:
        """One ``UPDATE`` of slots held by tasks no longer in progress.

        Example::

            backend.free_orphaned_slots(session, table)  # []
        """
        c = table.c
        slots = key_slots_table(table)
        s = slots.c
        holding = exists().where(c.id == s.task_id, c.status == TaskStatus.IN_PROGRESS)
        stmt = (
            update(slots)
            .where(s.task_id.is_not(None), s.claimed_at < before(_ORPHANED_SLOT_AGE), ~holding)
            .values(task_id=None, claimed_at=None)
            .returning(s.concurrency_key)
        )
        return sorted(set(session.execute(stmt).scalars()))

    def keys_at_limit(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """Keys whose every slot is taken.

        Example::

            backend.keys_at_limit(session, table)
        """
        return _all(session, _portable.keys_at_limit_statement(table, now=now()))

    def record_worker(
        self, session: Session, table: Table, worker: Mapping[str, Any], lease: timedelta
    ) -> None:
        """One upsert of the worker's row.

        Example::

            backend.record_worker(session, table, {"worker_id": "w1", ...}, timedelta(minutes=1))
        """
        workers = workers_table(table)
        values = {
            **{name: worker[name] for name in _WORKER_COLUMNS},
            "heartbeat_at": now(),
            "expires_at": after(lease.total_seconds()),
        }
        session.execute(upsert(workers, "worker_id", values, ["heartbeat_at", "expires_at"]))

    def remove_worker(self, session: Session, table: Table, worker_id: str) -> None:
        """One ``DELETE``.

        Example::

            backend.remove_worker(session, table, "w1")
        """
        workers = workers_table(table)
        session.execute(delete(workers).where(workers.c.worker_id == worker_id))

    def live_workers(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """The unexpired registrations, oldest first.

        Example::

            backend.live_workers(session, table)
        """
        workers = workers_table(table)
        stmt = (
            select(workers)
            .where(workers.c.expires_at > now())
            .order_by(workers.c.started_at, workers.c.worker_id)
        )
        return _all(session, stmt)

    def forget_dead_workers(self, session: Session, table: Table) -> list[str]:
        """One ``DELETE ... RETURNING``.

        Example::

            backend.forget_dead_workers(session, table)  # []
        """
        workers = workers_table(table)
        stmt = delete(workers).where(workers.c.expires_at <= now())
        return list(session.execute(stmt.returning(workers.c.worker_id)).scalars())

    # ------------------------------------------------------------------ monitoring reads

    def status_counts(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """Tasks per type and status.

        Example::

            backend.status_counts(session, table)  # [('email', 'pending', 3)]
        """
        c = table.c
        stmt = (
            select(c.type, c.status, func.count().label("total"))
            .group_by(c.type, c.status)
            .order_by(c.type, c.status)
        )
        return _all(session, stmt)

    def queue_depth(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """Ready and scheduled tasks per type.

        Example::

            backend.queue_depth(session, table)  # [('email', 3, 0, 1.5)]
        """
        c = table.c
        due = c.run_at <= now()
        oldest = func.max(seconds_between(now(), c.run_at)).filter(due)
        stmt = (
            select(
                c.type,
                func.count().filter(due).label("ready"),
                func.count().filter(c.run_at > now()).label("scheduled"),
                func.coalesce(oldest, 0).label("oldest_ready_seconds"),
            )
            .where(c.status == TaskStatus.PENDING)
            .group_by(c.type)
            .order_by(c.type)
        )
        return _all(session, stmt)

    def unclaimed_types(self, session: Session, table: Table, *, since: timedelta) -> list[str]:
        """Types with ready tasks that no worker claimed within ``since``.

        Example::

            backend.unclaimed_types(session, table, since=timedelta(hours=1))  # ['export']
        """
        c = table.c
        claimed = table.alias("claimed")
        recently_claimed = (
            select(claimed.c.id)
            .where(
                claimed.c.type == c.type,
                or_(
                    claimed.c.status == TaskStatus.IN_PROGRESS,
                    claimed.c.started_at >= before(since),
                ),
            )
            .exists()
        )
        stmt = (
            select(c.type)
            .where(c.status == TaskStatus.PENDING, c.run_at <= now())
            .group_by(c.type)
            .having(~recently_claimed)
            .order_by(c.type)
        )
        return list(session.execute(stmt).scalars())

    def stuck_tasks(
        self, session: Session, table: Table, *, running_longer_than: timedelta, limit: int
    ) -> Sequence[Row[Any]]:
        """Long-running tasks and expired leases.

        Example::

            backend.stuck_tasks(session, table, running_longer_than=timedelta(hours=1), limit=10)
        """
        c = table.c
        expired = c.lease_expires_at < now()
        stmt = (
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
                or_(c.started_at < before(running_longer_than), expired),
            )
            .order_by(c.started_at)
            .limit(limit)
        )
        return _all(session, stmt)

    def processing_times(
        self, session: Session, table: Table, *, window: timedelta
    ) -> Sequence[Row[Any]]:
        """Average and p95 run times per type (the percentile interpolated as
        PostgreSQL's ``percentile_cont`` does, from the run times read in order).

        Example::

            backend.processing_times(session, table, window=timedelta(hours=1))
        """
        c = table.c
        seconds = seconds_between(c.completed_at, c.started_at)
        stmt = (
            select(c.type, seconds)
            .where(c.status == TaskStatus.COMPLETED, c.completed_at >= before(window))
            .order_by(c.type, seconds)
        )
        per_type: dict[str, list[float]] = {}
        for task_type, run_time in session.execute(stmt):
            if run_time is not None:
                per_type.setdefault(task_type, []).append(float(run_time))
        rows = [
            _ProcessingTimes(task_type, len(times), sum(times) / len(times), _p95(times))
            for task_type, times in per_type.items()
        ]
        return typing.cast("Sequence[Row[Any]]", rows)

    def outcome_counts(
        self, session: Session, table: Table, *, window: timedelta
    ) -> Sequence[Row[Any]]:
        """Outcomes per type over ``window``.

        Example::

            backend.outcome_counts(session, table, window=timedelta(hours=1))
        """
        c = table.c
        retried = case((c.status == TaskStatus.FAILED, c.retry_count > 1), else_=c.retry_count > 0)
        stmt = (
            select(
                c.type,
                func.count().filter(c.status == TaskStatus.COMPLETED).label("completed"),
                func.count().filter(c.status == TaskStatus.FAILED).label("failed"),
                func.count().filter(c.status == TaskStatus.CANCELLED).label("cancelled"),
                func.count().filter(retried).label("retried"),
            )
            .where(c.status.in_(FINISHED_STATUSES), c.completed_at >= before(window))
            .group_by(c.type)
            .order_by(c.type)
        )
        return _all(session, stmt)

    def recent_failures(
        self, session: Session, table: Table, *, limit: int, task_type: str | None
    ) -> Sequence[Row[Any]]:
        """The latest failures.

        Example::

            backend.recent_failures(session, table, limit=10, task_type=None)
        """
        c = table.c
        conditions = [c.status == TaskStatus.FAILED]
        if task_type is not None:
            conditions.append(c.type == task_type)
        stmt = (
            select(c.id, c.type, c.error_message, c.retry_count, c.created_at, c.completed_at)
            .where(*conditions)
            .order_by(c.completed_at.desc(), c.id.desc())
            .limit(limit)
        )
        return _all(session, stmt)

    def browse_tasks(self, session: Session, table: Table, query: TaskQuery) -> Sequence[Row[Any]]:
        """A page of tasks, newest first.

        Example::

            backend.browse_tasks(session, table, TaskQuery(statuses=("failed",)))
        """
        return _all(session, _portable.browse_tasks_statement(table, query))

    def recent_status_counts(
        self, session: Session, table: Table, *, window: timedelta
    ) -> Sequence[Row[Any]]:
        """Tasks in progress, and tasks finished within ``window``.

        Example::

            backend.recent_status_counts(session, table, window=timedelta(hours=24))
        """
        stmt = _portable.recent_status_counts_statement(table, since=before(window))
        return _all(session, stmt)

    def outcome_timeline(
        self, session: Session, table: Table, *, window: timedelta, bucket: timedelta
    ) -> Sequence[Row[Any]]:
        """Outcomes per time bucket.

        Example::

            backend.outcome_timeline(session, table, window=timedelta(hours=1),
                                     bucket=timedelta(minutes=5))
        """
        c = table.c
        seconds = int(bucket.total_seconds())
        epoch = cast(func.strftime("%s", c.completed_at), Integer)  # whole seconds
        start = func.strftime(
            "%Y-%m-%d %H:%M:%S.000000", epoch // seconds * seconds, "unixepoch", type_=Timestamp
        ).label("bucket_start")
        stmt = (
            select(
                start,
                func.count().filter(c.status == TaskStatus.COMPLETED).label("completed"),
                func.count().filter(c.status == TaskStatus.FAILED).label("failed"),
            )
            .where(c.status.in_(FINISHED_STATUSES), c.completed_at >= before(window))
            .group_by(start)
            .order_by(start)
        )
        return _all(session, stmt)

    # ------------------------------------------------------------------ wake-up

    def announce(self, session: Session, channel: str) -> None:
        """Nothing: SQLite has no channels, idle workers poll.

        Example::

            backend.announce(session, "taskqueue_tasks")  # does nothing
        """

    def listener(
        self,
        engine: Engine,
        channel: str,
        wake: Callable[[], None],
        *,
        listening: threading.Event | None = None,
    ) -> Listener:
        """Refused: SQLite has no notification channel (workers poll).

        Example::

            backend.listener(engine, "taskqueue_tasks", event.set)  # UnsupportedDialectError
        """
        raise UnsupportedDialectError("SQLite has no notification channel: workers poll")

    def async_listener(
        self,
        engine: AsyncEngine,
        channel: str,
        wake: Callable[[], None],
        *,
        listening: threading.Event | None = None,
    ) -> AsyncListener:
        """Refused: SQLite has no notification channel (workers poll).

        Example::

            backend.async_listener(engine, "taskqueue_tasks", event.set)  # UnsupportedDialectError
        """
        raise UnsupportedDialectError("SQLite has no notification channel: workers poll")

    # ------------------------------------------------------------------ errors and connections

    def is_permanent_error(self, exc: BaseException) -> bool:
        """Whether SQLite refused a statement for good: a constraint, a value too big,
        an SQL error; a locked or busy database, a failed disk write or a trigger's
        ``RAISE`` (the application's own rule, as PostgreSQL's ``RAISE EXCEPTION``) may
        pass.

        Example::

            backend.is_permanent_error(exc)  # True for a CHECK constraint violation
        """
        orig = getattr(exc, "orig", exc)
        if getattr(orig, "sqlite_errorname", None) == "SQLITE_CONSTRAINT_TRIGGER":
            return False
        return isinstance(
            orig,
            sqlite3.IntegrityError
            | sqlite3.DataError
            | sqlite3.ProgrammingError
            | sqlite3.NotSupportedError,
        )

    def is_driver_error(self, exc: BaseException) -> bool:
        """Raised by ``sqlite3`` or aiosqlite.

        Example::

            backend.is_driver_error(ConnectionError())  # False
        """
        return type(exc).__module__.partition(".")[0] in ("sqlite3", "aiosqlite")

    def create_worker_engine(self, url: URL, *, concurrency: int) -> Engine:
        """See :func:`._connections.create_worker_engine`.

        Example::

            engine = backend.create_worker_engine(make_url("sqlite:///q.db"), concurrency=4)
        """
        return _connections.create_worker_engine(url, concurrency=concurrency)

    def create_async_worker_engine(self, url: URL, *, concurrency: int) -> AsyncEngine:
        """See :func:`._connections.create_async_worker_engine`.

        Example::

            engine = backend.create_async_worker_engine(make_url("sqlite:///q.db"), concurrency=4)
        """
        return _connections.create_async_worker_engine(
            self.default_async_url(url), concurrency=concurrency
        )

    def default_url(self, url: URL) -> URL:
        """``url`` as it is (the standard library's driver).

        Example::

            backend.default_url(make_url("sqlite:///q.db"))  # sqlite:///q.db
        """
        return url

    def default_async_url(self, url: URL) -> URL:
        """``url`` with aiosqlite.

        Example::

            backend.default_async_url(make_url("sqlite:///q.db"))  # sqlite+aiosqlite:///q.db
        """
        return (
            url if url.drivername == "sqlite+aiosqlite" else url.set(drivername="sqlite+aiosqlite")
        )


_TIMING_COLUMNS = ("cron", "every_seconds", "timezone")
_DEFINITION_COLUMNS = (
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
_WORKER_COLUMNS = ("worker_id", "host", "pid", "task_types", "slots", "version")


def _all(session: Session, stmt: Any) -> Sequence[Row[Any]]:
    return session.execute(stmt).all()


#: ``Session.info`` key: the clock a rate-limited claim's budget was read at, with its
#: transaction
_RATE_CLOCK = "taskqueue_sqlite_rate_clock"


def _rate_clock(executor: _Executor) -> datetime | None:
    """The instant :meth:`SQLiteBackend.lock_rate_budget` read in this transaction."""
    if not isinstance(executor, Session):
        return None
    found = executor.info.get(_RATE_CLOCK)
    if found is None or found[0] is not executor.get_transaction():
        return None
    clock: datetime = found[1]
    return clock


def _take_write_lock(executor: _Executor, table: Table) -> None:
    """Take the database's write lock now (a write that changes nothing), so that what
    the transaction reads next cannot change before it writes."""
    first = next(iter(table.primary_key.columns))
    executor.execute(update(table).where(false()).values({first.name: first}))


def _type_params(task_types: Sequence[str] | None) -> tuple[TypeFilter, dict[str, Any]]:
    if task_types is None:
        return "any", {}
    if len(task_types) == 1:
        return "one", {"task_type": task_types[0]}
    return "many", {"task_types": list(task_types)}


def _order(row: Any) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in CLAIM_ORDER)


def _orm_rows(
    executor: _Executor, entity: Any, stmt: Any, params: Mapping[str, Any]
) -> Sequence[Any]:
    assert isinstance(executor, Session)
    orm = select(entity).from_statement(stmt).execution_options(populate_existing=True)
    return executor.execute(orm, params).scalars().all()


def _owned(table: Table, task_id: int, token: uuid.UUID | None) -> Any:
    c = table.c
    condition = and_(c.id == task_id, c.status == TaskStatus.IN_PROGRESS)
    if token is not None:
        condition = and_(condition, c.lease_token == token)
    return condition


def _leased(table: Table, leases: Sequence[Lease]) -> Any:
    c = table.c
    pairs = tuple_(c.id, c.lease_token).in_([(task_id, token) for task_id, token in leases])
    return and_(pairs, c.status == TaskStatus.IN_PROGRESS)


def _completed_values(table: Table, result: Any) -> dict[str, Any]:
    return {
        "status": TaskStatus.COMPLETED,
        "started_at": func.coalesce(table.c.started_at, now()),
        "progress": 100,
        "completed_at": now(),
        "result": result,
        **_LEASE_CLEARED,
    }


def _freeing_slots(
    session: Session, table: Table, stmt: Any, params: Mapping[str, Any], *columns: Any
) -> list[Row[Any]]:
    """Run ``stmt`` (an ``UPDATE`` moving tasks out of ``in_progress``) returning the
    ids, their keys and ``columns``, then free the slots the changed tasks held."""
    c = table.c
    rows = list(session.execute(stmt.returning(c.id, c.concurrency_key, *columns), params))
    _free_slots(session, table, rows)
    return rows


def _free_slots(session: Session, table: Table, rows: Iterable[Any]) -> None:
    holders = [row.id for row in rows if row.concurrency_key is not None]
    if holders:
        slots = key_slots_table(table)
        session.execute(
            update(slots).where(slots.c.task_id.in_(holders)).values(task_id=None, claimed_at=None)
        )


def _delay_in_seconds(values: Mapping[str, Any]) -> dict[str, Any]:
    params = dict(values)
    delay = params.get("run_delay")
    if isinstance(delay, timedelta):
        params["run_delay"] = delay.total_seconds()
    return params


def _contains(payload: Any, match: Mapping[str, Any]) -> bool:
    return isinstance(payload, dict) and all(
        key in payload and payload[key] == value and type(payload[key]) is type(value)
        for key, value in match.items()
    )


def _p95(ordered: list[float]) -> float:
    position = 0.95 * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
