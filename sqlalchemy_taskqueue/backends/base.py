"""The operation-level seam between the queue and a database.

The repository, the monitoring queries, the workers and the command line never build
SQL.  They validate their arguments, then ask the :class:`Backend` of the session's
database for a queue operation: insert tasks, claim some, write outcomes, renew leases,
rescue expired ones, read the monitoring figures.  Each database has its own package
under :mod:`sqlalchemy_taskqueue.backends` with its statements, its schema details and its
wake-up mechanism; :func:`~sqlalchemy_taskqueue.backends.backend_for` picks it by the
dialect's name, and one conformance suite (``tests/conformance``) runs against each.

A backend says what its database can do with :class:`Capabilities` rather than the code
above it asking ``if dialect == ...``.  Everything here runs in the caller's session (or,
for a worker's claim-only turns, on its own connection) and never commits.

Operations whose write matched nothing return ``None``, ``False`` or leave ids out of
the set they return; the repository then asks :meth:`Backend.diagnose` why, and raises
the error a user can act on.  Rows handed back by the read operations carry the column
names their docstrings list.

Example::

    from sqlalchemy_taskqueue.backends import backend_for

    backend = backend_for(engine.dialect)
    backend.capabilities.listen  # True on PostgreSQL
    with Session(engine) as session, session.begin():
        backend.rescue(session, Task.__table__, limit=100, channel=None)
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, Engine, Row, Table, TextClause
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from sqlalchemy_taskqueue.backoff import BackoffPolicy
from sqlalchemy_taskqueue.status import TaskStatus

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "AsyncListener",
    "Backend",
    "Capabilities",
    "ClaimRequest",
    "Lease",
    "Listener",
    "TaskQuery",
]

#: A task's lease as the worker holds it: ``(task_id, lease_token)``.
Lease = tuple[int, uuid.UUID]


@dataclass(frozen=True)
class Capabilities:
    """What a backend's database can do, asked for instead of its name.

    Example::

        if backend_for(engine.dialect).capabilities.listen:
            ...  # idle workers wait for notifications instead of polling
    """

    #: ``UPDATE ... RETURNING``: a claim is one statement (otherwise a locked select,
    #: an update and a read, in one short transaction).
    update_returning: bool
    #: ``FOR UPDATE SKIP LOCKED``: concurrent claims pass each other's rows by.
    skip_locked: bool
    #: a notification channel wakes idle workers (otherwise they poll).
    listen: bool
    #: partial unique indexes enforce one active task per (type, dedupe key).
    partial_indexes: bool
    #: a transaction may commit without waiting for its log flush (claims, progress).
    relaxed_commit: bool
    #: timestamps keep their time zone (otherwise they are stored as UTC without one,
    #: and :class:`~sqlalchemy_taskqueue._timestamps.TimestampType` attaches UTC back).
    aware_timestamps: bool = True


@dataclass(frozen=True)
class ClaimRequest:
    """One claim, its arguments already checked.

    :ivar task_types: the types to claim (``None``: any type).
    :ivar limit: how many tasks at most.
    :ivar lease: how long the lease lasts.
    :ivar owner: written to ``lease_owner``.
    :ivar relaxed_commit: the transaction only claims and may commit without waiting for
        its log flush, where the database can.
    :ivar starting: with a worker's prefetch, how many of the claimed tasks go straight to
        a slot and are recorded as started (``None``: every one of them).
    :ivar rate_limited: the claim takes rate-limited types, whose budget the caller has
        reserved in this transaction (a plain claim skips them).
    :ivar keyed: the claim also takes tasks with a concurrency key, each taking a free
        slot of its key; without it the claim never takes a keyed task.

    Example::

        ClaimRequest(("export",), 10, timedelta(minutes=1), "w1", relaxed_commit=False)
    """

    task_types: Sequence[str] | None
    limit: int
    lease: timedelta
    owner: str
    relaxed_commit: bool = False
    starting: int | None = None
    rate_limited: bool = False
    keyed: bool = False


@dataclass(frozen=True)
class TaskQuery:
    """A page of tasks to read, its arguments already checked: newest first (by id),
    every condition given must hold.

    :ivar statuses: the statuses to show (empty: every status).
    :ivar task_type: one type only.
    :ivar created_after: created at or after this instant.
    :ivar created_before: created before this instant.
    :ivar columns: column name to the value it must equal (the model's own columns too).
    :ivar search: a task id (digits) or a dedupe key.
    :ivar before_id: the keyset cursor: only tasks with a smaller id.
    :ivar limit: how many tasks at most.

    Example::

        TaskQuery(statuses=("failed",), columns={"project_id": 7}, limit=50)
    """

    statuses: Sequence[str] = ()
    task_type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    columns: Mapping[str, Any] = field(default_factory=dict)
    search: str | None = None
    before_id: int | None = None
    limit: int = 50


class Listener(Protocol):
    """Wakes a threaded worker when tasks become claimable (see :meth:`Backend.listener`).

    Example::

        listener = backend.listener(engine, channel, wake.set)
        listener.start()
        ...
        listener.stop()
    """

    def start(self) -> None:
        """Begin listening, on a thread of the listener's own.

        Example::

            listener.start()
        """

    def stop(self) -> None:
        """Stop listening and release the connection.

        Example::

            listener.stop()
        """


class AsyncListener(Protocol):
    """Wakes an asyncio worker when tasks become claimable (see
    :meth:`Backend.async_listener`).

    Example::

        listener = backend.async_listener(engine, channel, wake.set)
        listener.start()
        ...
        await listener.stop()
    """

    def start(self) -> None:
        """Begin listening, on a task of the running event loop.

        Example::

            listener.start()
        """

    async def stop(self) -> None:
        """Stop listening and release the connection.

        Example::

            await listener.stop()
        """


class Backend(Protocol):
    """The queue operations one database offers (one implementation per database).

    ``session`` is the caller's ORM session: operations run in its transaction and never
    commit.  ``table`` is the queue table; ``channel`` is the wake-up channel to announce
    claimable tasks on, or ``None`` for no announcement.

    Example::

        backend = backend_for(session.get_bind().dialect)
        task_id = backend.insert_one(session, Task.__table__, values, channel=None)
    """

    #: the SQLAlchemy dialect name this backend serves (``"postgresql"``).
    name: str
    #: what the database can do.
    capabilities: Capabilities
    #: URL schemes (``URL.get_backend_name()``) naming this database.
    url_schemes: tuple[str, ...]
    #: the database clock as SQL, for server defaults (``now()``).
    clock_sql: str

    # ------------------------------------------------------------------ schema

    def json_type(self, dialect: Dialect) -> TypeEngine[Any]:
        """The column type storing ``payload`` and ``result`` on this database.

        Example::

            backend.json_type(engine.dialect)  # JSONB(none_as_null=True)
        """

    def index_options(self, where: str) -> dict[str, Any]:
        """Keyword arguments that make an :class:`~sqlalchemy.schema.Index` partial
        (``WHERE where``) on this database; empty where indexes cannot be partial.

        Example::

            Index("ix", "run_at", **backend.index_options("status = 'pending'"))
        """

    # ------------------------------------------------------------------ frozen migrations, version 1

    def json_type_v1(self) -> TypeEngine[Any]:
        """The JSON column type of a version-1 table (frozen, as every ``_v1``).

        Example::

            sa.Column("payload", backend.json_type_v1(), nullable=False)
        """

    def index_options_v1(self, where: str) -> dict[str, Any]:
        """What makes an index of a version-1 table partial.

        Example::

            op.create_index("ix", "tasks", ["run_at"], **backend.index_options_v1(where))
        """

    def server_now_v1(self) -> TextClause:
        """The database clock as a column's server default in the frozen migrations.

        Example::

            sa.Column("created_at", sa.DateTime(timezone=True), server_default=backend.server_now_v1())
        """

    def tune_statements_v1(self, qualified_table: str) -> list[str]:
        """Statements setting a version-1 table's storage parameters (maybe none).

        Example::

            for statement in backend.tune_statements_v1('"tasks"'):
                op.execute(statement)
        """

    def untune_statements_v1(self, qualified_table: str) -> list[str]:
        """Statements resetting what :meth:`tune_statements_v1` set.

        Example::

            backend.untune_statements_v1('"tasks"')
        """

    # ------------------------------------------------------------------ enqueue

    def insert_one(
        self, session: Session, table: Table, values: Mapping[str, Any], *, channel: str | None
    ) -> int:
        """Insert one task (``payload`` as JSON text; ``run_delay`` a delay instead of
        ``run_at``); its id.

        Example::

            backend.insert_one(session, Task.__table__, {"type": "t", "payload": "{}"}, channel=None)
        """

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
        """Insert tasks sharing ``shared`` values, one per payload; ids in input order.
        ``payload_json`` holds the same payloads, checked, as one JSON array text or as
        one JSON text each, for a backend that sends them as text.

        Example::

            backend.insert_many(session, table, {"type": "t"}, [{}], "[{}]", channel=None)
        """

    def insert_if_absent(
        self, session: Session, table: Table, values: Mapping[str, Any], *, channel: str | None
    ) -> tuple[int, bool] | None:
        """Insert unless an active task of the same type holds ``values["dedupe_key"]``:
        ``(id, True)`` for a new task, ``(holder_id, False)`` otherwise, ``None`` when
        no answer came after a few rounds (the holder kept finishing in between).  The
        database arbitrates concurrent callers, so exactly one creates the task.

        Example::

            backend.insert_if_absent(session, table, {**values, "dedupe_key": "k"}, channel=None)
        """

    # ------------------------------------------------------------------ claim

    def prepare_writes(self, executor: Session | Connection, table: Table) -> None:
        """Ready the caller's transaction for an operation that reads before it writes
        (a claim reads the pauses, limits and key slots first): where a transaction that
        has read may be refused the write lock later (SQLite), take it now; elsewhere
        nothing.

        Example::

            backend.prepare_writes(session, Task.__table__)
        """

    def claim(
        self,
        executor: Session | Connection,
        table: Table,
        request: ClaimRequest,
        *,
        entity: Any = None,
    ) -> Sequence[Any]:
        """Claim due tasks, in any order (the caller sorts them by :attr:`claim_order`):
        rows of every column of the table, or with ``entity`` (a mapped class; then
        ``executor`` is a session) instances of it loaded through the ORM.
        ``executor`` is a session, or a worker's own connection in autocommit.

        Example::

            rows = backend.claim(connection, table, ClaimRequest(None, 10, lease, "w1"))
        """

    #: the columns that order claims (the caller sorts claimed tasks by them).
    claim_order: tuple[str, ...]

    # ------------------------------------------------------------------ outcomes

    def complete(
        self, session: Session, table: Table, task_id: int, result: Any, token: uuid.UUID | None
    ) -> bool:
        """Complete an in-progress task (fenced by ``token`` unless ``None``).

        Example::

            backend.complete(session, table, 42, {"rows": 10}, token)
        """

    def complete_many(
        self,
        session: Session,
        table: Table,
        leases: Sequence[Lease],
        results: Sequence[str | None],
    ) -> set[int]:
        """Complete leased tasks, each with its result as JSON text; the ids completed.

        Example::

            backend.complete_many(session, table, [(42, token)], ['{"rows": 10}'])
        """

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
        """Record a failed attempt: back to pending after the backoff while retries
        remain (and ``retry``), failed otherwise; the new status.

        Example::

            backend.fail(session, table, 42, "boom", token, backoff=DEFAULT_BACKOFF, retry=True)
        """

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
        """Set an active task's progress (an in-progress one's, with ``token``).

        Example::

            backend.set_progress(session, table, 42, 50, token, relaxed_commit=True)
        """

    def renew_leases(
        self,
        session: Session,
        table: Table,
        leases: Sequence[Lease],
        lease: timedelta,
        worker: Mapping[str, Any] | None = None,
    ) -> set[int]:
        """Extend the leases still held; their ids.  With ``worker`` (what
        :meth:`record_worker` takes), refresh its registration in the same round trip.

        Example::

            backend.renew_leases(session, table, [(42, token)], timedelta(seconds=30))
        """

    def record_starts(self, session: Session, table: Table, leases: Sequence[Lease]) -> set[int]:
        """Record that claimed tasks started running; the ids recorded.

        Example::

            backend.record_starts(session, table, [(42, token)])
        """

    def release(
        self, session: Session, table: Table, leases: Sequence[Lease], *, channel: str | None
    ) -> set[int]:
        """Hand leased tasks back to pending without charging an attempt; their ids.

        Example::

            backend.release(session, table, [(42, token)], channel=None)
        """

    def rescue(
        self, session: Session, table: Table, *, limit: int, channel: str | None
    ) -> dict[int, TaskStatus]:
        """Return tasks whose lease expired to the queue (or fail them when out of
        retries): ``{task_id: new_status}``.

        Example::

            backend.rescue(session, table, limit=1000, channel=None)  # {17: TaskStatus.PENDING}
        """

    # ------------------------------------------------------------------ operator actions

    def cancel(self, session: Session, table: Table, task_id: int) -> bool:
        """Cancel a pending or running task (revoking a running one's lease).

        Example::

            backend.cancel(session, table, 42)  # True
        """

    def discard(self, session: Session, table: Table, task_id: int) -> bool:
        """Delete a finished task (completed, failed or cancelled); ``False`` if the task
        is pending or running, or absent.

        Example::

            backend.discard(session, table, 42)  # True
        """

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
        """Put failed tasks (one, those of a type, or all; with ``matching``, only those
        its filters select) back in the queue, except those whose dedupe key an active
        task holds; the ids retried.

        Example::

            backend.retry(session, table, task_id=None, task_type="webhook", channel=None)
        """

    def dedupe_holder(self, session: Session, table: Table, task_id: int) -> int | None:
        """The active task holding the dedupe key of failed task ``task_id``, if any.

        Example::

            backend.dedupe_holder(session, table, 42)  # 57
        """

    def diagnose(
        self, session: Session, table: Table, task_id: int
    ) -> tuple[str, uuid.UUID | None] | None:
        """``(status, lease_token)`` of a task, ``None`` when there is no such task.

        Example::

            backend.diagnose(session, table, 42)  # ('completed', None)
        """

    def purge(
        self, session: Session, table: Table, *, older_than: timedelta, batch_size: int
    ) -> int:
        """Delete up to ``batch_size`` tasks finished more than ``older_than`` ago.

        Example::

            backend.purge(session, table, older_than=timedelta(days=7), batch_size=1000)
        """

    def count_purgeable(self, session: Session, table: Table, *, older_than: timedelta) -> int:
        """How many tasks :meth:`purge` would delete now.

        Example::

            backend.count_purgeable(session, table, older_than=timedelta(days=7))
        """

    def progress_of(
        self, session: Session, table: Table, task_type: str, match: Mapping[str, Any]
    ) -> int | None:
        """Progress of the newest active task of ``task_type`` whose payload contains
        ``match``.

        Example::

            backend.progress_of(session, table, "data_export", {"project_id": 7})  # 45
        """

    # ------------------------------------------------------------------ schedules

    def clock(self, session: Session) -> datetime:
        """The database clock (workers on machines with skewed clocks agree on it).

        Example::

            now = backend.clock(session)
        """

    def sync_schedules(
        self, session: Session, table: Table, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Insert or update the schedules a worker carries (``table`` is the schedules
        table; each row has every column of a definition and ``name`` and
        ``next_fire_at``): the definition becomes the code's, ``carried_at`` now, and
        ``next_fire_at`` the row's own unless the schedule is new or its timing changed.

        Example::

            backend.sync_schedules(session, schedules, [{"name": "report", ...}])
        """

    def due_schedules(
        self, session: Session, table: Table, names: Sequence[str]
    ) -> Sequence[Row[Any]]:
        """Rows ``(name, next_fire_at, last_fire_at, last_task_id)`` of the schedules
        among ``names`` that are due and not paused, each locked until the transaction
        ends and skipped when another transaction holds it.

        Example::

            for row in backend.due_schedules(session, schedules, ["report"]): ...
        """

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
        """Record a schedule's fire.

        Example::

            backend.record_fire(session, schedules, "report", next_fire_at=t, last_fire_at=f, last_task_id=7)
        """

    def next_fire(
        self, session: Session, table: Table, names: Sequence[str]
    ) -> tuple[datetime | None, datetime]:
        """The earliest next fire time among ``names`` (``None``: none to fire) and the
        database clock.

        Example::

            soonest, now = backend.next_fire(session, schedules, ["report"])
        """

    def schedules(
        self, session: Session, table: Table, name: str | None = None
    ) -> Sequence[Row[Any]]:
        """Every schedule's row (every column), or the named one's, by name.

        Example::

            backend.schedules(session, schedules)
        """

    def set_schedule_paused(self, session: Session, table: Table, name: str, paused: bool) -> bool:
        """Pause or resume a schedule; ``False`` when there is no such schedule.

        Example::

            backend.set_schedule_paused(session, schedules, "report", True)
        """

    # ------------------------------------------------------------------ flow controls

    def set_paused(self, session: Session, table: Table, task_type: str, paused: bool) -> None:
        """Pause or resume claims of ``task_type`` (``table``: the controls table;
        ``task_type`` ``""``: the whole queue).

        Example::

            backend.set_paused(session, controls, "export", True)
        """

    def paused_types(self, session: Session, table: Table) -> list[str]:
        """The task types whose claims are paused (``""``: the whole queue), sorted.

        Example::

            backend.paused_types(session, controls)  # ['export']
        """

    def set_rate_limit(
        self, session: Session, table: Table, task_type: str, limit: int, period_seconds: float
    ) -> None:
        """At most ``limit`` claims of ``task_type`` in any ``period_seconds`` (``table``:
        the controls table).

        Example::

            backend.set_rate_limit(session, controls, "webhook", 20, 1.0)
        """

    def clear_rate_limit(self, session: Session, table: Table, task_type: str) -> bool:
        """Lift the rate limit of ``task_type``; ``False`` when it had none.

        Example::

            backend.clear_rate_limit(session, controls, "webhook")
        """

    def rate_limits(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """Rows ``(task_type, rate_limit, rate_period_seconds, rate_starts, paused)`` of
        the rate-limited types.

        Example::

            backend.rate_limits(session, controls)
        """

    def lock_rate_budget(self, session: Session, table: Table, task_type: str) -> Row[Any] | None:
        """Lock a rate-limited type's row for this transaction, unless another claim holds
        it: ``(rate_limit, rate_period_seconds, rate_starts, now)`` with the database clock
        in epoch seconds, or ``None`` (no limit, or locked).

        Example::

            row = backend.lock_rate_budget(session, controls, "webhook")
        """

    def record_rate_starts(
        self, session: Session, table: Table, task_type: str, starts: list[list[float]]
    ) -> None:
        """Store the claims of a rate-limited type within its period (``[epoch seconds,
        tasks]`` pairs).

        Example::

            backend.record_rate_starts(session, controls, "webhook", [[1765000000.5, 3]])
        """

    # ------------------------------------------------------------------ concurrency keys

    def add_key_slots(self, session: Session, table: Table, limits: Mapping[str, int]) -> None:
        """Give each concurrency key at least as many slots as its limit (``table``: the
        task table), in the caller's transaction.

        Example::

            backend.add_key_slots(session, table, {"customer:42": 1})
        """

    def has_key_slots(self, session: Session, table: Table) -> bool:
        """Whether any concurrency key was ever used in the queue (claims of such a
        queue must take key slots).

        Example::

            backend.has_key_slots(session, table)  # False
        """

    def free_orphaned_slots(self, session: Session, table: Table) -> list[str]:
        """Free the slots held by tasks that are no longer in progress without the library
        having freed them (a row deleted or changed by hand); their keys.

        Example::

            backend.free_orphaned_slots(session, table)  # []
        """

    def keys_at_limit(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """Rows ``(concurrency_key, slot_limit, running, waiting)`` of the keys whose
        every slot is taken.

        Example::

            backend.keys_at_limit(session, table)
        """

    # ------------------------------------------------------------------ worker registry

    def record_worker(
        self, session: Session, table: Table, worker: Mapping[str, Any], lease: timedelta
    ) -> None:
        """Write or refresh a worker's registry row (``table``: the task table):
        ``worker`` has ``worker_id``, ``host``, ``pid``, ``task_types``, ``slots`` and
        ``version``; the row expires one ``lease`` from now.

        Example::

            backend.record_worker(session, table, {"worker_id": "w1", ...}, timedelta(minutes=1))
        """

    def remove_worker(self, session: Session, table: Table, worker_id: str) -> None:
        """Delete a worker's registry row.

        Example::

            backend.remove_worker(session, table, "w1")
        """

    def live_workers(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """The registry rows that have not expired, oldest first.

        Example::

            backend.live_workers(session, table)
        """

    def forget_dead_workers(self, session: Session, table: Table) -> list[str]:
        """Delete the expired registry rows; their worker ids.

        Example::

            backend.forget_dead_workers(session, table)  # []
        """

    # ------------------------------------------------------------------ monitoring reads

    def status_counts(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """Rows ``(type, status, total)``.

        Example::

            backend.status_counts(session, table)  # [('email', 'pending', 3)]
        """

    def queue_depth(self, session: Session, table: Table) -> Sequence[Row[Any]]:
        """Rows ``(type, ready, scheduled, oldest_ready_seconds)``.

        Example::

            backend.queue_depth(session, table)  # [('email', 3, 0, 1.5)]
        """

    def unclaimed_types(self, session: Session, table: Table, *, since: timedelta) -> list[str]:
        """Task types, sorted, with tasks ready to run (pending, due) of which no task is in
        progress or was started within ``since``: no running worker seems to handle them
        (``taskqueue stats`` marks them).

        Example::

            backend.unclaimed_types(session, table, since=timedelta(hours=1))  # ['export']
        """

    def stuck_tasks(
        self, session: Session, table: Table, *, running_longer_than: timedelta, limit: int
    ) -> Sequence[Row[Any]]:
        """Rows ``(id, type, started_at, lease_owner, lease_expires_at, retry_count,
        progress, lease_expired)``.

        Example::

            backend.stuck_tasks(session, table, running_longer_than=timedelta(hours=1), limit=10)
        """

    def processing_times(
        self, session: Session, table: Table, *, window: timedelta
    ) -> Sequence[Row[Any]]:
        """Rows ``(type, completed, average_seconds, p95_seconds)``.

        Example::

            backend.processing_times(session, table, window=timedelta(hours=1))
        """

    def outcome_counts(
        self, session: Session, table: Table, *, window: timedelta
    ) -> Sequence[Row[Any]]:
        """Rows ``(type, completed, failed, cancelled, retried)``.

        Example::

            backend.outcome_counts(session, table, window=timedelta(hours=1))
        """

    def recent_failures(
        self, session: Session, table: Table, *, limit: int, task_type: str | None
    ) -> Sequence[Row[Any]]:
        """Rows ``(id, type, error_message, retry_count, created_at, completed_at)``.

        Example::

            backend.recent_failures(session, table, limit=10, task_type=None)
        """

    def browse_tasks(self, session: Session, table: Table, query: TaskQuery) -> Sequence[Row[Any]]:
        """Every column of the tasks ``query`` selects, newest first, without locking.

        Example::

            backend.browse_tasks(session, table, TaskQuery(statuses=("failed",)))
        """

    def recent_status_counts(
        self, session: Session, table: Table, *, window: timedelta
    ) -> Sequence[Row[Any]]:
        """Rows ``(type, status, total)`` of the tasks in progress and of those finished
        within ``window``, read without scanning the whole table.

        Example::

            backend.recent_status_counts(session, table, window=timedelta(hours=24))
        """

    def outcome_timeline(
        self, session: Session, table: Table, *, window: timedelta, bucket: timedelta
    ) -> Sequence[Row[Any]]:
        """Rows ``(bucket_start, completed, failed)``: tasks finished within ``window``,
        counted per ``bucket`` (only buckets with an outcome), oldest first.

        Example::

            backend.outcome_timeline(session, table, window=timedelta(hours=1),
                                     bucket=timedelta(minutes=5))
        """

    # ------------------------------------------------------------------ wake-up

    def announce(self, session: Session, channel: str) -> None:
        """Wake idle workers listening on ``channel`` when the transaction commits.

        Example::

            backend.announce(session, "taskqueue_tasks")
        """

    listen_drivers: tuple[str, ...]
    """Drivers (``dialect.driver``) through which a threaded worker can listen."""
    async_listen_drivers: tuple[str, ...]
    """Drivers through which an asyncio worker can listen."""

    def listener(
        self,
        engine: Engine,
        channel: str,
        wake: Callable[[], None],
        *,
        listening: threading.Event | None = None,
    ) -> Listener:
        """A listener calling ``wake`` for each notification on ``channel`` (and after
        it reconnects), for a threaded worker; it sets ``listening`` while it listens.

        Example::

            backend.listener(engine, "taskqueue_tasks", event.set).start()
        """

    def async_listener(
        self,
        engine: AsyncEngine,
        channel: str,
        wake: Callable[[], None],
        *,
        listening: threading.Event | None = None,
    ) -> AsyncListener:
        """The same for an asyncio worker.

        Example::

            backend.async_listener(engine, "taskqueue_tasks", event.set).start()
        """

    # ------------------------------------------------------------------ errors and connections

    def is_permanent_error(self, exc: BaseException) -> bool:
        """Whether the database refused a statement for good (a value too large, a
        constraint), so retrying it cannot help.

        Example::

            backend.is_permanent_error(exc)  # True for a value over 255 MiB
        """

    def is_driver_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` comes from one of this database's drivers.

        Example::

            backend.is_driver_error(ConnectionError())  # False
        """

    def create_worker_engine(self, url: URL, *, concurrency: int) -> Engine:
        """An engine for a ``taskqueue worker`` process: connect, keepalive and statement
        timeouts so that a frozen network cannot hang it.

        Example::

            engine = backend.create_worker_engine(make_url(url), concurrency=8)
        """

    def create_async_worker_engine(self, url: URL, *, concurrency: int) -> AsyncEngine:
        """The same for the asyncio worker.

        Example::

            engine = backend.create_async_worker_engine(make_url(url), concurrency=8)
        """

    def default_url(self, url: URL) -> URL:
        """``url`` with this database's default driver when it names none.

        Example::

            backend.default_url(make_url("postgres://app@db/app"))  # postgresql+psycopg2://
        """

    def default_async_url(self, url: URL) -> URL:
        """``url`` with this database's default async driver.

        Example::

            backend.default_async_url(make_url("postgresql://app@db/app"))
        """
