"""Queue operations in the caller's session.

:class:`TaskRepository` wraps an SQLAlchemy :class:`~sqlalchemy.orm.Session` and a task
model.  Every method validates its arguments first (bad input raises and writes nothing),
then runs one statement from :mod:`sqlalchemy_taskqueue.statements` in that session.  The
repository **never commits**: the caller's unit of work decides, so a task enqueued
together with business rows is committed or rolled back together with them::

    with Session(engine) as session, session.begin():
        session.add(order)
        TaskRepository(session, Task).enqueue("send_receipt", {"order_id": order.id})
    # committed together; a worker may now claim the task

Workers (or a hand-written loop) claim with :meth:`TaskRepository.dequeue` in a short
transaction of their own, commit, run the work outside any transaction, then complete or
fail the task in another short transaction, passing the ``lease_token`` the claim handed
out so that a worker whose lease expired cannot overwrite its successor's outcome.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, NoReturn, TypeVar

from sqlalchemy import Insert, Table, Update, select
from sqlalchemy.exc import IntegrityError, UnboundExecutionError
from sqlalchemy.orm import Session, scoped_session

from . import statements
from .backoff import DEFAULT_BACKOFF, BackoffPolicy
from .durations import Duration
from .exceptions import (
    InvalidTransitionError,
    LeaseLostError,
    TaskNotFoundError,
    TaskQueueError,
    wrap_database_errors,
)
from .loading import detached_loader
from .models import TaskDataclassMixin, TaskMixin, require_database_schema, task_table
from .monitoring import TaskMonitoring
from .status import ACTIVE_STATUSES, TaskStatus
from .validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_RESULT_BYTES,
    INT4_MAX,
    INT4_MIN,
    INT8_MAX,
    bounded_error_message,
    json_array_text,
    json_text,
    lease_duration_argument,
    lease_pairs,
    require_aware,
    require_bool,
    require_dedupe_key,
    require_int,
    require_json,
    require_lease,
    require_max_retries,
    require_size_limit,
    require_storable_text,
    require_task_id,
    require_task_type,
    require_timedelta,
    require_token,
    task_type_name,
    task_types_argument,
)

__all__ = [
    "DEFAULT_LEASE_DURATION",
    "TaskRepository",
    "TaskT",
    "canonical_json",
    "default_owner",
]

TaskT = TypeVar("TaskT", bound="TaskMixin | TaskDataclassMixin")

#: Lease of a task claimed through the repository directly.  The worker renews its leases
#: with a heartbeat and uses a shorter one; a hand-written loop should renew with
#: :meth:`TaskRepository.renew_leases` or choose a lease longer than its longest task.
DEFAULT_LEASE_DURATION = timedelta(minutes=5)


#: Columns the queue manages itself; ``enqueue(**columns)`` may not set them.
_MANAGED_COLUMNS = frozenset(
    {
        "id",
        "type",
        "payload",
        "status",
        "progress",
        "priority",
        "run_at",
        "created_at",
        "started_at",
        "completed_at",
        "error_message",
        "retry_count",
        "max_retries",
        "dedupe_key",
        "result",
        "lease_owner",
        "lease_token",
        "lease_expires_at",
    }
)


def default_owner() -> str:
    """A worker identity: host name, process id and a short random suffix.

    Example::

        default_owner()  # 'web-1:4242:9f3c1a2b'
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def canonical_json(value: Any) -> str:
    """JSON text that is identical for equal values (sorted keys, no spaces).

    >>> canonical_json({"b": 1, "a": [1, 2]})
    '{"a":[1,2],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class TaskRepository(TaskMonitoring, Generic[TaskT]):
    """Every queue operation, run in the caller's session (never committed here).

    :param session: the caller's ORM session; the repository only executes statements in
        it, the caller commits or rolls back.  A ``scoped_session`` (such as
        Flask-SQLAlchemy's ``db.session``) stands for its current session, the one the
        repository then runs in: make the repository within the scope, as a request.
    :param model: a mapped class that mixes in :class:`~sqlalchemy_taskqueue.TaskMixin`.
    :param backoff: retry delay policy used by :meth:`fail_task` and lease rescue.
    :param lease_duration: lease handed out by :meth:`dequeue` unless it is given one.
    :param owner: identity recorded in ``lease_owner`` (default: host, pid, random).
    :param notify: announce with ``NOTIFY`` every task made claimable (enqueued, retried,
        handed back, rescued) so idle workers wake at once.
    :param max_payload_bytes: largest payload accepted by the enqueue methods, measured
        as UTF-8 JSON text (default 1 MiB; ``None`` for no limit).  Large data belongs in
        a table or object store that the payload points to.
    :param max_result_bytes: largest ``result`` accepted by :meth:`complete_task` and
        :meth:`complete_tasks`, measured the same way (default 1 MiB; ``None`` for no
        limit, up to what the database takes: 255 MiB for ``jsonb``).

    The monitoring queries (:meth:`queue_depth`, :meth:`stuck_tasks` ...) come from
    :class:`~sqlalchemy_taskqueue.monitoring.TaskMonitoring`.

    Example::

        with Session(engine) as session, session.begin():
            repo = TaskRepository(session, Task)
            task_id = repo.enqueue("data_export", {"project_id": 7})
    """

    def __init__(
        self,
        session: Session | scoped_session[Session],
        model: type[TaskT],
        *,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
        lease_duration: Duration = DEFAULT_LEASE_DURATION,
        owner: str | None = None,
        notify: bool = True,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        max_result_bytes: int | None = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        if isinstance(session, scoped_session):
            session = session()  # the scope's current session, as each call would use
        if not isinstance(session, Session):
            raise TypeError(f"session must be an sqlalchemy.orm.Session, got {session!r}")
        self._table: Table = task_table(model)
        if not isinstance(backoff, BackoffPolicy):
            raise TypeError(f"backoff must be a BackoffPolicy, got {backoff!r}")
        self._session = session
        self._model = model
        self._backoff = backoff
        if lease_duration is DEFAULT_LEASE_DURATION:
            self._lease = DEFAULT_LEASE_DURATION  # checked once, at import
        else:
            self._lease = lease_duration_argument(lease_duration)
        require_size_limit("max_payload_bytes", max_payload_bytes)
        self._max_payload = max_payload_bytes
        require_size_limit("max_result_bytes", max_result_bytes)
        self._max_result = max_result_bytes
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ValueError(f"owner must be a non-empty string, got {owner!r}")
        self._owner = owner  # the default is made when first needed (claims only)
        self._channel = statements.notify_channel(self._table) if notify else None
        try:
            bind = session.get_bind(mapper=model)
        except UnboundExecutionError:
            return  # checked when the session is bound and first used
        statements.require_supported_dialect(bind.dialect)

    @property
    def session(self) -> Session:
        """The caller's session this repository runs in.

        Example::

            repo.session.commit()  # the repository itself never commits
        """
        return self._session

    @property
    def model(self) -> type[TaskT]:
        """The task model.

        Example::

            repo.model.__tablename__  # 'tasks'
        """
        return self._model

    @property
    def owner(self) -> str:
        """The identity written to ``lease_owner`` by claims made through this repository.

        Example::

            TaskRepository(session, Task, owner="importer-1").owner  # 'importer-1'
        """
        if self._owner is None:
            self._owner = default_owner()
        return self._owner

    @property
    def notify_channel(self) -> str:
        """The LISTEN/NOTIFY channel on which this queue announces new tasks.

        Example::

            repo.notify_channel  # 'taskqueue_tasks'
        """
        return statements.notify_channel(self._table)

    # ------------------------------------------------------------------ enqueue

    @wrap_database_errors
    def enqueue(
        self,
        /,
        task_type: str,
        payload: Any,
        *,
        max_retries: int = 3,
        priority: int = 0,
        run_at: datetime | timedelta | None = None,
        timeout_seconds: int | None = None,
        **columns: Any,
    ) -> int:
        """Add a task and return its id; it becomes visible when the caller commits.

        :param task_type: routing key (a ``str`` or ``StrEnum`` member).
        :param payload: JSON-serialisable arguments; checked before anything is written.
        :param max_retries: failed attempts that are retried (0 = fail at once).
        :param priority: lower values are claimed first.
        :param run_at: an aware datetime, or a delay as a ``timedelta``; not claimable
            before then.
        :param timeout_seconds: per-task limit on one attempt, enforced by the worker.
        :param columns: values for the application's own columns.

        Example::

            task_id = repo.enqueue("data_export", {"project_id": 7}, priority=-1)
        """
        values = self._row_values(
            task_type,
            payload,
            max_retries=max_retries,
            priority=priority,
            run_at=run_at,
            timeout_seconds=timeout_seconds,
            columns=columns,
        )
        stmt = _insert_statement(self._table, tuple(values), self._channel)
        return int(self._session.execute(stmt, values).scalar_one())

    @wrap_database_errors
    def enqueue_many(
        self,
        /,
        task_type: str,
        payloads: Iterable[Any],
        *,
        max_retries: int = 3,
        priority: int = 0,
        run_at: datetime | timedelta | None = None,
        timeout_seconds: int | None = None,
        **columns: Any,
    ) -> list[int]:
        """Add many tasks of one type in a single multi-row ``INSERT``; ids in input order.

        Every payload is validated before anything is written.

        Example::

            ids = repo.enqueue_many("send_email", [{"to": a} for a in addresses])
        """
        if isinstance(payloads, (str, bytes, Mapping)):
            raise TypeError("payloads must be an iterable of payloads, not a single value")
        shared = self._shared_values(
            task_type,
            max_retries=max_retries,
            priority=priority,
            run_at=run_at,
            timeout_seconds=timeout_seconds,
            columns=columns,
        )
        payload_list = list(payloads)
        if not payload_list:
            return []
        # the whole batch in one encoder pass; one by one only to name a payload at fault
        array = json_array_text(payload_list, max_bytes=self._max_payload)
        if array is not None and len(array) <= _MAX_BATCH_CHARACTERS:
            chunks: Iterable[str] = [array]
        else:
            texts = [
                json_text(f"payload #{position}", payload, max_bytes=self._max_payload)
                for position, payload in enumerate(payload_list)
            ]
            chunks = _json_arrays(texts)
        delayed = "run_delay" in shared
        if _has_per_row_defaults(self._table, _columns(shared)):
            rows = [{**shared, "payload": payload} for payload in payload_list]
            stmt = statements.insert_rows_statement(self._table, delayed=delayed)
            ids = [int(task_id) for task_id in self._session.execute(stmt, rows).scalars()]
        else:
            stmt = statements.insert_many_statement(self._table, _columns(shared), delayed=delayed)
            ids = []
            for chunk in chunks:  # one parameter per chunk, parsed by the server
                result = self._session.execute(stmt, {**shared, "payloads": chunk})
                ids.extend(sorted(int(task_id) for task_id in result.scalars()))
        if self._channel is not None:
            self._session.execute(statements.notify_statement(self._channel))
        return ids

    @wrap_database_errors
    def enqueue_if_not_exists(
        self,
        /,
        task_type: str,
        payload: Any,
        *,
        dedupe_key: str | None = None,
        max_retries: int = 3,
        priority: int = 0,
        run_at: datetime | timedelta | None = None,
        timeout_seconds: int | None = None,
        **columns: Any,
    ) -> tuple[int, bool]:
        """Add a task unless an equivalent one is pending or in progress.

        Returns ``(task_id, True)`` for a new task, ``(existing_id, False)`` when an
        active task of the same type holds the same dedupe key.  The key defaults to a
        hash of the type and the canonical JSON of the payload.  Race-free: a unique
        partial index and ``INSERT ... ON CONFLICT DO NOTHING`` arbitrate concurrent
        callers, so exactly one of them creates the task.

        Example::

            task_id, created = repo.enqueue_if_not_exists("bulk_import", {"file": "a.csv"})
        """
        values = self._row_values(
            task_type,
            payload,
            max_retries=max_retries,
            priority=priority,
            run_at=run_at,
            timeout_seconds=timeout_seconds,
            columns=columns,
        )
        if dedupe_key is None:
            # the payload as stored (keys that are not strings became strings), which
            # also sorts whatever the keys were
            stored = json.loads(values["payload"])
            digest = hashlib.sha256(canonical_json([task_type_name(task_type), stored]).encode())
            dedupe_key = digest.hexdigest()
        else:
            require_dedupe_key(dedupe_key)
        values["dedupe_key"] = dedupe_key
        insert = statements.insert_if_absent_statement(
            self._table,
            _columns(values),
            channel=self._channel,
            delayed="run_delay" in values,
            payload_text=True,
        )
        lookup = statements.active_dedupe_lookup_statement(self._table, values["type"], dedupe_key)
        # Between a conflict and the lookup the holder may finish; then insert again.
        for _ in range(5):
            created = self._session.execute(insert, values).first()
            if created is not None:
                return int(created[0]), True
            existing = self._session.execute(lookup).scalar_one_or_none()
            if existing is not None:
                return int(existing), False
        # a table without the partial unique index (a unique index over finished tasks
        # too, say) conflicts with tasks that are not active: name it, if so
        connection = self._session.connection(bind_arguments={"mapper": self._model})
        require_database_schema(connection, self._table)
        raise TaskQueueError(
            f"enqueue_if_not_exists({task_type!r}) kept conflicting with a task that "
            "finished before it could be read; is the session in REPEATABLE READ?"
        )

    # ------------------------------------------------------------------ claim

    @wrap_database_errors
    def dequeue(
        self,
        task_type: str | Sequence[str] | None = None,
        *,
        lease_duration: Duration | None = None,
    ) -> TaskT | None:
        """Claim the next due task (lowest priority value, then oldest), or ``None``.

        The task is marked ``in_progress`` with a lease; commit the session right away so
        the claim is short.  ``task_type`` is one type, several types, or ``None`` for any.
        The returned object is detached from the session with every column loaded, so it
        stays readable after the commit and after the session closes (even with
        ``expire_on_commit=True``).  Pass its ``lease_token`` to :meth:`complete_task`,
        :meth:`fail_task` and :meth:`update_progress`.

        Example::

            task = repo.dequeue("data_export")
        """
        claimed = self.dequeue_many(task_type, limit=1, lease_duration=lease_duration)
        return claimed[0] if claimed else None

    @wrap_database_errors
    def dequeue_many(
        self,
        task_type: str | Sequence[str] | None = None,
        *,
        limit: int,
        lease_duration: Duration | None = None,
        relaxed_commit: bool = False,
    ) -> list[TaskT]:
        """Claim up to ``limit`` due tasks in one statement, in claim order.

        With ``relaxed_commit`` the surrounding transaction commits without waiting for
        its WAL flush (``synchronous_commit = off`` for this transaction only).  Use it
        only for a transaction that does nothing but claim: if the server crashes, a
        claim from its last moments may be forgotten and the task claimed again.

        Example::

            batch = repo.dequeue_many(["export", "import"], limit=10)
        """
        return self._claim(
            task_type, limit=limit, lease_duration=lease_duration, relaxed_commit=relaxed_commit
        )

    def _claim(
        self,
        task_type: str | Sequence[str] | None,
        *,
        limit: int,
        lease_duration: Duration | None,
        relaxed_commit: bool,
        own_session: bool = False,
        starting: int | None = None,
    ) -> list[TaskT]:
        """:meth:`dequeue_many`: the claimed tasks, detached, in claim order.

        ``own_session`` says the session holds nothing else (a worker's): the instances
        are then built straight from the statement's rows where the mapping allows
        (:mod:`.loading`), skipping an ORM query's loading set-up; otherwise everything
        the session holds is detached at once, with what the ORM loaded along
        (relationships).
        """
        stmt, params = self._claim_statement(
            task_type, limit, lease_duration, relaxed_commit, starting
        )
        model: Any = self._model  # a mapped class, hashable
        if own_session and detached_loader(model) is not None:
            rows = self._session.execute(stmt, params, bind_arguments={"mapper": model})
            return detached_in_claim_order(model, rows.all())
        claimed = list(self._session.execute(_orm_claim(model, stmt), params).scalars().all())
        if own_session:
            self._session.expunge_all()
        else:
            for task in claimed:
                self._session.expunge(task)
        return _in_claim_order(claimed)

    def _claim_statement(
        self,
        task_type: str | Sequence[str] | None,
        limit: int,
        lease_duration: Duration | None,
        relaxed_commit: bool,
        starting: int | None = None,
    ) -> tuple[Update, dict[str, Any]]:
        """The claim statement and its parameters, every argument checked (``starting``
        is a worker's own count)."""
        require_bool("relaxed_commit", relaxed_commit)
        task_types = task_types_argument(task_type)
        require_int("limit", limit, minimum=1, maximum=INT4_MAX)  # bound as an integer
        lease = self._lease if lease_duration is None else lease_duration_argument(lease_duration)
        return claim_statement_and_params(
            self._table,
            task_types,
            limit,
            lease,
            self.owner,
            relaxed_commit=relaxed_commit,
            starting=starting,
        )

    # ------------------------------------------------------------------ progress and outcome

    @wrap_database_errors
    def update_progress(
        self,
        task_id: int,
        progress: int,
        *,
        lease_token: uuid.UUID | None = None,
        relaxed_commit: bool = False,
    ) -> None:
        """Set a pending or in-progress task's progress (0..100).

        Only ``progress`` changes, so the update is a cheap HOT update.  With
        ``lease_token`` it applies only while that lease is current.  With
        ``relaxed_commit`` the surrounding transaction commits without waiting for its
        WAL flush, as :meth:`dequeue_many` can: a server crash may forget the last
        moments' progress (the worker's progress writes do this; progress is advisory).

        Example::

            repo.update_progress(task.id, 40, lease_token=task.lease_token)
        """
        require_task_id(task_id)
        require_int("progress", progress, minimum=0, maximum=100)
        require_token(lease_token)
        require_bool("relaxed_commit", relaxed_commit)
        stmt = statements.progress_statement(
            self._table, fenced=lease_token is not None, relaxed_commit=relaxed_commit
        )
        params = {"task_id": task_id, "new_progress": progress}
        allowed = (TaskStatus.IN_PROGRESS,) if lease_token else ACTIVE_STATUSES
        self._guarded(stmt, params, "update progress of", allowed, lease_token)

    @wrap_database_errors
    def complete_task(
        self, task_id: int, *, result: Any = None, lease_token: uuid.UUID | None = None
    ) -> None:
        """Mark an in-progress task completed: progress 100, ``completed_at``, ``result``.

        :raises InvalidTransitionError: the task is not in progress.
        :raises LeaseLostError: ``lease_token`` is no longer the task's lease.

        Example::

            repo.complete_task(task.id, result={"rows": 10}, lease_token=task.lease_token)
        """
        require_task_id(task_id)
        require_token(lease_token)
        require_json("result", result, allow_none=True, max_bytes=self._max_result)
        stmt = statements.complete_statement(self._table, fenced=lease_token is not None)
        params = {"task_id": task_id, "new_result": result}
        self._guarded(stmt, params, "complete", (TaskStatus.IN_PROGRESS,), lease_token)

    @wrap_database_errors
    def complete_tasks(self, completions: Iterable[tuple[int, uuid.UUID, Any]]) -> set[int]:
        """Complete many leased tasks in one statement: ``(task_id, lease_token, result)``.

        Returns the ids completed; a task whose lease is no longer current is left
        untouched and missing from the result.  This is how the worker acknowledges a
        batch of finished tasks with a single commit.

        Example::

            done = repo.complete_tasks([(t.id, t.lease_token, {"ok": True}) for t in batch])
        """
        rows = list(completions)
        results: list[str | None] = []
        for row in rows:
            if not isinstance(row, tuple) or len(row) != 3:
                raise TypeError(f"completions must be (task_id, lease_token, result), got {row!r}")
            require_lease(row[0], row[1])
            # checked and encoded in one pass: the text sent is the text checked
            result = row[2]
            results.append(
                None if result is None else json_text("result", result, max_bytes=self._max_result)
            )
        if not rows:
            return set()
        params = {
            "ids": [row[0] for row in rows],
            "tokens": [str(row[1]) for row in rows],
            "results": results,
        }
        stmt = statements.complete_many_statement(self._table)
        return {int(task_id) for task_id in self._session.execute(stmt, params).scalars()}

    @wrap_database_errors
    def fail_task(
        self,
        task_id: int,
        error_message: str,
        *,
        lease_token: uuid.UUID | None = None,
        retry: bool = True,
    ) -> TaskStatus:
        """Record a failed attempt and return the task's new status.

        In one atomic ``UPDATE``: while ``retry_count < max_retries``
        the task goes back to ``pending`` with ``retry_count + 1`` and ``run_at`` pushed
        out by the backoff policy (2 s, 4 s, 8 s ... by default); otherwise it becomes
        ``failed``.  ``retry=False`` fails it permanently at once.

        Example::

            repo.fail_task(task.id, "ValueError: bad row", lease_token=task.lease_token)  # <TaskStatus.PENDING: 'pending'>
        """
        require_task_id(task_id)
        require_token(lease_token)
        if not isinstance(error_message, str):
            raise TypeError(f"error_message must be a string, got {error_message!r}")
        require_storable_text("error_message", error_message)
        require_bool("retry", retry)
        error_message = bounded_error_message(error_message)
        stmt = statements.fail_statement(
            self._table, fenced=lease_token is not None, backoff=self._backoff, retry=retry
        )
        params = {"task_id": task_id, "message": error_message}
        row = self._guarded(stmt, params, "fail", (TaskStatus.IN_PROGRESS,), lease_token)
        return TaskStatus(row[0])

    @wrap_database_errors
    def cancel_task(self, task_id: int) -> bool:
        """Cancel a pending task; ``False`` when it has already started or finished.

        Example::

            repo.cancel_task(task_id)  # True
        """
        require_task_id(task_id)
        if self._session.execute(statements.cancel_statement(self._table, task_id)).first():
            return True
        self._require_exists(task_id)
        return False

    @wrap_database_errors
    def retry_task(self, task_id: int) -> None:
        """Put a failed task back in the queue: due now, ``retry_count`` reset to 0.

        :raises InvalidTransitionError: the task is not ``failed``, or an active task
            holds its dedupe key (retrying would duplicate it).

        Example::

            repo.retry_task(task_id)
        """
        require_task_id(task_id)
        stmt = statements.retry_statement(
            self._table, task_id=task_id, task_type=None, channel=self._channel
        )
        if self._retry(stmt):
            return
        holder = self._session.execute(
            statements.duplicate_holder_statement(self._table, task_id)
        ).scalar()
        if holder is not None:
            raise InvalidTransitionError(
                task_id,
                action="retry",
                reason=f"task {holder} with the same dedupe key is already active",
            )
        self._explain_miss(task_id, "retry", (TaskStatus.FAILED,), None)

    @wrap_database_errors
    def retry_failed_tasks(self, task_type: str | None = None) -> int:
        """Put every failed task (of ``task_type``) back in the queue; returns how many.

        Failed tasks whose dedupe key is held by an active task are left failed.

        Example::

            repo.retry_failed_tasks("webhook")  # 3
        """
        if task_type is not None:
            require_task_type(task_type)
            task_type = task_type_name(task_type)
        stmt = statements.retry_statement(
            self._table, task_id=None, task_type=task_type, channel=self._channel
        )
        return len(self._retry(stmt))

    # ------------------------------------------------------------------ leases

    @wrap_database_errors
    def renew_leases(
        self,
        leases: Iterable[tuple[int, uuid.UUID]],
        *,
        lease_duration: Duration | None = None,
    ) -> set[int]:
        """Heartbeat: extend the given ``(task_id, lease_token)`` leases in one statement.

        Returns the ids whose lease is still held; a missing id has been lost.

        Example::

            repo.renew_leases([(task.id, task.lease_token)])  # {42}
        """
        pairs = lease_pairs(leases)
        if not pairs:
            return set()
        lease = self._lease if lease_duration is None else lease_duration_argument(lease_duration)
        stmt = statements.renew_leases_statement(self._table)
        params = {**_lease_arrays(pairs), "lease": lease}
        return {int(task_id) for task_id in self._session.execute(stmt, params).scalars()}

    @wrap_database_errors
    def record_starts(self, leases: Iterable[tuple[int, uuid.UUID]]) -> set[int]:
        """Record that claimed tasks have started running: a task whose lease expires
        is charged an attempt (a retry) only once its start is recorded.  Every claim
        through the repository records its tasks as started at once; a worker that
        claims ahead of its free slots (prefetch) records the others when a slot takes
        them.  Returns the ids recorded (those still leased and not recorded before).

        Example::

            repo.record_starts([(task.id, task.lease_token)])  # {42}
        """
        pairs = lease_pairs(leases)
        if not pairs:
            return set()
        stmt = statements.record_starts_statement(self._table)
        return {
            int(task_id) for task_id in self._session.execute(stmt, _lease_arrays(pairs)).scalars()
        }

    @wrap_database_errors
    def release_tasks(self, leases: Iterable[tuple[int, uuid.UUID]]) -> set[int]:
        """Hand tasks back to ``pending`` without consuming a retry (graceful shutdown).

        Returns the ids that were released (those whose lease was still held).

        Example::

            repo.release_tasks([(task.id, task.lease_token)])  # {42}
        """
        pairs = lease_pairs(leases)
        if not pairs:
            return set()
        stmt = statements.release_statement(self._table, self._channel)
        return {
            int(task_id) for task_id in self._session.execute(stmt, _lease_arrays(pairs)).scalars()
        }

    @wrap_database_errors
    def rescue_expired_leases(self, *, limit: int = 1000) -> dict[int, TaskStatus]:
        """Return tasks whose lease expired to the queue (or fail them when out of retries).

        A rescue consumes a retry like a failed attempt, but the task is due at once.
        Returns ``{task_id: new_status}``.

        Example::

            repo.rescue_expired_leases()  # {17: <TaskStatus.PENDING: 'pending'>}
        """
        require_int("limit", limit, minimum=1, maximum=INT8_MAX)
        stmt = statements.rescue_statement(self._table, limit=limit, channel=self._channel)
        return {int(row[0]): TaskStatus(row[1]) for row in self._session.execute(stmt)}

    # ------------------------------------------------------------------ reads

    @wrap_database_errors
    def get_task(self, task_id: int) -> TaskT | None:
        """The task with this id, freshly read, or ``None``.

        Example::

            repo.get_task(42).status  # <TaskStatus.COMPLETED: 'completed'>
        """
        require_task_id(task_id)
        return self._session.get(self._model, task_id, populate_existing=True)

    @wrap_database_errors
    def get_task_progress(
        self, /, task_type: str, project_id: Any = None, **payload_match: Any
    ) -> int | None:
        """Progress of the newest pending or in-progress task of ``task_type`` whose
        payload has the given keys and values (``project_id`` is one such key); ``None``
        when there is no such task.  Keys are always payload keys, even when the model
        has a column of the same name.

        Example::

            repo.get_task_progress("data_export", project_id="p-1")  # 45
        """
        require_task_type(task_type)
        match = dict(payload_match)
        if project_id is not None:
            match["project_id"] = project_id
        require_json("payload match", match, allow_none=False)
        stmt = statements.progress_lookup_statement(self._table, task_type_name(task_type), match)
        progress = self._session.execute(stmt).scalar_one_or_none()
        return None if progress is None else int(progress)

    # ------------------------------------------------------------------ cleanup

    @wrap_database_errors
    def cleanup_old_tasks(
        self,
        older_than: timedelta,
        *,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> int:
        """Delete finished (completed, failed, cancelled) tasks that finished more than
        ``older_than`` ago, ``batch_size`` rows per statement; returns how many.

        Active tasks are never deleted, however old.  ``max_batches`` bounds the work
        of one call, so a caller can commit between calls (as ``taskqueue cleanup`` does)
        and keep transactions short.

        Example::

            repo.cleanup_old_tasks(timedelta(days=7))  # 1204
        """
        require_timedelta("older_than", older_than, allow_zero=True)
        require_int("batch_size", batch_size, minimum=1, maximum=INT8_MAX)
        if max_batches is not None:
            require_int("max_batches", max_batches, minimum=1)
        stmt = statements.purge_statement(self._table, older_than=older_than, batch_size=batch_size)
        total = batches = 0
        while True:
            deleted = int(self._session.execute(stmt).rowcount)  # type: ignore[attr-defined]
            total += deleted
            batches += 1
            if deleted < batch_size or (max_batches is not None and batches >= max_batches):
                return total

    @wrap_database_errors
    def count_old_tasks(self, older_than: timedelta) -> int:
        """How many tasks :meth:`cleanup_old_tasks` would delete now (a dry run).

        Example::

            repo.count_old_tasks(timedelta(days=7))  # 1204
        """
        require_timedelta("older_than", older_than, allow_zero=True)
        stmt = statements.purgeable_count_statement(self._table, older_than=older_than)
        return int(self._session.execute(stmt).scalar_one())

    # ------------------------------------------------------------------ internals

    def _row_values(
        self,
        task_type: str,
        payload: Any,
        *,
        max_retries: int,
        priority: int,
        run_at: datetime | timedelta | None,
        timeout_seconds: int | None,
        columns: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The parameters of one new task's row, every argument checked, for the
        ``payload_text`` insert statements: the payload as the JSON text its check
        produced, and no integer equal to its column's constant default (which the
        statement writes itself, see :func:`statements.constant_defaults`)."""
        values = self._shared_values(
            task_type,
            max_retries=max_retries,
            priority=priority,
            run_at=run_at,
            timeout_seconds=timeout_seconds,
            columns=columns,
        )
        values["payload"] = json_text("payload", payload, max_bytes=self._max_payload)
        for name, default in _integer_constant_defaults(self._table):
            if values.get(name) == default and type(values[name]) is int:
                del values[name]  # the statement writes the default as a constant
        return values

    def _shared_values(
        self,
        task_type: str,
        *,
        max_retries: int,
        priority: int,
        run_at: datetime | timedelta | None,
        timeout_seconds: int | None,
        columns: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The parameters new tasks share (all but the payload), every argument checked."""
        require_task_type(task_type, new=True)
        require_max_retries(max_retries)
        require_int("priority", priority, minimum=INT4_MIN, maximum=INT4_MAX)
        values: dict[str, Any] = {
            "type": task_type_name(task_type),
            "max_retries": max_retries,
            "priority": priority,
        }
        if isinstance(run_at, timedelta):
            require_timedelta("run_at as a delay", run_at, allow_zero=True)
            values["run_delay"] = run_at
        elif run_at is not None:
            values["run_at"] = require_aware(run_at)
        if timeout_seconds is not None:
            require_int("timeout_seconds", timeout_seconds, minimum=1, maximum=INT4_MAX)
            values["timeout_seconds"] = timeout_seconds
        for name, value in columns.items():
            if name in _MANAGED_COLUMNS:
                raise TypeError(f"enqueue() cannot set the queue-managed column {name!r}")
            if name not in self._table.c:
                raise TypeError(
                    f"{self._model.__name__} has no column {name!r} "
                    f"(columns: {', '.join(sorted(self._table.c.keys()))})"
                )
            values[name] = value
        return values

    def _guarded(
        self,
        stmt: Any,
        params: dict[str, Any],
        action: str,
        allowed: tuple[TaskStatus, ...],
        lease_token: uuid.UUID | None,
    ) -> Any:
        """Run a state-guarded update; when it matched nothing, raise the reason."""
        if lease_token is not None:
            params["token"] = lease_token
        row = self._session.execute(stmt, params).first()
        if row is None:
            self._explain_miss(params["task_id"], action, allowed, lease_token)
        return row

    def _retry(self, stmt: Update) -> list[int]:
        """Run a retry statement; return the ids it put back in the queue.

        The statement leaves failed a task whose dedupe key an active task holds, as far
        as its snapshot shows.  A task that took the key later, in a transaction still
        open then, is only seen by the unique index, which waits for that transaction
        and, once it commits, refuses the retry.  So the statement runs in a savepoint:
        on such a refusal nothing is changed, the caller's transaction stays usable, and
        the statement runs again with a snapshot that sees the new holder (a fifth
        collision is raised).
        """
        collisions = 0
        while True:
            savepoint = self._session.begin_nested()  # flushes the caller's changes first
            try:
                retried = [int(task_id) for task_id in self._session.execute(stmt).scalars()]
            except IntegrityError:  # the unique index: an active task took a key meanwhile
                savepoint.rollback()
                collisions += 1
                if collisions == 5:
                    raise
                continue
            savepoint.commit()
            return retried

    def _explain_miss(
        self,
        task_id: int,
        action: str,
        allowed: tuple[TaskStatus, ...],
        lease_token: uuid.UUID | None,
    ) -> NoReturn:
        found = self._session.execute(statements.diagnose_statement(self._table, task_id)).first()
        if found is None:
            raise TaskNotFoundError(task_id)
        status, current_token = found
        if lease_token is not None and current_token != lease_token:
            raise LeaseLostError(task_id, action=action)
        raise InvalidTransitionError(
            task_id, action=action, status=str(status), allowed=tuple(map(str, allowed))
        )

    def _require_exists(self, task_id: int) -> None:
        found = self._session.execute(statements.diagnose_statement(self._table, task_id)).first()
        if found is None:
            raise TaskNotFoundError(task_id)


@functools.cache
def _insert_statement(table: Table, names: tuple[str, ...], channel: str | None) -> Insert:
    """The ``enqueue`` statement for a row of parameters ``names`` (in any order)."""
    return statements.insert_statement(
        table, _columns(names), channel=channel, delayed="run_delay" in names, payload_text=True
    )


@functools.cache
def _integer_constant_defaults(table: Table) -> tuple[tuple[str, int], ...]:
    """The integer :func:`statements.constant_defaults` of ``table``."""
    return tuple(
        (name, value)
        for name, value in statements.constant_defaults(table).items()
        if type(value) is int
    )


def _columns(values: Iterable[str]) -> tuple[str, ...]:
    """The table columns a row of insert parameters sets (``run_delay`` is not one)."""
    return tuple(sorted(name for name in values if name != "run_delay"))


#: Characters of payload JSON sent in one ``enqueue_many`` statement (PostgreSQL caps a
#: single ``jsonb`` value at 256 MiB; four bytes per character at most).
_MAX_BATCH_CHARACTERS = 32 * 1024 * 1024


def _json_arrays(texts: Sequence[str]) -> Iterator[str]:
    """The JSON texts as JSON array texts of at most :data:`_MAX_BATCH_CHARACTERS` each
    (a single larger text stands alone)."""
    chunk: list[str] = []
    size = 0
    for text in texts:
        if chunk and size + len(text) > _MAX_BATCH_CHARACTERS:
            yield "[" + ",".join(chunk) + "]"
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 1
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


def _lease_arrays(pairs: Sequence[tuple[int, uuid.UUID]]) -> dict[str, list[Any]]:
    return {"ids": [pair[0] for pair in pairs], "tokens": [str(pair[1]) for pair in pairs]}


def claim_statement_and_params(
    table: Table,
    task_types: Sequence[str] | None,
    limit: int,
    lease: timedelta,
    owner: str,
    *,
    relaxed_commit: bool,
    starting: int | None = None,
) -> tuple[Update, dict[str, Any]]:
    """The claim statement for ``task_types`` (``None``: any type) and its parameters,
    for arguments already checked (a worker's own configuration, or a repository's).
    With ``starting``, only the first ``starting`` tasks claimed are recorded as started
    (the rest wait for a slot in the worker, see :meth:`TaskRepository.record_starts`).

    Example::

        stmt, params = claim_statement_and_params(
            Task.__table__, ["export"], 10, timedelta(seconds=60), "w1", relaxed_commit=False
        )
    """
    params: dict[str, Any] = {"limit": limit, "lease": lease, "owner": owner, "token": uuid.uuid4()}
    if task_types is None:
        type_filter: statements.TypeFilter = "any"
    elif len(task_types) == 1:
        type_filter, params["task_type"] = "one", task_types[0]
    else:
        type_filter, params["task_types"] = "many", list(task_types)
    if starting is not None:
        params["starting"] = starting
    stmt = statements.claim_statement(
        table,
        type_filter=type_filter,
        relaxed_commit=relaxed_commit,
        prefetch=starting is not None,
    )
    return stmt, params


def detached_in_claim_order(model: Any, rows: Sequence[Any]) -> list[Any]:
    """A claim statement's rows as detached ``model`` instances, in claim order, for a
    model that has a :func:`~sqlalchemy_taskqueue.loading.detached_loader`.

    Example::

        tasks = detached_in_claim_order(Task, connection.execute(stmt, params).all())
    """
    load = detached_loader(model)
    assert load is not None, "the caller checked the model"
    return load(sorted(rows, key=_claim_order_of_rows(task_table(model))))


@functools.cache
def _claim_order_of_rows(table: Table) -> Callable[[Any], tuple[Any, ...]]:
    """The sort key putting rows of every column of ``table`` (in table order) in the
    order the claim picked them: what :func:`_in_claim_order` does for instances."""
    names = list(table.columns.keys())
    return operator.itemgetter(*(names.index(name) for name in statements.CLAIM_ORDER))


def _in_claim_order(claimed: list[TaskT]) -> list[TaskT]:
    """``claimed`` in the order the claim picked them (``RETURNING`` does not keep it)."""
    claimed.sort(key=operator.attrgetter(*statements.CLAIM_ORDER))
    return claimed


@functools.cache
def _orm_claim(model: Any, stmt: Any) -> Any:
    """The claim statement loading ``model`` instances (cached with the statement)."""
    return select(model).from_statement(stmt).execution_options(populate_existing=True)
