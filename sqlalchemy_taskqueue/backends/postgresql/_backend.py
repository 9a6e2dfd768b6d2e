"""The queue operations on PostgreSQL: :class:`PostgreSQLBackend`.

Each operation runs statements from :mod:`._statements` in the caller's session (or a
worker's own connection) and turns their rows into plain values.  What only PostgreSQL
has is used where it pays: ``UPDATE ... RETURNING`` claims in one statement, arrays
through ``unnest()`` for batches, ``INSERT ... ON CONFLICT`` with the partial unique
index for dedupe, ``pg_notify`` in the same statement as the insert, and
``synchronous_commit = off`` for transactions that only claim.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Insert, Row, Table, TextClause, exists, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from sqlalchemy_taskqueue._concurrency import key_slots_table
from sqlalchemy_taskqueue.backends._portable import checked_json_text, insert_columns
from sqlalchemy_taskqueue.backends.base import (
    AsyncListener,
    Capabilities,
    ClaimRequest,
    Lease,
    Listener,
    TaskQuery,
)
from sqlalchemy_taskqueue.backends.postgresql._browsing import (
    browse_tasks_statement,
    outcome_timeline_statement,
    recent_status_counts_statement,
)
from sqlalchemy_taskqueue.backoff import BackoffPolicy
from sqlalchemy_taskqueue.status import TaskStatus

from . import (
    _connections,
    _embedded,
    _key_slots,
    _migrations,
    _statements,
    _wakeup,
    _workers,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["PostgreSQLBackend"]

#: Characters of payload JSON sent in one ``insert_many`` statement (PostgreSQL caps a
#: single ``jsonb`` value at 256 MiB; four bytes per character at most).
_MAX_BATCH_CHARACTERS = 32 * 1024 * 1024

#: Rounds of insert-then-look-up before ``insert_if_absent`` gives up (the holder of the
#: key may finish between the conflict and the lookup).
_DEDUPE_ROUNDS = 5
#: Conflicts with the unique index a retry statement meets before it gives up.
_RETRY_COLLISIONS = 5


class PostgreSQLBackend:
    """PostgreSQL 12+ through psycopg2 (the default), psycopg 3 or asyncpg.

    Example::

        from sqlalchemy_taskqueue.backends import backend_for

        backend = backend_for(engine.dialect)  # a PostgreSQLBackend on PostgreSQL
    """

    name = "postgresql"
    capabilities = Capabilities(
        update_returning=True,
        skip_locked=True,
        listen=True,
        partial_indexes=True,
        relaxed_commit=True,
    )
    url_schemes: tuple[str, ...] = ("postgresql", "postgres")
    clock_sql = "now()"
    claim_order: tuple[str, ...] = _statements.CLAIM_ORDER
    listen_drivers: tuple[str, ...] = _wakeup.LISTEN_DRIVERS
    async_listen_drivers: tuple[str, ...] = _wakeup.ASYNC_LISTEN_DRIVERS

    # ------------------------------------------------------------------ schema

    def json_type(self, dialect: Dialect) -> TypeEngine[Any]:
        """``jsonb``: compact, indexable, and compared by value.

        Example::

            backend.json_type(engine.dialect)  # JSONB(none_as_null=True)
        """
        return postgresql.JSONB(none_as_null=True)

    def index_options(self, where: str) -> dict[str, Any]:
        """``postgresql_where``: PostgreSQL has partial indexes.

        Example::

            Index("ix", "run_at", **backend.index_options("status = 'pending'"))
        """
        return {f"{self.name}_where": text(where)}

    # ------------------------------------------------------------------ frozen migrations, version 1

    def json_type_v1(self) -> TypeEngine[Any]:
        """See :func:`._migrations.json_type_v1`.

        Example::

            sa.Column("payload", backend.json_type_v1(), nullable=False)
        """
        return _migrations.json_type_v1()

    def index_options_v1(self, where: str) -> dict[str, Any]:
        """See :func:`._migrations.index_options_v1`.

        Example::

            op.create_index("ix", "tasks", ["run_at"], **backend.index_options_v1(where))
        """
        return _migrations.index_options_v1(where)

    def server_now_v1(self) -> TextClause:
        """``now()``.

        Example::

            sa.Column("created_at", sa.DateTime(timezone=True), server_default=backend.server_now_v1())
        """
        return text(self.clock_sql)

    def tune_statements_v1(self, qualified_table: str) -> list[str]:
        """See :func:`._migrations.tune_statements_v1`.

        Example::

            backend.tune_statements_v1('"tasks"')  # ['ALTER TABLE "tasks" SET (fillfactor = 80, ...)']
        """
        return _migrations.tune_statements_v1(qualified_table)

    def untune_statements_v1(self, qualified_table: str) -> list[str]:
        """See :func:`._migrations.untune_statements_v1`.

        Example::

            backend.untune_statements_v1('"tasks"')
        """
        return _migrations.untune_statements_v1(qualified_table)

    # ------------------------------------------------------------------ enqueue

    def constant_defaults(self, table: Table) -> Mapping[str, Any]:
        """See :func:`._statements.constant_defaults`.

        Example::

            backend.constant_defaults(Task.__table__)["status"]  # 'pending'
        """
        return _statements.constant_defaults(table)

    def insert_one(
        self, session: Session, table: Table, values: Mapping[str, Any], *, channel: str | None
    ) -> int:
        """One ``INSERT ... RETURNING id`` (announcing the task in the same statement).

        Example::

            backend.insert_one(session, Task.__table__, {"type": "t", "payload": "{}"}, channel=None)
        """
        values = _without_constant_defaults(table, values)
        stmt = _insert_statement(table, tuple(values), channel)
        return int(session.execute(stmt, values).scalar_one())

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
        """One statement per 32 MiB of payloads, the server unpacking a JSON array (or
        a multi-row insert when a column has a Python-side default to call per row).

        Example::

            backend.insert_many(session, table, {"type": "t"}, [{}], "[{}]", channel=None)
        """
        delayed = "run_delay" in shared
        columns = insert_columns(shared)
        if _has_per_row_defaults(table, columns):
            rows = [{**shared, "payload": payload} for payload in payloads]
            stmt = _statements.insert_rows_statement(table, delayed=delayed)
            ids = [int(task_id) for task_id in session.execute(stmt, rows).scalars()]
        else:
            if isinstance(payload_json, str) and len(payload_json) <= _MAX_BATCH_CHARACTERS:
                chunks: Iterable[str] = [payload_json]
            elif isinstance(payload_json, str):  # checked already: encode them one by one
                chunks = _json_arrays([checked_json_text(payload) for payload in payloads])
            else:
                chunks = _json_arrays(payload_json)
            stmt = _statements.insert_many_statement(table, columns, delayed=delayed)
            ids = []
            for chunk in chunks:  # one parameter per chunk, parsed by the server
                result = session.execute(stmt, {**shared, "payloads": chunk})
                ids.extend(sorted(int(task_id) for task_id in result.scalars()))
        if channel is not None:
            self.announce(session, channel)
        return ids

    def insert_if_absent(
        self, session: Session, table: Table, values: Mapping[str, Any], *, channel: str | None
    ) -> tuple[int, bool] | None:
        """``INSERT ... ON CONFLICT DO NOTHING`` on the partial unique index, then a
        lookup of the holder when it conflicted.

        Example::

            backend.insert_if_absent(session, table, {**values, "dedupe_key": "k"}, channel=None)
        """
        values = _without_constant_defaults(table, values)
        insert = _statements.insert_if_absent_statement(
            table,
            insert_columns(values),
            channel=channel,
            delayed="run_delay" in values,
            payload_text=True,
        )
        lookup = _statements.active_dedupe_lookup_statement(
            table, values["type"], values["dedupe_key"]
        )
        for _ in range(_DEDUPE_ROUNDS):
            created = session.execute(insert, values).first()
            if created is not None:
                return int(created[0]), True
            existing = session.execute(lookup).scalar_one_or_none()
            if existing is not None:
                return int(existing), False
        return None

    # ------------------------------------------------------------------ claim

    def prepare_writes(self, executor: Session | Connection, table: Table) -> None:
        """Nothing: PostgreSQL locks rows, not the database.

        Example::

            backend.prepare_writes(session, Task.__table__)  # does nothing
        """

    def claim(
        self,
        executor: Session | Connection,
        table: Table,
        request: ClaimRequest,
        *,
        entity: Any = None,
    ) -> Sequence[Any]:
        """One ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING *``.

        With ``entity`` (a mapped class; ``executor`` a session) the claimed tasks load
        as its instances, through the ORM; otherwise as rows.

        Example::

            rows = backend.claim(connection, table, ClaimRequest(None, 10, lease, "w1"))
        """
        stmt, params = claim_statement_and_params(table, request)
        if entity is not None:
            assert isinstance(executor, Session)
            return executor.execute(_orm_claim(entity, stmt), params).scalars().all()
        if isinstance(executor, Session):
            return executor.execute(stmt, params).all()
        return executor.execute(stmt, params).all()

    # ------------------------------------------------------------------ outcomes

    def complete(
        self, session: Session, table: Table, task_id: int, result: Any, token: uuid.UUID | None
    ) -> bool:
        """Complete one task (fenced by ``token`` unless ``None``).

        Example::

            backend.complete(session, table, 42, {"rows": 10}, token)
        """
        stmt = _statements.complete_statement(table, fenced=token is not None)
        params = _fenced({"task_id": task_id, "new_result": result}, token)
        return session.execute(stmt, params).first() is not None

    def complete_many(
        self,
        session: Session,
        table: Table,
        leases: Sequence[Lease],
        results: Sequence[str | None],
    ) -> set[int]:
        """Complete a batch in one statement over arrays (fenced per id and token).

        Example::

            backend.complete_many(session, table, [(42, token)], ['{"rows": 10}'])
        """
        params = {**_lease_arrays(leases), "results": list(results)}
        stmt = _statements.complete_many_statement(table)
        return {int(task_id) for task_id in session.execute(stmt, params).scalars()}

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
        stmt = _statements.fail_statement(
            table, fenced=token is not None, backoff=backoff, retry=retry
        )
        row = session.execute(stmt, _fenced({"task_id": task_id, "message": message}, token))
        found = row.first()
        return None if found is None else TaskStatus(found[0])

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
        """An update of ``progress`` alone (a HOT update: no index covers it).

        Example::

            backend.set_progress(session, table, 42, 50, token, relaxed_commit=True)
        """
        stmt = _statements.progress_statement(
            table, fenced=token is not None, relaxed_commit=relaxed_commit
        )
        params = _fenced({"task_id": task_id, "new_progress": progress}, token)
        return session.execute(stmt, params).first() is not None

    def renew_leases(
        self,
        session: Session,
        table: Table,
        leases: Sequence[Lease],
        lease: timedelta,
        worker: Mapping[str, Any] | None = None,
    ) -> set[int]:
        """Extend a batch of leases in one statement (with ``worker``, the same statement
        refreshes the worker's registration).

        Example::

            backend.renew_leases(session, table, [(42, token)], timedelta(seconds=30))
        """
        if worker is None:
            stmt = _statements.renew_leases_statement(table)
        else:
            stmt = _statements.renew_leases_statement(table, registering=True)
        params = {**_lease_arrays(leases), "lease": lease, **(worker or {})}
        return {int(task_id) for task_id in session.execute(stmt, params).scalars()}

    def record_starts(self, session: Session, table: Table, leases: Sequence[Lease]) -> set[int]:
        """Set ``started_at`` of a batch in one statement.

        Example::

            backend.record_starts(session, table, [(42, token)])
        """
        stmt = _statements.record_starts_statement(table)
        return {int(task_id) for task_id in session.execute(stmt, _lease_arrays(leases)).scalars()}

    def release(
        self, session: Session, table: Table, leases: Sequence[Lease], *, channel: str | None
    ) -> set[int]:
        """Hand a batch back in one statement.

        Example::

            backend.release(session, table, [(42, token)], channel=None)
        """
        stmt = _statements.release_statement(table, channel)
        return {int(task_id) for task_id in session.execute(stmt, _lease_arrays(leases)).scalars()}

    def rescue(
        self, session: Session, table: Table, *, limit: int, channel: str | None
    ) -> dict[int, TaskStatus]:
        """Rescue up to ``limit`` expired leases in one statement.

        Example::

            backend.rescue(session, table, limit=1000, channel=None)  # {17: TaskStatus.PENDING}
        """
        stmt = _statements.rescue_statement(table, limit=limit, channel=channel)
        return {int(row[0]): TaskStatus(row[1]) for row in session.execute(stmt)}

    # ------------------------------------------------------------------ operator actions

    def cancel(self, session: Session, table: Table, task_id: int) -> bool:
        """Cancel a pending or running task (a running one's lease revoked).

        Example::

            backend.cancel(session, table, 42)  # True
        """
        return session.execute(_statements.cancel_statement(table, task_id)).first() is not None

    def discard(self, session: Session, table: Table, task_id: int) -> bool:
        """``DELETE`` of a finished task.

        Example::

            backend.discard(session, table, 42)  # True
        """
        stmt = _statements.discard_statement(table, task_id)
        return session.execute(stmt).first() is not None

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
        """Put failed tasks back in the queue.

        The statement leaves failed a task whose dedupe key an active task holds, as far
        as its snapshot shows.  A task that took the key later, in a transaction still
        open then, is only seen by the unique index, which waits for that transaction
        and, once it commits, refuses the retry.  So the statement runs in a savepoint:
        on such a refusal nothing is changed, the caller's transaction stays usable, and
        the statement runs again with a snapshot that sees the new holder (a fifth
        collision is raised).

        Example::

            backend.retry(session, table, task_id=None, task_type="webhook", channel=None)
        """
        stmt = _statements.retry_statement(
            table, task_id=task_id, task_type=task_type, channel=channel, matching=matching
        )
        collisions = 0
        while True:
            savepoint = session.begin_nested()  # flushes the caller's changes first
            try:
                retried = [int(found) for found in session.execute(stmt).scalars()]
            except IntegrityError:  # the unique index: an active task took a key meanwhile
                savepoint.rollback()
                collisions += 1
                if collisions == _RETRY_COLLISIONS:
                    raise
                continue
            savepoint.commit()
            return retried

    def dedupe_holder(self, session: Session, table: Table, task_id: int) -> int | None:
        """The active task holding failed task ``task_id``'s dedupe key.

        Example::

            backend.dedupe_holder(session, table, 42)  # 57
        """
        holder = session.execute(_statements.duplicate_holder_statement(table, task_id)).scalar()
        return None if holder is None else int(holder)

    def diagnose(
        self, session: Session, table: Table, task_id: int
    ) -> tuple[str, uuid.UUID | None] | None:
        """The task's status and lease token, to explain a write that matched nothing.

        Example::

            backend.diagnose(session, table, 42)  # ('completed', None)
        """
        found = session.execute(_statements.diagnose_statement(table, task_id)).first()
        return None if found is None else (str(found[0]), found[1])

    def purge(
        self, session: Session, table: Table, *, older_than: timedelta, batch_size: int
    ) -> int:
        """Delete one batch of old finished tasks.

        Example::

            backend.purge(session, table, older_than=timedelta(days=7), batch_size=1000)
        """
        stmt = _statements.purge_statement(table, older_than=older_than, batch_size=batch_size)
        return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def count_purgeable(self, session: Session, table: Table, *, older_than: timedelta) -> int:
        """Count old finished tasks.

        Example::

            backend.count_purgeable(session, table, older_than=timedelta(days=7))
        """
        stmt = _statements.purgeable_count_statement(table, older_than=older_than)
        return int(session.execute(stmt).scalar_one())

    def progress_of(
        self, session: Session, table: Table, task_type: str, match: Mapping[str, Any]
    ) -> int | None:
        """Progress of the newest active task whose payload contains ``match`` (``@>``).

        Example::

            backend.progress_of(session, table, "data_export", {"project_id": 7})  # 45
        """
        stmt = _statements.progress_lookup_statement(table, task_type, match)
        progress = session.execute(stmt).scalar_one_or_none()
        return None if progress is None else int(progress)

    # ------------------------------------------------------------------ schedules

    def clock(self, session: Session) -> datetime:
        """``now()``: the transaction's start time.

        Example::

            now = backend.clock(session)
        """
        now: datetime = session.execute(_statements.clock_statement()).scalar_one()
        return now

    def sync_schedules(
        self, session: Session, table: Table, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """One ``INSERT ... ON CONFLICT (name) DO UPDATE`` for all of them.

        Example::

            backend.sync_schedules(session, schedules, [{"name": "report", ...}])
        """
        if rows:
            session.execute(_statements.sync_schedules_statement(table), list(rows))

    def due_schedules(
        self, session: Session, table: Table, names: Sequence[str]
    ) -> Sequence[Row[Any]]:
        """``SELECT ... FOR UPDATE SKIP LOCKED`` of the due ones.

        Example::

            backend.due_schedules(session, schedules, ["report"])
        """
        return session.execute(_statements.due_schedules_statement(table, names)).all()

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
        params = {
            "schedule": name,
            "next_fire_at": next_fire_at,
            "last_fire_at": last_fire_at,
            "last_task_id": last_task_id,
        }
        session.execute(_statements.record_fire_statement(table), params)

    def next_fire(
        self, session: Session, table: Table, names: Sequence[str]
    ) -> tuple[datetime | None, datetime]:
        """``min(next_fire_at)`` and ``now()`` in one statement.

        Example::

            soonest, now = backend.next_fire(session, schedules, ["report"])
        """
        soonest, now = session.execute(_statements.next_fire_statement(table, names)).one()
        return soonest, now

    def schedules(
        self, session: Session, table: Table, name: str | None = None
    ) -> Sequence[Row[Any]]:
        """The rows, by name.

        Example::

            backend.schedules(session, schedules)
        """
        return session.execute(_statements.schedules_statement(table, name)).all()

    def set_schedule_paused(self, session: Session, table: Table, name: str, paused: bool) -> bool:
        """One ``UPDATE ... RETURNING name``.

        Example::

            backend.set_schedule_paused(session, schedules, "report", True)
        """
        stmt = _statements.pause_schedule_statement(table, name, paused=paused)
        return session.execute(stmt).first() is not None

    # ------------------------------------------------------------------ flow controls

    def set_paused(self, session: Session, table: Table, task_type: str, paused: bool) -> None:
        """One ``INSERT ... ON CONFLICT (task_type) DO UPDATE``.

        Example::

            backend.set_paused(session, controls, "export", True)
        """
        session.execute(
            _statements.set_paused_statement(table), {"task_type": task_type, "paused": paused}
        )

    def paused_types(self, session: Session, table: Table) -> list[str]:
        """One ``SELECT`` of the paused rows.

        Example::

            backend.paused_types(session, controls)  # ['export']
        """
        return list(session.scalars(_statements.paused_types_statement(table)))

    def set_rate_limit(
        self, session: Session, table: Table, task_type: str, limit: int, period_seconds: float
    ) -> None:
        """One ``INSERT ... ON CONFLICT (task_type) DO UPDATE``.

        Example::

            backend.set_rate_limit(session, controls, "webhook", 20, 1.0)
        """
        params = {
            "task_type": task_type,
            "rate_limit": limit,
            "rate_period_seconds": period_seconds,
        }
        session.execute(_statements.set_rate_limit_statement(table), params)

    def clear_rate_limit(self, session: Session, table: Table, task_type: str) -> bool:
        """One ``UPDATE ... RETURNING``.

        Example::

            backend.clear_rate_limit(session, controls, "webhook")
        """
        stmt = _statements.clear_rate_limit_statement(table, task_type)
        return session.execute(stmt).first() is not None

    def add_key_slots(self, session: Session, table: Table, limits: Mapping[str, int]) -> None:
        """One ``INSERT ... SELECT ... generate_series ... ON CONFLICT DO NOTHING``.

        Example::

            backend.add_key_slots(session, table, {"customer:42": 1})
        """
        keys = sorted(limits)  # one order for every writer
        params = {"keys": keys, "limits": [limits[key] for key in keys]}
        session.execute(_key_slots.add_key_slots_statement(table), params)

    def has_key_slots(self, session: Session, table: Table) -> bool:
        """``SELECT EXISTS (...)`` on the key slots table.

        Example::

            backend.has_key_slots(session, table)  # False
        """
        slots = key_slots_table(table)
        return bool(session.execute(select(exists().select_from(slots))).scalar())

    def free_orphaned_slots(self, session: Session, table: Table) -> list[str]:
        """One ``UPDATE``.

        Example::

            backend.free_orphaned_slots(session, table)  # []
        """
        stmt = _key_slots.free_orphaned_slots_statement(table)
        return sorted(set(session.execute(stmt).scalars()))

    def keys_at_limit(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """One ``SELECT`` grouping the slots by key.

        Example::

            backend.keys_at_limit(session, table)
        """
        return session.execute(_key_slots.keys_at_limit_statement(table)).all()

    def record_worker(
        self, session: Session, table: Table, worker: Mapping[str, Any], lease: timedelta
    ) -> None:
        """One ``INSERT ... ON CONFLICT DO UPDATE``.

        Example::

            backend.record_worker(session, table, {"worker_id": "w1", ...}, timedelta(minutes=1))
        """
        session.execute(_workers.record_worker_statement(table), {**worker, "lease": lease})

    def remove_worker(self, session: Session, table: Table, worker_id: str) -> None:
        """One ``DELETE``.

        Example::

            backend.remove_worker(session, table, "w1")
        """
        session.execute(_workers.remove_worker_statement(table, worker_id))

    def live_workers(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """One ``SELECT``.

        Example::

            backend.live_workers(session, table)
        """
        return session.execute(_workers.live_workers_statement(table)).all()

    def forget_dead_workers(self, session: Session, table: Table) -> list[str]:
        """One ``DELETE ... RETURNING``.

        Example::

            backend.forget_dead_workers(session, table)  # []
        """
        return list(session.execute(_workers.forget_dead_workers_statement(table)).scalars())

    def rate_limits(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """One ``SELECT``.

        Example::

            backend.rate_limits(session, controls)
        """
        return session.execute(_statements.rate_limits_statement(table)).all()

    def lock_rate_budget(self, session: Session, table: Table, task_type: str) -> Row[Any] | None:
        """``SELECT ... FOR UPDATE SKIP LOCKED``.

        Example::

            row = backend.lock_rate_budget(session, controls, "webhook")
        """
        return session.execute(_statements.lock_rate_budget_statement(table, task_type)).first()

    def record_rate_starts(
        self, session: Session, table: Table, task_type: str, starts: list[list[float]]
    ) -> None:
        """One ``UPDATE``.

        Example::

            backend.record_rate_starts(session, controls, "webhook", [[1765000000.5, 3]])
        """
        session.execute(_statements.record_rate_starts_statement(table, task_type, starts))

    # ------------------------------------------------------------------ monitoring reads

    def status_counts(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """Tasks per type and status.

        Example::

            backend.status_counts(session, table)  # [('email', 'pending', 3)]
        """
        return session.execute(_statements.status_counts_statement(table)).all()

    def queue_depth(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """Ready and scheduled tasks per type.

        Example::

            backend.queue_depth(session, table)  # [('email', 3, 0, 1.5)]
        """
        return session.execute(_statements.queue_depth_statement(table)).all()

    def unclaimed_types(self, session: Session, table: Table, *, since: timedelta) -> list[str]:
        """Types with ready tasks that no worker claimed within ``since``.

        Example::

            backend.unclaimed_types(session, table, since=timedelta(hours=1))  # ['export']
        """
        stmt = _statements.unclaimed_types_statement(table, since=since)
        return list(session.execute(stmt).scalars())

    def stuck_tasks(
        self, session: Session, table: Table, *, running_longer_than: timedelta, limit: int
    ) -> Sequence[Row[Any]]:
        """Long-running tasks and expired leases.

        Example::

            backend.stuck_tasks(session, table, running_longer_than=timedelta(hours=1), limit=10)
        """
        stmt = _statements.stuck_tasks_statement(
            table, running_longer_than=running_longer_than, limit=limit
        )
        return session.execute(stmt).all()

    def processing_times(
        self, session: Session, table: Table, *, window: timedelta
    ) -> Sequence[Row[Any]]:
        """Average and p95 run times per type.

        Example::

            backend.processing_times(session, table, window=timedelta(hours=1))
        """
        return session.execute(_statements.processing_times_statement(table, window=window)).all()

    def outcome_counts(
        self, session: Session, table: Table, *, window: timedelta
    ) -> Sequence[Row[Any]]:
        """Outcomes per type over ``window``.

        Example::

            backend.outcome_counts(session, table, window=timedelta(hours=1))
        """
        return session.execute(_statements.outcome_counts_statement(table, window=window)).all()

    def recent_failures(
        self, session: Session, table: Table, *, limit: int, task_type: str | None
    ) -> Sequence[Row[Any]]:
        """The latest failures.

        Example::

            backend.recent_failures(session, table, limit=10, task_type=None)
        """
        stmt = _statements.recent_failures_statement(table, limit=limit, task_type=task_type)
        return session.execute(stmt).all()

    def browse_tasks(self, session: Session, table: Table, query: TaskQuery) -> Sequence[Row[Any]]:
        """A page of tasks, newest first, read without locks.

        Example::

            backend.browse_tasks(session, table, TaskQuery(statuses=("failed",)))
        """
        return session.execute(browse_tasks_statement(table, query)).all()

    def recent_status_counts(
        self, session: Session, table: Table, *, window: timedelta
    ) -> Sequence[Row[Any]]:
        """Tasks in progress and finished within ``window``, through partial indexes.

        Example::

            backend.recent_status_counts(session, table, window=timedelta(hours=24))
        """
        return session.execute(recent_status_counts_statement(table, window=window)).all()

    def outcome_timeline(
        self, session: Session, table: Table, *, window: timedelta, bucket: timedelta
    ) -> Sequence[Row[Any]]:
        """Outcomes per time bucket.

        Example::

            backend.outcome_timeline(session, table, window=timedelta(hours=1),
                                     bucket=timedelta(minutes=5))
        """
        stmt = outcome_timeline_statement(table, window=window, bucket=bucket)
        return session.execute(stmt).all()

    # ------------------------------------------------------------------ wake-up

    def announce(self, session: Session, channel: str) -> None:
        """``pg_notify``: delivered when the transaction commits.

        Example::

            backend.announce(session, "taskqueue_tasks")
        """
        session.execute(_statements.notify_statement(channel))

    def listener(
        self,
        engine: Engine,
        channel: str,
        wake: Callable[[], None],
        *,
        listening: threading.Event | None = None,
    ) -> Listener:
        """A ``LISTEN`` connection on a thread of its own.

        Example::

            backend.listener(engine, "taskqueue_tasks", event.set).start()
        """
        return _wakeup.NotificationListener(engine, channel, wake, listening=listening)

    def async_listener(
        self,
        engine: AsyncEngine,
        channel: str,
        wake: Callable[[], None],
        *,
        listening: threading.Event | None = None,
    ) -> AsyncListener:
        """A ``LISTEN`` connection on a task of the event loop.

        Example::

            backend.async_listener(engine, "taskqueue_tasks", event.set).start()
        """
        return _wakeup.AsyncNotificationListener(engine, channel, wake, listening=listening)

    # ------------------------------------------------------------------ errors and connections

    def is_permanent_error(self, exc: BaseException) -> bool:
        """See :func:`._statements.is_permanent_error` (the SQLSTATE class).

        Example::

            backend.is_permanent_error(exc)  # True for a value over 255 MiB
        """
        return _statements.is_permanent_error(exc)

    def is_driver_error(self, exc: BaseException) -> bool:
        """Raised by psycopg2, psycopg 3 or asyncpg.

        Example::

            backend.is_driver_error(ConnectionError())  # False
        """
        return type(exc).__module__.partition(".")[0] in ("asyncpg", "psycopg", "psycopg2")

    def create_worker_engine(self, url: URL, *, concurrency: int) -> Engine:
        """See :func:`._connections.create_worker_engine`.

        Example::

            engine = backend.create_worker_engine(make_url(url), concurrency=8)
        """
        return _connections.create_worker_engine(url, concurrency=concurrency)

    def create_async_worker_engine(self, url: URL, *, concurrency: int) -> AsyncEngine:
        """See :func:`._connections.create_async_worker_engine`.

        Example::

            engine = backend.create_async_worker_engine(make_url(url), concurrency=8)
        """
        return _connections.create_async_worker_engine(url, concurrency=concurrency)

    def default_url(self, url: URL) -> URL:
        """``url`` with psycopg2 when it names no driver.

        Example::

            backend.default_url(make_url("postgres://app@db/app"))  # postgresql+psycopg2://
        """
        return _embedded.default_url(url)

    def default_async_url(self, url: URL) -> URL:
        """``url`` with asyncpg unless it names psycopg 3 (which is async too).

        Example::

            backend.default_async_url(make_url("postgresql://app@db/app"))  # +asyncpg
        """
        return make_url(_embedded.async_driver_url(url))


def claim_statement_and_params(table: Table, request: ClaimRequest) -> tuple[Any, dict[str, Any]]:
    """The claim statement for ``request`` and its parameters.

    Example::

        stmt, params = claim_statement_and_params(Task.__table__, request)
    """
    params: dict[str, Any] = {
        "limit": request.limit,
        "lease": request.lease,
        "owner": request.owner,
        "token": uuid.uuid4(),
    }
    task_types = request.task_types
    if task_types is None:
        type_filter: _statements.TypeFilter = "any"
    elif len(task_types) == 1:
        type_filter, params["task_type"] = "one", task_types[0]
    else:
        type_filter, params["task_types"] = "many", list(task_types)
    if request.starting is not None:
        params["starting"] = request.starting
    # only options that differ from the defaults: one cache entry per variant
    options = {name: True for name in ("rate_limited", "keyed") if getattr(request, name)}
    stmt = _statements.claim_statement(
        table,
        type_filter=type_filter,
        relaxed_commit=request.relaxed_commit,
        prefetch=request.starting is not None,
        **options,
    )
    return stmt, params


def _fenced(params: dict[str, Any], token: uuid.UUID | None) -> dict[str, Any]:
    if token is not None:
        params["token"] = token
    return params


@functools.cache
def _orm_claim(model: Any, stmt: Any) -> Any:
    """The claim statement loading ``model`` instances (cached with the statement)."""
    return select(model).from_statement(stmt).execution_options(populate_existing=True)


@functools.cache
def _insert_statement(table: Table, names: tuple[str, ...], channel: str | None) -> Insert:
    """The ``insert_one`` statement for a row of parameters ``names`` (in any order)."""
    return _statements.insert_statement(
        table,
        insert_columns(names),
        channel=channel,
        delayed="run_delay" in names,
        payload_text=True,
    )


@functools.cache
def _integer_constant_defaults(table: Table) -> tuple[tuple[str, int], ...]:
    """The integer :func:`._statements.constant_defaults` of ``table``."""
    return tuple(
        (name, value)
        for name, value in _statements.constant_defaults(table).items()
        if type(value) is int
    )


def _without_constant_defaults(table: Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the integers equal to their column's constant default, which
    the insert statements write themselves (fewer parameters to send)."""
    row = dict(values)
    for name, default in _integer_constant_defaults(table):
        if row.get(name) == default and type(row[name]) is int:
            del row[name]
    return row


def _json_arrays(texts: Sequence[str]) -> Iterator[str]:
    """The JSON texts as JSON array texts of at most :data:`_MAX_BATCH_CHARACTERS` each
    (a single larger text stands alone)."""
    chunk: list[str] = []
    size = 0
    for item in texts:
        if chunk and size + len(item) > _MAX_BATCH_CHARACTERS:
            yield "[" + ",".join(chunk) + "]"
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    yield "[" + ",".join(chunk) + "]"


@functools.cache
def _has_per_row_defaults(table: Table, columns: tuple[str, ...]) -> bool:
    """Whether a column an insert setting ``columns`` (and the payload) leaves to its
    default has a Python callable default, which an ``INSERT ... SELECT`` would call
    once for all rows."""
    return any(
        column.default is not None and column.default.is_callable
        for column in table.c
        if column.name not in columns and column.name != "payload"
    )


def _lease_arrays(pairs: Sequence[Lease]) -> dict[str, list[Any]]:
    return {"ids": [pair[0] for pair in pairs], "tokens": [str(pair[1]) for pair in pairs]}
