"""The asyncio twins: :class:`AsyncTaskRepository` and :class:`AsyncWorker`.

As ``sqlalchemy.ext.asyncio`` does for SQLAlchemy, this module holds the async
counterparts of the package's classes, with the same method names (install the
``async`` extra).  :class:`AsyncTaskRepository` takes an :class:`~sqlalchemy.ext.asyncio.AsyncSession` and
offers every repository method under the same name, as a coroutine.  Each call runs the
synchronous method through ``AsyncSession.run_sync``, so the two share one
implementation (validation, statements, error handling) and cannot drift apart.  Like
its twin it never commits::

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    engine = create_async_engine("postgresql+asyncpg://app@db/app")
    Session = async_sessionmaker(engine)

    async def start_export(project_id: int) -> int:
        async with Session.begin() as session:
            repo = AsyncTaskRepository(session, Task)
            return await repo.enqueue("data_export", {"project_id": project_id})

:class:`AsyncWorker` is the twin of :class:`~sqlalchemy_taskqueue.Worker` and runs on
an asyncio event loop; its handlers may be ``async def`` or plain functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session
from sqlalchemy.orm import Session

from ._validation import DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_RESULT_BYTES
from .backends.base import Backend
from .backoff import DEFAULT_BACKOFF, BackoffPolicy
from .durations import Duration
from .models import task_table
from .repository import DEFAULT_LEASE_DURATION, TaskRepository, TaskT
from .worker._asyncio import AsyncWorker

__all__ = ["AsyncTaskRepository", "AsyncWorker"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _awaitable(
    method: Callable[Concatenate[TaskRepository[TaskT], _P], _R],
) -> Callable[Concatenate[AsyncTaskRepository[TaskT], _P], Coroutine[Any, Any, _R]]:
    """The coroutine twin of a ``TaskRepository`` method."""

    @functools.wraps(method)  # the same name and signature (``inspect.signature``)
    async def twin(self: AsyncTaskRepository[TaskT], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        def call(session: Session) -> _R:
            return method(self._sync, *args, **kwargs)

        return await self.session.run_sync(call)

    twin.__doc__ = f"Awaitable :meth:`TaskRepository.{method.__name__}`.\n\n{method.__doc__ or ''}"
    return twin


class AsyncTaskRepository(Generic[TaskT]):
    """Every :class:`TaskRepository` operation as a coroutine, on an ``AsyncSession``.

    Takes the same keyword options as :class:`TaskRepository` (``backoff``,
    ``lease_duration``, ``owner``, ``notify``, ``max_payload_bytes``,
    ``max_result_bytes``).  An
    ``async_scoped_session`` stands for its current session, the one the repository then
    runs in.

    Example::

        async with Session() as session:
            repo = AsyncTaskRepository(session, Task)
            task = await repo.get_task(task_id)
    """

    def __init__(
        self,
        session: AsyncSession | async_scoped_session[AsyncSession],
        model: type[TaskT],
        *,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
        lease_duration: Duration = DEFAULT_LEASE_DURATION,
        owner: str | None = None,
        notify: bool = True,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        max_result_bytes: int | None = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        if isinstance(session, async_scoped_session):
            session = session()  # the scope's current session, as each call would use
        if not isinstance(session, AsyncSession):
            raise TypeError(f"session must be an AsyncSession, got {session!r}")
        task_table(model)
        options: dict[str, Any] = {
            "backoff": backoff,
            "lease_duration": lease_duration,
            "owner": owner,
            "notify": notify,
            "max_payload_bytes": max_payload_bytes,
            "max_result_bytes": max_result_bytes,
        }
        # the twin every call runs on (``run_sync`` passes this same sync session)
        self._sync = TaskRepository(session.sync_session, model, **options)
        self._session = session
        self._model = model
        self._options = options

    @property
    def session(self) -> AsyncSession:
        """The caller's ``AsyncSession`` this repository runs in.

        Example::

            await repo.session.commit()
        """
        return self._session

    @property
    def model(self) -> type[TaskT]:
        """The task model.

        Example::

            AsyncTaskRepository(session, Task).model  # <class 'Task'>
        """
        return self._model

    @property
    def owner(self) -> str:
        """The identity written to ``lease_owner`` by claims made through this repository.

        Example::

            AsyncTaskRepository(session, Task, owner="importer-1").owner  # 'importer-1'
        """
        return self._sync.owner

    @property
    def notify_channel(self) -> str:
        """The LISTEN/NOTIFY channel on which this queue announces new tasks.

        Example::

            AsyncTaskRepository(session, Task).notify_channel  # 'taskqueue_tasks'
        """
        return self._sync.notify_channel

    @property
    def backend(self) -> Backend:
        """The backend of the database the session runs the model's statements on
        (:mod:`sqlalchemy_taskqueue.backends`).

        Example::

            repo.backend.capabilities.listen  # True on PostgreSQL
        """
        return self._sync.backend

    def sync_repository(self, session: Session) -> TaskRepository[TaskT]:
        """The synchronous twin bound to ``session`` (used inside ``run_sync``).

        Example::

            stats = await repo.session.run_sync(lambda s: repo.sync_repository(s).queue_stats())
        """
        if session is self._sync.session:
            return self._sync
        return TaskRepository(session, self.model, **self._options)

    enqueue = _awaitable(TaskRepository.enqueue)
    enqueue_many = _awaitable(TaskRepository.enqueue_many)
    enqueue_if_not_exists = _awaitable(TaskRepository.enqueue_if_not_exists)
    dequeue = _awaitable(TaskRepository.dequeue)
    dequeue_many = _awaitable(TaskRepository.dequeue_many)
    update_progress = _awaitable(TaskRepository.update_progress)
    complete_task = _awaitable(TaskRepository.complete_task)
    complete_tasks = _awaitable(TaskRepository.complete_tasks)
    fail_task = _awaitable(TaskRepository.fail_task)
    cancel_task = _awaitable(TaskRepository.cancel_task)
    discard_task = _awaitable(TaskRepository.discard_task)
    retry_task = _awaitable(TaskRepository.retry_task)
    retry_failed_tasks = _awaitable(TaskRepository.retry_failed_tasks)
    renew_leases = _awaitable(TaskRepository.renew_leases)
    record_starts = _awaitable(TaskRepository.record_starts)
    release_tasks = _awaitable(TaskRepository.release_tasks)
    rescue_expired_leases = _awaitable(TaskRepository.rescue_expired_leases)
    get_task = _awaitable(TaskRepository.get_task)
    get_task_progress = _awaitable(TaskRepository.get_task_progress)
    cleanup_old_tasks = _awaitable(TaskRepository.cleanup_old_tasks)
    count_old_tasks = _awaitable(TaskRepository.count_old_tasks)
    status_counts = _awaitable(TaskRepository.status_counts)
    queue_depth = _awaitable(TaskRepository.queue_depth)
    unclaimed_types = _awaitable(TaskRepository.unclaimed_types)
    unhandled_types = _awaitable(TaskRepository.unhandled_types)
    stuck_tasks = _awaitable(TaskRepository.stuck_tasks)
    processing_times = _awaitable(TaskRepository.processing_times)
    outcome_rates = _awaitable(TaskRepository.outcome_rates)
    recent_failures = _awaitable(TaskRepository.recent_failures)
    browse_tasks = _awaitable(TaskRepository.browse_tasks)
    recent_status_counts = _awaitable(TaskRepository.recent_status_counts)
    outcome_timeline = _awaitable(TaskRepository.outcome_timeline)
    queue_stats = _awaitable(TaskRepository.queue_stats)
    pause = _awaitable(TaskRepository.pause)
    resume = _awaitable(TaskRepository.resume)
    paused = _awaitable(TaskRepository.paused)
    set_rate_limit = _awaitable(TaskRepository.set_rate_limit)
    clear_rate_limit = _awaitable(TaskRepository.clear_rate_limit)
    rate_limits = _awaitable(TaskRepository.rate_limits)
    keys_at_limit = _awaitable(TaskRepository.keys_at_limit)
    workers = _awaitable(TaskRepository.workers)
    schedules = _awaitable(TaskRepository.schedules)
    pause_schedule = _awaitable(TaskRepository.pause_schedule)
    resume_schedule = _awaitable(TaskRepository.resume_schedule)
    run_schedule = _awaitable(TaskRepository.run_schedule)
