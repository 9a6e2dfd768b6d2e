"""Static typing of the public API, checked by ``mypy --strict`` in ``make typecheck``.

Nothing here runs; mypy fails the build when an annotation users rely on regresses.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)
from typing_extensions import assert_type

from sqlalchemy_taskqueue import (
    AsyncTaskRepository,
    AsyncWorker,
    HandlerRegistry,
    TaskContext,
    TaskMixin,
    TaskRepository,
    TaskStatus,
    Worker,
)
from sqlalchemy_taskqueue.monitoring import QueueDepth, QueueStats


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    __tablename__ = "tasks"
    project_id: Mapped[int | None] = mapped_column()


def registry_types(session_factory: sessionmaker[Session]) -> None:
    tasks = HandlerRegistry(Task)
    assert_type(tasks, HandlerRegistry[Task])
    assert_type(tasks.model, type[Task] | None)
    assert_type(Worker(session_factory, Task, tasks), Worker[Task])


def repository_types(session: Session) -> None:
    repo = TaskRepository(session, Task)
    assert_type(repo.enqueue("export", {"project_id": 1}, project_id=1), int)
    assert_type(repo.enqueue_many("export", [{}]), list[int])
    assert_type(repo.enqueue_if_not_exists("export", {}), tuple[int, bool])
    task = repo.dequeue("export")
    assert_type(task, Task | None)
    assert_type(repo.dequeue_many(limit=5), list[Task])
    assert_type(repo.fail_task(1, "boom"), TaskStatus)
    assert_type(repo.get_task(1), Task | None)
    assert_type(repo.get_task_progress("export", project_id="p1"), int | None)
    assert_type(repo.cleanup_old_tasks(timedelta(days=7)), int)
    assert_type(repo.complete_tasks([(1, uuid.uuid4(), None)]), set[int])
    assert_type(repo.queue_depth(), list[QueueDepth])
    assert_type(repo.queue_stats(), QueueStats)
    if task is not None:
        assert_type(task.id, int)
        assert_type(task.status, TaskStatus)
        assert_type(task.lease_token, uuid.UUID | None)
        assert_type(task.project_id, int | None)


async def async_repository_types(session: AsyncSession) -> None:
    repo = AsyncTaskRepository(session, Task)
    assert_type(await repo.enqueue("export", {}), int)
    assert_type(await repo.enqueue_if_not_exists("export", {}), tuple[int, bool])
    assert_type(await repo.fail_task(1, "boom"), TaskStatus)
    # the twin's returned rows are the model's, as with TaskRepository
    task = await repo.dequeue("export")
    assert_type(task, Task | None)
    assert_type(await repo.dequeue_many(limit=5), list[Task])
    assert_type(await repo.get_task(1), Task | None)
    # and it takes the same typed options
    AsyncTaskRepository(session, Task, owner="importer-1", lease_duration=timedelta(minutes=1))
    AsyncTaskRepository(session, Task, owner=1)  # type: ignore[arg-type]


def worker_types(factory: sessionmaker[Session]) -> None:
    registry = HandlerRegistry(Task)

    @registry.handler("export")
    def export(task: Any, ctx: TaskContext) -> dict[str, int]:
        ctx.update_progress(50)
        assert_type(ctx.should_stop(), bool)
        return {"rows": 1}

    worker = Worker(factory, Task, registry, concurrency=2, lease_duration=30)
    assert_type(worker.task_types, list[str])
    worker.run(until_empty=True)


def session_factories_of_the_wrong_kind(
    factory: sessionmaker[Session], async_factory: async_sessionmaker[AsyncSession]
) -> None:
    # refused at run time too; a type checker sees it first
    Worker(async_factory, Task, {})  # type: ignore[arg-type]
    AsyncWorker(factory, Task, {})  # type: ignore[arg-type]
    Worker(scoped_session(factory), Task, {})


async def async_worker_types(factory: async_sessionmaker[AsyncSession]) -> None:
    registry = HandlerRegistry(Task)

    @registry.handler("export")
    async def export(task: Any, ctx: TaskContext) -> dict[str, int]:
        ctx.update_progress(50)
        return {"rows": 1}

    worker = AsyncWorker(factory, Task, registry, concurrency=2, lease_duration=30)
    assert_type(worker.task_types, list[str])
    assert_type(worker.owner, str)
    assert_type(await worker.run(until_empty=True, install_signal_handlers=False), None)
    worker.stop()
