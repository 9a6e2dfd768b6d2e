"""Queue operations in the caller's session.

:class:`TaskRepository` wraps an SQLAlchemy :class:`~sqlalchemy.orm.Session` and a task
model.  Every method validates its arguments first (bad input raises and writes nothing),
then asks the database's backend (:mod:`sqlalchemy_taskqueue.backends`) for the queue
operation, run in that session; a write that changed nothing is explained here.  The
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
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Generic, NoReturn, TypeVar

from sqlalchemy import Table
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.orm import Session, scoped_session

from ._concurrency import KeyAtLimit, concurrency_values
from ._controls import (
    QUEUE_WIDE,
    WHOLE_QUEUE,
    RateLimit,
    controls_table,
    recent_starts,
    started,
)
from ._loading import detached_loader
from ._registry import LiveWorker
from ._schema import CLAIM_ORDER, notify_channel
from ._tracing import enqueue_headers
from ._validation import (
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
    require_app_columns,
    require_aware,
    require_bool,
    require_dedupe_key,
    require_int,
    require_json,
    require_lease,
    require_max_retries,
    require_schedule_name,
    require_size_limit,
    require_storable_text,
    require_task_id,
    require_task_type,
    require_timedelta,
    require_token,
    task_type_name,
    task_types_argument,
)
from .backends import backend_for
from .backends.base import Backend, ClaimRequest
from .backoff import DEFAULT_BACKOFF, BackoffPolicy
from .durations import Duration, to_seconds
from .exceptions import (
    InvalidTransitionError,
    LeaseLostError,
    ScheduleNotFoundError,
    TaskNotFoundError,
    TaskQueueError,
    wrap_database_errors,
)
from .models import TaskDataclassMixin, TaskMixin, require_database_schema, task_table
from .monitoring import TaskMonitoring, task_query
from .scheduling._state import ScheduleState
from .scheduling._table import schedules_table
from .status import ACTIVE_STATUSES, TaskStatus

__all__ = [
    "DEFAULT_LEASE_DURATION",
    "TaskRepository",
    "TaskT",
    "canonical_json",
    "default_owner",
]

#: The task model a repository serves (a class mixing in TaskMixin or TaskDataclassMixin).
TaskT = TypeVar("TaskT", bound="TaskMixin | TaskDataclassMixin")

#: How long a repository trusts the list of rate-limited types it read (per process and
#: queue), so that claims do not read it every time.
RATE_LIMITS_REREAD = 1.0
#: ``(bind, table) -> (read again after, the rate-limited types)``.
_RATE_LIMITED_SEEN: dict[tuple[int, str], tuple[float, list[str]]] = {}
#: ``(bind, table) -> (read again after, whether the queue has used concurrency keys)``:
#: the claims of a queue that has take key slots.
_KEYS_SEEN: dict[tuple[int, str], tuple[float, bool]] = {}
#: A rate-limited type whose budget another worker is reserving: look again this soon.
RATE_BUDGET_BUSY_RETRY = 0.05
#: Lease of a task claimed through the repository directly.  The worker renews its leases
#: with a heartbeat and uses a shorter one; a hand-written loop should renew with
#: :meth:`TaskRepository.renew_leases` or choose a lease longer than its longest task.
DEFAULT_LEASE_DURATION = timedelta(minutes=5)


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
        self._channel = notify_channel(self._table) if notify else None
        #: after a claim: when a rate-limited type's budget may allow more (seconds)
        self._rate_retry_after: float | None = None
        self._backend_found: Backend | None = None
        try:
            bind = session.get_bind(mapper=model)
        except UnboundExecutionError:
            return  # found when the session is bound and first used
        self._backend_found = backend_for(bind.dialect)

    @property
    def backend(self) -> Backend:
        """The backend of the database the session runs the model's statements on
        (:mod:`sqlalchemy_taskqueue.backends`).

        Example::

            repo.backend.capabilities.listen  # True on PostgreSQL
        """
        return self._backend

    @property
    def _backend(self) -> Backend:
        if self._backend_found is None:
            bind = self._session.get_bind(mapper=self._model)
            self._backend_found = backend_for(bind.dialect)
        return self._backend_found

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
        return notify_channel(self._table)

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
        concurrency_key: str | None = None,
        concurrency_limit: int = 1,
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
        :param concurrency_key: tasks sharing this key run at most ``concurrency_limit``
            at a time, across every worker and process (``None``: no such limit).
        :param concurrency_limit: how many tasks of ``concurrency_key`` may run at once.
        :param columns: values for the application's own columns.

        Example::

            task_id = repo.enqueue("data_export", {"project_id": 7}, priority=-1)
            repo.enqueue("sync_account", {"id": 7}, concurrency_key="account:7")
        """
        values = self._row_values(
            task_type,
            payload,
            max_retries=max_retries,
            priority=priority,
            run_at=run_at,
            timeout_seconds=timeout_seconds,
            concurrency=concurrency_values(concurrency_key, concurrency_limit),
            columns=columns,
        )
        self._add_key_slots(values)
        return self._backend.insert_one(self._session, self._table, values, channel=self._channel)

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
        concurrency_key: str | None = None,
        concurrency_limit: int = 1,
        **columns: Any,
    ) -> list[int]:
        """Add many tasks of one type in a single multi-row ``INSERT``; ids in input order.

        Every payload is validated before anything is written.  The keywords are those
        of :meth:`enqueue`, shared by every task of the batch.

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
            concurrency=concurrency_values(concurrency_key, concurrency_limit),
            columns=columns,
        )
        payload_list = list(payloads)
        if not payload_list:
            return []
        # the whole batch in one encoder pass; one by one only to name a payload at fault
        encoded: str | list[str] | None = json_array_text(payload_list, max_bytes=self._max_payload)
        if encoded is None:
            encoded = [
                json_text(f"payload #{position}", payload, max_bytes=self._max_payload)
                for position, payload in enumerate(payload_list)
            ]
        self._add_key_slots(shared)
        return self._backend.insert_many(
            self._session, self._table, shared, payload_list, encoded, channel=self._channel
        )

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
        concurrency_key: str | None = None,
        concurrency_limit: int = 1,
        **columns: Any,
    ) -> tuple[int, bool]:
        """Add a task unless an equivalent one is pending or in progress.

        Returns ``(task_id, True)`` for a new task, ``(existing_id, False)`` when an
        active task of the same type holds the same dedupe key.  The key defaults to a
        hash of the type and the canonical JSON of the payload.  Race-free: the database
        arbitrates concurrent callers (on PostgreSQL a unique partial index and
        ``INSERT ... ON CONFLICT DO NOTHING``), so exactly one of them creates the task.

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
            concurrency=concurrency_values(concurrency_key, concurrency_limit),
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
        self._add_key_slots(values)
        answer = self._backend.insert_if_absent(
            self._session, self._table, values, channel=self._channel
        )
        if answer is not None:
            return answer
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
        rate_limited: Sequence[str] | None = None,
        keyed: bool | None = None,
    ) -> list[TaskT]:
        """:meth:`dequeue_many`: the claimed tasks, detached, in claim order.

        ``own_session`` says the session holds nothing else (a worker's): the instances
        are then built straight from the statement's rows where the mapping allows
        (:mod:`.loading`), skipping an ORM query's loading set-up; otherwise everything
        the session holds is detached at once, with what the ORM loaded along
        (relationships).  ``rate_limited``: the rate-limited types among those claimed,
        as the caller knows them (``None``: read them first); those are claimed first,
        each within its budget and recorded as started when claimed, then the rest with
        one plain claim, which skips rate-limited types.  ``keyed``: whether the
        queue has tasks with concurrency keys, whose claims take key slots (``None``:
        read it).
        """
        request = self._claim_request(task_type, limit, lease_duration, relaxed_commit, starting)
        self._backend.prepare_writes(self._session, self._table)
        if rate_limited is None:  # the caller does not know (a worker keeps its own)
            rate_limited = self._recently_rate_limited(request.task_types)
        if keyed is None:
            keyed = self._uses_keys()
        request = replace(request, keyed=keyed)
        claimed: list[TaskT] = []
        for limited_type in rate_limited:  # first: their budget is what holds them back
            if limit - len(claimed) <= 0:
                break
            within = replace(
                request,
                task_types=(limited_type,),
                limit=limit - len(claimed),
                # the claim of a limited type is its start, counted in its budget: its
                # tasks are recorded as started, even those a worker claims ahead
                starting=None,
                rate_limited=True,
            )
            claimed += self._claim_within_budget(limited_type, within, own_session)
        if len(claimed) < limit:
            plain = replace(
                request,
                limit=limit - len(claimed),
                starting=None if starting is None else max(starting - len(claimed), 0),
            )
            claimed += self._claim_rows(plain, own_session)
        return claimed

    def _claim_rows(self, request: ClaimRequest, own_session: bool) -> list[TaskT]:
        """One claim statement: the claimed tasks, detached, in claim order."""
        model: Any = self._model  # a mapped class, hashable
        if own_session and detached_loader(model) is not None:
            rows = self._backend.claim(self._session, self._table, request)
            return detached_in_claim_order(model, rows)
        claimed = list(self._backend.claim(self._session, self._table, request, entity=model))
        if own_session:
            self._session.expunge_all()
        else:
            for task in claimed:
                self._session.expunge(task)
        return _in_claim_order(claimed)

    def _claim_within_budget(
        self, task_type: str, request: ClaimRequest, own_session: bool
    ) -> list[TaskT]:
        """Claim up to ``request.limit`` tasks of a rate-limited type, no more than its
        budget allows: its controls row is locked (skipped if another claim holds it),
        the claims within the last period counted, and this claim's starts recorded, all
        in the caller's transaction.  Sets ``_rate_retry_after`` (seconds until its budget may allow more)."""
        budget = self._backend.lock_rate_budget(self._session, self._controls, task_type)
        if budget is None:  # another worker is reserving it right now: look again soon
            self._retry_rate_after(RATE_BUDGET_BUSY_RETRY)
            return []
        period = float(budget.rate_period_seconds)
        now = float(budget.now)
        kept = recent_starts(budget.rate_starts, now, period)
        allowed = min(request.limit, int(budget.rate_limit) - started(kept))
        claimed = (
            self._claim_rows(replace(request, limit=allowed), own_session) if allowed > 0 else []
        )
        if claimed:
            kept.append([now, len(claimed)])
        self._backend.record_rate_starts(self._session, self._controls, task_type, kept)
        if started(kept) >= int(budget.rate_limit):  # spent: frees as the oldest claim expires
            self._retry_rate_after(max(min(at for at, _ in kept) + period - now, 0.0))
        return claimed

    def _retry_rate_after(self, seconds: float) -> None:
        current = self._rate_retry_after
        self._rate_retry_after = seconds if current is None else min(current, seconds)

    def _rate_limited_types(self, task_types: Sequence[str] | None) -> list[str]:
        """The rate-limited types among ``task_types`` (``None``: any), sorted."""
        limited = [
            row.task_type for row in self._backend.rate_limits(self._session, self._controls)
        ]
        _RATE_LIMITED_SEEN[self._rate_cache_key()] = (
            time.monotonic() + RATE_LIMITS_REREAD,
            limited,
        )
        if task_types is None:
            return limited
        return [name for name in limited if name in task_types]

    def _recently_rate_limited(self, task_types: Sequence[str] | None) -> list[str]:
        """:meth:`_rate_limited_types`, read at most every :data:`RATE_LIMITS_REREAD`
        seconds per process and queue, so a claim does not pay a statement for it.  A stale
        answer is safe: plain claims leave out every type limited now, so the worst a stale
        list does is claim a type that has just been limited a moment later, or try a
        lifted limit's budget and find none."""
        seen = _RATE_LIMITED_SEEN.get(self._rate_cache_key())
        if seen is None or seen[0] <= time.monotonic():
            return self._rate_limited_types(task_types)
        limited = seen[1]
        return limited if task_types is None else [n for n in limited if n in task_types]

    def _uses_keys(self, *, fresh: bool = False) -> bool:
        """Whether the queue has had tasks with a concurrency key (it keeps their keys'
        slots), read at most every :data:`RATE_LIMITS_REREAD` seconds per process and
        queue (``fresh``: now).  A stale answer is safe: a claim that does not take key
        slots never claims a keyed task."""
        cache_key = self._rate_cache_key()
        seen = _KEYS_SEEN.get(cache_key)
        if not fresh and seen is not None and seen[0] > time.monotonic():
            return seen[1]
        keyed = self._backend.has_key_slots(self._session, self._table)
        _KEYS_SEEN[cache_key] = (time.monotonic() + RATE_LIMITS_REREAD, keyed)
        return keyed

    def _rate_cache_key(self) -> tuple[int, str]:
        return (id(self._session.get_bind(mapper=self._model)), self._table.fullname)

    def _forget_rate_limits(self) -> None:
        _RATE_LIMITED_SEEN.pop(self._rate_cache_key(), None)

    def _claim_request(
        self,
        task_type: str | Sequence[str] | None,
        limit: int,
        lease_duration: Duration | None,
        relaxed_commit: bool,
        starting: int | None = None,
    ) -> ClaimRequest:
        """The claim, every argument checked (``starting`` is a worker's own count)."""
        require_bool("relaxed_commit", relaxed_commit)
        task_types = task_types_argument(task_type)
        require_int("limit", limit, minimum=1, maximum=INT4_MAX)  # bound as an integer
        lease = self._lease if lease_duration is None else lease_duration_argument(lease_duration)
        return ClaimRequest(
            task_types, limit, lease, self.owner, relaxed_commit=relaxed_commit, starting=starting
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
        if not self._backend.set_progress(
            self._session,
            self._table,
            task_id,
            progress,
            lease_token,
            relaxed_commit=relaxed_commit,
        ):
            allowed = (TaskStatus.IN_PROGRESS,) if lease_token else ACTIVE_STATUSES
            self._explain_miss(task_id, "update progress of", allowed, lease_token)

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
        if not self._backend.complete(self._session, self._table, task_id, result, lease_token):
            self._explain_miss(task_id, "complete", (TaskStatus.IN_PROGRESS,), lease_token)

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
        leases = [(row[0], row[1]) for row in rows]
        return self._backend.complete_many(self._session, self._table, leases, results)

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
        status = self._backend.fail(
            self._session,
            self._table,
            task_id,
            error_message,
            lease_token,
            backoff=self._backoff,
            retry=retry,
        )
        if status is None:
            self._explain_miss(task_id, "fail", (TaskStatus.IN_PROGRESS,), lease_token)
        return status

    @wrap_database_errors
    def cancel_task(self, task_id: int) -> bool:
        """Cancel a pending or running task; ``False`` when it has already finished.

        A running task becomes ``cancelled`` at once and its lease is revoked: its worker
        finds the lease gone at its next heartbeat, tells the handler to stop
        (``ctx.should_stop()`` turns true, ``ctx.raise_if_stopping()`` raises; an
        ``async def`` handler is cancelled) and discards whatever outcome it comes back
        with; any completion, failure or progress written with the old lease is refused.
        A cancelled task is not retried.

        :raises TaskNotFoundError: no such task.

        Example::

            repo.cancel_task(task_id)  # True
        """
        require_task_id(task_id)
        if self._backend.cancel(self._session, self._table, task_id):
            return True
        self._require_exists(task_id)
        return False

    @wrap_database_errors
    def discard_task(self, task_id: int) -> bool:
        """Delete a finished task (completed, failed or cancelled) for good; ``False``
        when it is pending or running (cancel it first).

        :raises TaskNotFoundError: no such task.

        Example::

            repo.discard_task(task_id)  # True: a failed task nobody will retry is gone
        """
        require_task_id(task_id)
        if self._backend.discard(self._session, self._table, task_id):
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
        if self._backend.retry(
            self._session, self._table, task_id=task_id, task_type=None, channel=self._channel
        ):
            return
        holder = self._backend.dedupe_holder(self._session, self._table, task_id)
        if holder is not None:
            raise InvalidTransitionError(
                task_id,
                action="retry",
                reason=f"task {holder} with the same dedupe key is already active",
            )
        self._explain_miss(task_id, "retry", (TaskStatus.FAILED,), None)

    @wrap_database_errors
    def retry_failed_tasks(
        self,
        task_type: str | None = None,
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        columns: Mapping[str, Any] | None = None,
    ) -> int:
        """Put every failed task (of ``task_type``; created from ``created_after``, before
        ``created_before``; whose ``columns`` have these values) back in the queue;
        returns how many.  The filters are those of :meth:`browse_tasks`.

        Failed tasks whose dedupe key is held by an active task are left failed.

        Example::

            repo.retry_failed_tasks("webhook")  # 3
            repo.retry_failed_tasks(columns={"project_id": 7})  # one project's failures
        """
        if task_type is not None:
            require_task_type(task_type)
            task_type = task_type_name(task_type)
        matching = None
        if created_after is not None or created_before is not None or columns:
            matching = task_query(
                self._table,
                created_after=created_after,
                created_before=created_before,
                columns=columns,
            )
        retried = self._backend.retry(
            self._session,
            self._table,
            task_id=None,
            task_type=task_type,
            channel=self._channel,
            matching=matching,
        )
        return len(retried)

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
        return self._backend.renew_leases(self._session, self._table, pairs, lease)

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
        return self._backend.record_starts(self._session, self._table, pairs)

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
        return self._backend.release(self._session, self._table, pairs, channel=self._channel)

    @wrap_database_errors
    def rescue_expired_leases(self, *, limit: int = 1000) -> dict[int, TaskStatus]:
        """Return tasks whose lease expired to the queue (or fail them when out of retries).

        A rescue consumes a retry like a failed attempt, but the task is due at once.
        Returns ``{task_id: new_status}``.

        Example::

            repo.rescue_expired_leases()  # {17: <TaskStatus.PENDING: 'pending'>}
        """
        require_int("limit", limit, minimum=1, maximum=INT8_MAX)
        rescued = self._backend.rescue(
            self._session, self._table, limit=limit, channel=self._channel
        )
        if self._uses_keys():
            self._backend.free_orphaned_slots(self._session, self._table)
        return rescued

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
        return self._backend.progress_of(
            self._session, self._table, task_type_name(task_type), match
        )

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
        total = batches = 0
        while True:
            deleted = self._backend.purge(
                self._session, self._table, older_than=older_than, batch_size=batch_size
            )
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
        return self._backend.count_purgeable(self._session, self._table, older_than=older_than)

    # ------------------------------------------------------------------ flow controls

    @wrap_database_errors
    def pause(self, task_type: str | None = None) -> None:
        """Stop claims of ``task_type`` (``None``: of every type) until :meth:`resume`.

        Takes effect at every worker's next claim, with no restart; tasks already
        running finish, and enqueueing goes on.  Pausing what is paused changes nothing.

        Example::

            repo.pause("data_export")
            repo.session.commit()
        """
        self._backend.set_paused(self._session, self._controls, self._control_key(task_type), True)

    @wrap_database_errors
    def resume(self, task_type: str | None = None) -> None:
        """Let claims of ``task_type`` (``None``: the whole queue) go on; idle workers are
        woken when the transaction commits.  A type paused on its own stays paused when
        the whole queue resumes.

        Example::

            repo.resume("data_export")
            repo.session.commit()
        """
        self._backend.set_paused(self._session, self._controls, self._control_key(task_type), False)
        if self._channel is not None:
            self._backend.announce(self._session, self._channel)

    @wrap_database_errors
    def paused(self) -> list[str]:
        """The paused task types, sorted; ``"*"`` when the whole queue is paused.

        Example::

            repo.paused()  # ['data_export']
        """
        return [
            WHOLE_QUEUE if task_type == QUEUE_WIDE else task_type
            for task_type in self._backend.paused_types(self._session, self._controls)
        ]

    @wrap_database_errors
    def set_rate_limit(self, task_type: str, limit: int, *, per: Duration) -> None:
        """At most ``limit`` claims of ``task_type`` in any window of length ``per``,
        counted across every worker (replacing any earlier limit of the type).

        Enforced where tasks are claimed: a claim of a limited type locks its row in the
        controls table, counts the claims of the last ``per`` and takes no more than the
        rest of the budget.  Workers learn of a new limit within their rescue interval
        and claim none of the type meanwhile.

        Example::

            repo.set_rate_limit("webhook", 20, per=timedelta(seconds=1))
            repo.session.commit()
        """
        key = self._control_key(task_type, allow_queue=False)
        require_int("limit", limit, minimum=1, maximum=INT4_MAX)
        seconds = to_seconds("per", per)
        self._backend.set_rate_limit(self._session, self._controls, key, limit, seconds)
        self._forget_rate_limits()

    @wrap_database_errors
    def clear_rate_limit(self, task_type: str) -> bool:
        """Lift the rate limit of ``task_type``; ``False`` when it had none.

        Example::

            repo.clear_rate_limit("webhook")
        """
        key = self._control_key(task_type, allow_queue=False)
        self._forget_rate_limits()
        return self._backend.clear_rate_limit(self._session, self._controls, key)

    @wrap_database_errors
    def rate_limits(self) -> list[RateLimit]:
        """The rate-limited types, with how much of their budget is in use now.

        Example::

            [(r.task_type, r.limit, r.per, r.recent_starts) for r in repo.rate_limits()]
        """
        now = self._backend.clock(self._session).timestamp()
        return [
            RateLimit(
                task_type=row.task_type,
                limit=int(row.rate_limit),
                per=timedelta(seconds=float(row.rate_period_seconds)),
                recent_starts=started(
                    recent_starts(row.rate_starts, now, float(row.rate_period_seconds))
                ),
                paused=bool(row.paused),
            )
            for row in self._backend.rate_limits(self._session, self._controls)
        ]

    @wrap_database_errors
    def keys_at_limit(self) -> list[KeyAtLimit]:
        """The concurrency keys whose every slot is taken now, by key, with how many of
        their due tasks wait for a slot.

        Example::

            [(k.concurrency_key, k.running, k.waiting) for k in repo.keys_at_limit()]
        """
        if not self._uses_keys(fresh=True):
            return []
        return [
            KeyAtLimit(
                concurrency_key=row.concurrency_key,
                limit=int(row.slot_limit),
                running=int(row.running),
                waiting=int(row.waiting),
            )
            for row in self._backend.keys_at_limit(self._session, self._table)
        ]

    # ------------------------------------------------------------------ worker registry

    @wrap_database_errors
    def workers(self) -> list[LiveWorker]:
        """The workers running now, as they registered themselves (oldest first): every
        worker writes its row at start, refreshes it with its heartbeats and removes it
        when it stops; a worker that died drops out once its row expires (one lease
        after its last heartbeat).

        Example::

            [(w.host, w.pid, w.task_types) for w in repo.workers()]
        """
        rows = self._backend.live_workers(self._session, self._table)
        return [LiveWorker.from_row(row) for row in rows]

    def _record_worker(self, worker: Mapping[str, Any], lease: timedelta) -> None:
        """Register a worker, or refresh its registration."""
        self._backend.record_worker(self._session, self._table, worker, lease)

    def _heartbeat(
        self, leases: list[tuple[int, uuid.UUID]], worker: Mapping[str, Any], lease: timedelta
    ) -> set[int]:
        """A worker's heartbeat: renew ``leases`` and its registration in one statement
        (the registration alone when it holds none); the ids whose lease it still holds."""
        if not leases:
            self._record_worker(worker, lease)
            return set()
        return self._backend.renew_leases(self._session, self._table, leases, lease, worker)

    def _remove_worker(self, worker_id: str) -> None:
        self._backend.remove_worker(self._session, self._table, worker_id)

    def _forget_dead_workers(self) -> list[str]:
        return self._backend.forget_dead_workers(self._session, self._table)

    @property
    def _controls(self) -> Table:
        return controls_table(self._table)

    @staticmethod
    def _control_key(task_type: str | None, *, allow_queue: bool = True) -> str:
        if task_type is None and allow_queue:
            return QUEUE_WIDE
        require_task_type(task_type, new=True)
        assert task_type is not None  # checked just above
        return task_type_name(task_type)

    # ------------------------------------------------------------------ schedules

    @wrap_database_errors
    def schedules(self) -> list[ScheduleState]:
        """Every periodic schedule workers have recorded, by name: its definition, next
        and last fire, and whether a worker still carries it (``orphaned`` otherwise).

        Example::

            for s in repo.schedules():
                print(s.name, s.spec, s.next_fire_at, "paused" if s.paused else "")
        """
        table = schedules_table(self._table)
        now = self._backend.clock(self._session)
        rows = self._backend.schedules(self._session, table)
        return [ScheduleState.from_row(row, now) for row in rows]

    @wrap_database_errors
    def pause_schedule(self, name: str) -> None:
        """Stop a schedule from firing until :meth:`resume_schedule` (its tasks already
        enqueued still run).

        :raises ScheduleNotFoundError: no such schedule.

        Example::

            repo.pause_schedule("nightly_report")
        """
        self._set_paused(name, paused=True)

    @wrap_database_errors
    def resume_schedule(self, name: str) -> None:
        """Let a paused schedule fire again; fires missed meanwhile follow its ``missed``
        policy.

        :raises ScheduleNotFoundError: no such schedule.

        Example::

            repo.resume_schedule("nightly_report")
        """
        self._set_paused(name, paused=False)

    @wrap_database_errors
    def run_schedule(self, name: str) -> int:
        """Enqueue a schedule's task now, once, as its row defines it (payload, priority,
        retries, columns), whether or not it is paused; returns the task's id.  The
        schedule's own fire times are unchanged.

        :raises ScheduleNotFoundError: no such schedule.

        Example::

            task_id = repo.run_schedule("nightly_report")
        """
        require_schedule_name(name)
        table = schedules_table(self._table)
        rows = self._backend.schedules(self._session, table, name)
        if not rows:
            raise ScheduleNotFoundError(name)
        row = rows[0]
        return self.enqueue(
            row.task_type,
            row.payload,
            priority=row.priority,
            max_retries=row.max_retries,
            **row.columns,
        )

    def _set_paused(self, name: str, *, paused: bool) -> None:
        require_schedule_name(name)
        table = schedules_table(self._table)
        if not self._backend.set_schedule_paused(self._session, table, name, paused):
            raise ScheduleNotFoundError(name)

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
        concurrency: Mapping[str, Any],
        columns: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The parameters of one new task's row, every argument checked: the payload as
        the JSON text its check produced."""
        values = self._shared_values(
            task_type,
            max_retries=max_retries,
            priority=priority,
            run_at=run_at,
            timeout_seconds=timeout_seconds,
            concurrency=concurrency,
            columns=columns,
        )
        values["payload"] = json_text("payload", payload, max_bytes=self._max_payload)
        return values

    def _shared_values(
        self,
        task_type: str,
        *,
        max_retries: int,
        priority: int,
        run_at: datetime | timedelta | None,
        timeout_seconds: int | None,
        concurrency: Mapping[str, Any],
        columns: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The parameters new tasks share (all but the payload), every argument checked
        (``concurrency``: what :func:`concurrency_values` returned)."""
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
        require_app_columns(self._model.__name__, self._table, columns)
        values.update(concurrency)
        values.update(columns)
        headers = enqueue_headers()
        if headers is not None:  # the enqueue's trace context, while tracing
            values["headers"] = headers
        return values

    def _add_key_slots(self, values: Mapping[str, Any]) -> None:
        """The slots of the new tasks' concurrency key, if they have one, before they are
        inserted (in the caller's transaction)."""
        key = values.get("concurrency_key")
        if key is None:
            return
        self._backend.add_key_slots(
            self._session, self._table, {key: int(values["concurrency_limit"])}
        )
        _KEYS_SEEN[self._rate_cache_key()] = (time.monotonic() + RATE_LIMITS_REREAD, True)

    def _explain_miss(
        self,
        task_id: int,
        action: str,
        allowed: tuple[TaskStatus, ...],
        lease_token: uuid.UUID | None,
    ) -> NoReturn:
        found = self._backend.diagnose(self._session, self._table, task_id)
        if found is None:
            raise TaskNotFoundError(task_id)
        status, current_token = found
        if lease_token is not None and current_token != lease_token:
            raise LeaseLostError(task_id, action=action)
        raise InvalidTransitionError(
            task_id, action=action, status=str(status), allowed=tuple(map(str, allowed))
        )

    def _require_exists(self, task_id: int) -> None:
        if self._backend.diagnose(self._session, self._table, task_id) is None:
            raise TaskNotFoundError(task_id)


def detached_in_claim_order(model: Any, rows: Sequence[Any]) -> list[Any]:
    """A claim statement's rows as detached ``model`` instances, in claim order, for a
    model that has a :func:`~sqlalchemy_taskqueue._loading.detached_loader`.

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
    started_at = names.index("started_at")
    in_order = operator.itemgetter(*(names.index(name) for name in CLAIM_ORDER))
    return lambda row: (row[started_at] is None, in_order(row))


def _in_claim_order(claimed: list[TaskT]) -> list[TaskT]:
    """``claimed`` in the order the claim picked them (``RETURNING`` does not keep it):
    the tasks it started first (with a worker's prefetch, those go straight to free
    slots), then the rest."""
    in_order = operator.attrgetter(*CLAIM_ORDER)
    claimed.sort(key=lambda task: (task.started_at is None, in_order(task)))
    return claimed
