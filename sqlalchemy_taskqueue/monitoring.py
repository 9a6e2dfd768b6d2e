"""Typed monitoring queries: the questions operators ask of a queue.

Each method is one query and returns frozen dataclasses, so dashboards, alerts and the
``taskqueue stats`` command share one implementation.  They are methods of
:class:`~sqlalchemy_taskqueue.TaskRepository`::

    with Session(engine) as session:
        repo = TaskRepository(session, Task)
        for depth in repo.queue_depth():
            print(depth.task_type, depth.ready, depth.oldest_ready_seconds)

=============================  ==========================================================
method                         answers
=============================  ==========================================================
``status_counts()``            how many tasks per type and status
``queue_depth()``              what is waiting per type: due now, scheduled, oldest age
``stuck_tasks()``              what runs too long or lost its worker (expired lease)
``processing_times()``         average and p95 run time per type over a window
``outcome_rates()``            completed / failed / retried share and throughput per type
``recent_failures()``          the latest failed tasks with their errors
``queue_stats()``              all of the above at once, for ``taskqueue stats``
=============================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table
from sqlalchemy.orm import Session

from ._validation import INT8_MAX, require_int, require_key, require_task_type, require_timedelta
from .backends.base import TaskQuery
from .exceptions import wrap_database_errors
from .status import TaskStatus

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = [
    "FailedTask",
    "OutcomeBucket",
    "OutcomeRate",
    "ProcessingTime",
    "QueueDepth",
    "QueueStats",
    "StatusCount",
    "StuckTask",
    "TaskMonitoring",
]


@dataclass(frozen=True)
class StatusCount:
    """Number of tasks of one type in one status.

    Example::

        for row in repo.status_counts():
            print(row.task_type, row.status, row.count)
    """

    task_type: str
    status: TaskStatus
    count: int


@dataclass(frozen=True)
class QueueDepth:
    """Pending tasks of one type.

    Example::

        for row in repo.queue_depth():
            print(row.task_type, row.ready, row.scheduled, row.oldest_ready_seconds)
    """

    task_type: str
    ready: int
    """Claimable now."""
    scheduled: int
    """Waiting for ``run_at`` (scheduled or backing off before a retry)."""
    oldest_ready_seconds: float
    """Age of the oldest claimable task (time since its ``run_at``); 0 when none."""


@dataclass(frozen=True)
class StuckTask:
    """An in-progress task that runs too long or whose worker stopped renewing its lease.

    Example::

        for task in repo.stuck_tasks(timedelta(minutes=30)):
            print(task.id, task.lease_owner, task.lease_expired)
    """

    id: int
    task_type: str
    started_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    retry_count: int
    progress: int
    lease_expired: bool


@dataclass(frozen=True)
class ProcessingTime:
    """Run time of completed tasks of one type within a window.

    Example::

        for row in repo.processing_times(timedelta(hours=1)):
            print(row.task_type, row.completed, row.average_seconds, row.p95_seconds)
    """

    task_type: str
    completed: int
    average_seconds: float
    p95_seconds: float


def _share(part: int, whole: int) -> float:
    """``part / whole``, 0 when there is nothing to divide."""
    return part / whole if whole else 0.0


@dataclass(frozen=True)
class OutcomeRate:
    """How the tasks of one type that finished within a window ended.

    Example::

        for row in repo.outcome_rates(timedelta(hours=1)):
            print(row.task_type, row.success_rate, row.throughput_per_minute)
    """

    task_type: str
    completed: int
    failed: int
    cancelled: int
    retried: int
    """Finished tasks that needed at least one retry."""
    window_seconds: float

    @property
    def finished(self) -> int:
        """Tasks that reached a final state in the window.

        >>> rate = OutcomeRate("email", 90, 10, 0, retried=5, window_seconds=3600)
        >>> rate.finished
        100
        """
        return self.completed + self.failed + self.cancelled

    @property
    def success_rate(self) -> float:
        """Completed share of completed + failed (0 when none).

        >>> rate = OutcomeRate("email", 90, 10, 0, retried=5, window_seconds=3600)
        >>> rate.success_rate
        0.9
        """
        return _share(self.completed, self.completed + self.failed)

    @property
    def failure_rate(self) -> float:
        """Failed share of completed + failed (0 when none).

        >>> rate = OutcomeRate("email", 90, 10, 0, retried=5, window_seconds=3600)
        >>> rate.failure_rate
        0.1
        """
        return _share(self.failed, self.completed + self.failed)

    @property
    def retry_rate(self) -> float:
        """Share of finished tasks that needed a retry (0 when none).

        >>> rate = OutcomeRate("email", 90, 10, 0, retried=5, window_seconds=3600)
        >>> rate.retry_rate
        0.05
        """
        return _share(self.retried, self.finished)

    @property
    def throughput_per_minute(self) -> float:
        """Completed tasks per minute over the window.

        >>> rate = OutcomeRate("email", 90, 10, 0, retried=5, window_seconds=3600)
        >>> rate.throughput_per_minute
        1.5
        """
        return self.completed / (self.window_seconds / 60) if self.window_seconds else 0.0


@dataclass(frozen=True)
class FailedTask:
    """A permanently failed task and its last error.

    Example::

        for task in repo.recent_failures(limit=10):
            print(task.id, task.task_type, task.error_message)
    """

    id: int
    task_type: str
    error_message: str | None
    retry_count: int
    created_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class OutcomeBucket:
    """Tasks finished in one stretch of time (a bar of the dashboard's chart).

    Example::

        OutcomeBucket(datetime(2026, 1, 1, 12, 5, tzinfo=timezone.utc), completed=40, failed=2)
    """

    start: datetime
    completed: int
    failed: int


#: The most buckets :meth:`TaskMonitoring.outcome_timeline` returns.
MAX_TIMELINE_BUCKETS = 1000


def _datetime_or_none(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise TypeError(f"{name} must be a timezone-aware datetime or None, got {value!r}")
    return value


def task_query(
    table: Table,
    *,
    status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
    task_type: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    columns: Mapping[str, Any] | None = None,
    search: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> TaskQuery:
    """The checked arguments of :meth:`TaskMonitoring.browse_tasks` (each rule raises a
    clear ``ValueError`` or ``TypeError``).

    Example::

        task_query(Task.__table__, status="failed", columns={"project_id": 7})
    """
    if status is None:
        statuses: tuple[str, ...] = ()
    else:
        given = [status] if isinstance(status, str) else list(status)
        try:
            statuses = tuple(TaskStatus(value).value for value in given)
        except ValueError:
            known = ", ".join(member.value for member in TaskStatus)
            raise ValueError(f"status must be among {known}, got {status!r}") from None
    if task_type is not None:
        require_task_type(task_type)
    after = _datetime_or_none("created_after", created_after)
    before = _datetime_or_none("created_before", created_before)
    if after is not None and before is not None and after >= before:
        raise ValueError(f"created_after ({after}) must be before created_before ({before})")
    wanted = dict(columns or {})
    for name in wanted:
        if not isinstance(name, str) or name not in table.c:
            raise ValueError(
                f"{table.name} has no column {name!r} (columns: {', '.join(table.c.keys())})"
            )
    if search is not None:
        if not isinstance(search, str) or not search.strip():
            raise ValueError(f"search must be a non-empty string, got {search!r}")
        search = search.strip()
        require_key("search", search)
    if before_id is not None:
        require_int("before_id", before_id, minimum=1, maximum=INT8_MAX)
    require_int("limit", limit, minimum=1, maximum=MAX_PAGE_SIZE)
    return TaskQuery(statuses, task_type, after, before, wanted, search, before_id, limit)


#: The most tasks :meth:`TaskMonitoring.browse_tasks` returns at once.
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of the whole queue (what ``taskqueue stats`` prints).

    Example::

        stats = repo.queue_stats(window=timedelta(hours=1))
        print(json.dumps(stats.as_dict()))
    """

    status_counts: list[StatusCount] = field(default_factory=list)
    queue_depth: list[QueueDepth] = field(default_factory=list)
    processing_times: list[ProcessingTime] = field(default_factory=list)
    outcome_rates: list[OutcomeRate] = field(default_factory=list)
    stuck: list[StuckTask] = field(default_factory=list)
    window: timedelta = timedelta(hours=24)
    """The period the rates and run times cover."""
    unclaimed_types: list[str] = field(default_factory=list)
    """Types with ready tasks that no worker claimed in the last hour
    (:meth:`TaskMonitoring.unclaimed_types`)."""
    unhandled_types: list[str] = field(default_factory=list)
    """Types with pending tasks that no live worker claims, by the worker registry
    (:meth:`TaskMonitoring.unhandled_types`)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (datetimes as ISO strings, rates included).

        Example::

            json.dumps(repo.queue_stats().as_dict())
        """
        rates = [
            {
                **asdict(rate),
                "success_rate": rate.success_rate,
                "failure_rate": rate.failure_rate,
                "retry_rate": rate.retry_rate,
                "throughput_per_minute": rate.throughput_per_minute,
            }
            for rate in self.outcome_rates
        ]
        snapshot: dict[str, Any] = _jsonable(
            {
                "status_counts": [asdict(item) for item in self.status_counts],
                "queue_depth": [asdict(item) for item in self.queue_depth],
                "processing_times": [asdict(item) for item in self.processing_times],
                "outcome_rates": rates,
                "stuck": [asdict(item) for item in self.stuck],
                "window_seconds": self.window.total_seconds(),
                "unclaimed_types": list(self.unclaimed_types),
                "unhandled_types": list(self.unhandled_types),
            }
        )
        return snapshot


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, TaskStatus):
        return value.value
    return value


def require_limit(limit: Any) -> int:
    """A row limit: an integer from 1 to what PostgreSQL's ``LIMIT`` takes (a bigint).

    >>> require_limit(20)
    20
    """
    require_int("limit", limit, minimum=1, maximum=INT8_MAX)
    return int(limit)


class TaskMonitoring:
    """Monitoring queries, mixed into :class:`~sqlalchemy_taskqueue.TaskRepository`.

    Example::

        repo = TaskRepository(session, Task)
        backlog = sum(row.ready for row in repo.queue_depth())
    """

    _session: Session
    _table: Table

    if TYPE_CHECKING:

        @property
        def _backend(self) -> Backend: ...

    @wrap_database_errors
    def status_counts(self) -> list[StatusCount]:
        """Tasks per type and status.

        Example::

            {(c.task_type, c.status): c.count for c in repo.status_counts()}
        """
        rows = self._backend.status_counts(self._session, self._table)
        return [StatusCount(row.type, TaskStatus(row.status), int(row.total)) for row in rows]

    @wrap_database_errors
    def queue_depth(self) -> list[QueueDepth]:
        """Pending tasks per type: claimable now, scheduled later, oldest claimable age.

        Example::

            [d for d in repo.queue_depth() if d.oldest_ready_seconds > 300]  # alert
        """
        rows = self._backend.queue_depth(self._session, self._table)
        return [
            QueueDepth(
                row.type, int(row.ready), int(row.scheduled), float(row.oldest_ready_seconds)
            )
            for row in rows
        ]

    @wrap_database_errors
    def unclaimed_types(self, since: timedelta = timedelta(hours=1)) -> list[str]:
        """Task types with tasks ready to run that no worker has claimed within ``since``
        (none of them in progress or started since): most likely no running worker has a
        handler for them, and their tasks wait for ever.

        Example::

            for task_type in repo.unclaimed_types():
                alert(f"no worker runs {task_type} tasks")
        """
        since = require_timedelta("since", since, allow_zero=False)
        return self._backend.unclaimed_types(self._session, self._table, since=since)

    @wrap_database_errors
    def unhandled_types(self) -> list[str]:
        """Task types with pending tasks that no live worker claims, by the worker
        registry (every running worker registers the types it claims): until a worker
        that handles them starts, those tasks wait.

        Example::

            for task_type in repo.unhandled_types():
                alert(f"no running worker handles {task_type}")
        """
        return self._unhandled_among(self.status_counts())

    def _unhandled_among(self, counts: list[StatusCount]) -> list[str]:
        """:meth:`unhandled_types`, from status counts already read (counting reads the
        whole table: :meth:`queue_stats` does it once)."""
        handled = {
            task_type
            for row in self._backend.live_workers(self._session, self._table)
            for task_type in row.task_types
        }
        pending = {
            count.task_type
            for count in counts
            if count.status is TaskStatus.PENDING and count.count > 0
        }
        return sorted(pending - handled)

    @wrap_database_errors
    def stuck_tasks(
        self, running_longer_than: timedelta = timedelta(hours=1), *, limit: int = 100
    ) -> list[StuckTask]:
        """In-progress tasks running longer than the threshold, or with an expired lease.

        Example::

            repo.stuck_tasks(timedelta(minutes=30))
        """
        require_timedelta("running_longer_than", running_longer_than, allow_zero=False)
        rows = self._backend.stuck_tasks(
            self._session,
            self._table,
            running_longer_than=running_longer_than,
            limit=require_limit(limit),
        )
        return [
            StuckTask(
                row.id,
                row.type,
                row.started_at,
                row.lease_owner,
                row.lease_expires_at,
                int(row.retry_count),
                int(row.progress),
                bool(row.lease_expired),
            )
            for row in rows
        ]

    @wrap_database_errors
    def processing_times(self, window: timedelta = timedelta(hours=24)) -> list[ProcessingTime]:
        """Average and p95 run time (claim to completion) per type over ``window``.

        Example::

            repo.processing_times(timedelta(hours=1))
        """
        rows = self._backend.processing_times(
            self._session,
            self._table,
            window=require_timedelta("window", window, allow_zero=False),
        )
        return [
            ProcessingTime(
                row.type,
                int(row.completed),
                float(row.average_seconds or 0),
                float(row.p95_seconds or 0),
            )
            for row in rows
        ]

    @wrap_database_errors
    def outcome_rates(self, window: timedelta = timedelta(hours=24)) -> list[OutcomeRate]:
        """Success, failure and retry rates and throughput per type over ``window``.

        Example::

            [r.task_type for r in repo.outcome_rates() if r.failure_rate > 0.05]
        """
        rows = self._backend.outcome_counts(
            self._session,
            self._table,
            window=require_timedelta("window", window, allow_zero=False),
        )
        seconds = window.total_seconds()
        return [
            OutcomeRate(
                row.type,
                int(row.completed),
                int(row.failed),
                int(row.cancelled),
                int(row.retried),
                seconds,
            )
            for row in rows
        ]

    @wrap_database_errors
    def recent_failures(
        self, *, limit: int = 100, task_type: str | None = None
    ) -> list[FailedTask]:
        """The latest failed tasks (newest first) with their error messages.

        Example::

            for failure in repo.recent_failures(limit=10):
                print(failure.id, failure.error_message)
        """
        if task_type is not None and (not isinstance(task_type, str) or not task_type):
            raise ValueError(f"task_type must be a non-empty string, got {task_type!r}")
        rows = self._backend.recent_failures(
            self._session, self._table, limit=require_limit(limit), task_type=task_type
        )
        return [
            FailedTask(
                row.id,
                row.type,
                row.error_message,
                int(row.retry_count),
                row.created_at,
                row.completed_at,
            )
            for row in rows
        ]

    @wrap_database_errors
    def browse_tasks(
        self,
        *,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        task_type: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        columns: Mapping[str, Any] | None = None,
        search: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """A page of tasks, newest first, each as its columns (the model's own columns
        too), read without locking any row.  Every filter given must hold: ``status``
        (one or several), ``task_type``, ``created_after`` (inclusive) and
        ``created_before`` (exclusive), ``columns`` (equal values), ``search`` (a task
        id or a dedupe key).  The next page: ``before_id=`` the last task's id.

        Example::

            page = repo.browse_tasks(status="failed", columns={"project_id": 7}, limit=20)
            more = repo.browse_tasks(status="failed", before_id=page[-1]["id"]) if page else []
        """
        query = task_query(
            self._table,
            status=status,
            task_type=task_type,
            created_after=created_after,
            created_before=created_before,
            columns=columns,
            search=search,
            before_id=before_id,
            limit=limit,
        )
        rows = self._backend.browse_tasks(self._session, self._table, query)
        return [dict(row._mapping) for row in rows]

    @wrap_database_errors
    def recent_status_counts(self, window: timedelta = timedelta(hours=24)) -> list[StatusCount]:
        """Tasks in progress, and tasks finished within ``window``, per type and status
        (pending tasks: :meth:`queue_depth`).  Unlike :meth:`status_counts` it reads only
        those rows, through their partial indexes: cheap however much history the table
        keeps.

        Example::

            failed_today = sum(
                c.count for c in repo.recent_status_counts() if c.status is TaskStatus.FAILED
            )
        """
        window = require_timedelta("window", window, allow_zero=False)
        rows = self._backend.recent_status_counts(self._session, self._table, window=window)
        counts = [StatusCount(row.type, TaskStatus(row.status), int(row.total)) for row in rows]
        return sorted(counts, key=lambda count: (count.task_type, count.status.value))

    @wrap_database_errors
    def outcome_timeline(
        self,
        window: timedelta = timedelta(hours=1),
        bucket: timedelta = timedelta(minutes=5),
    ) -> list[OutcomeBucket]:
        """Tasks completed and failed within ``window``, per ``bucket`` of time, oldest
        first, every bucket of the window included (empty ones as zeros).

        Example::

            for bar in repo.outcome_timeline(timedelta(hours=1), timedelta(minutes=5)):
                print(bar.start, bar.completed, bar.failed)
        """
        window = require_timedelta("window", window, allow_zero=False)
        bucket = require_timedelta("bucket", bucket, allow_zero=False)
        if bucket < timedelta(seconds=1) or bucket.total_seconds() % 1:
            raise ValueError(f"bucket must be a whole number of seconds, got {bucket!r}")
        if window / bucket > MAX_TIMELINE_BUCKETS:
            raise ValueError(
                f"window / bucket must be at most {MAX_TIMELINE_BUCKETS} buckets, "
                f"got {window / bucket:.0f}"
            )
        rows = self._backend.outcome_timeline(
            self._session, self._table, window=window, bucket=bucket
        )
        found = {row.bucket_start: (int(row.completed), int(row.failed)) for row in rows}
        now = self._backend.clock(self._session)
        seconds = int(bucket.total_seconds())
        last = datetime.fromtimestamp((int(now.timestamp()) // seconds) * seconds, tz=now.tzinfo)
        count = int(window / bucket) + (1 if window % bucket else 0)
        starts = [last - bucket * back for back in range(count - 1, -1, -1)]
        return [OutcomeBucket(start, *found.get(start, (0, 0))) for start in starts]

    def queue_stats(
        self,
        window: timedelta = timedelta(hours=24),
        running_longer_than: timedelta = timedelta(hours=1),
    ) -> QueueStats:
        """Every monitoring figure at once.

        Example::

            print(json.dumps(repo.queue_stats().as_dict(), indent=2))
        """
        counts = self.status_counts()
        return QueueStats(
            status_counts=counts,
            queue_depth=self.queue_depth(),
            processing_times=self.processing_times(window),
            outcome_rates=self.outcome_rates(window),
            stuck=self.stuck_tasks(running_longer_than),
            window=window,
            unclaimed_types=self.unclaimed_types(),
            unhandled_types=self._unhandled_among(counts),
        )
