"""sqlalchemy-taskqueue: a durable task queue that lives in your own database.

Mix :class:`TaskMixin` into a declarative model, migrate the table with Alembic
(:mod:`sqlalchemy_taskqueue.migrations`), enqueue inside your own transactions with
:class:`TaskRepository`, and run workers that claim tasks with
``SELECT ... FOR UPDATE SKIP LOCKED``::

    from sqlalchemy.orm import DeclarativeBase, Session
    from sqlalchemy_taskqueue import TaskMixin, TaskRepository

    class Base(DeclarativeBase):
        pass

    class Task(TaskMixin, Base):
        __tablename__ = "tasks"

    with Session(engine) as session, session.begin():
        TaskRepository(session, Task).enqueue("data_export", {"project_id": 7})
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._concurrency import KeyAtLimit
from ._controls import RateLimit
from ._registry import LiveWorker, package_version
from .backoff import BackoffPolicy
from .exceptions import (
    InvalidTransitionError,
    LeaseLostError,
    ScheduleNotFoundError,
    TaskInterrupted,
    TaskNotFoundError,
    TaskQueueDatabaseError,
    TaskQueueError,
    TaskTableError,
    UnsupportedDialectError,
)
from .models import TaskDataclassMixin, TaskMixin, merge_table_args, task_table_args
from .repository import TaskRepository
from .status import TaskStatus
from .worker import HandlerRegistry, TaskContext, Worker, WorkerStats

__all__ = [
    "AsyncTaskRepository",
    "AsyncWorker",
    "BackoffPolicy",
    "HandlerRegistry",
    "InvalidTransitionError",
    "KeyAtLimit",
    "LeaseLostError",
    "LiveWorker",
    "RateLimit",
    "ScheduleNotFoundError",
    "TaskContext",
    "TaskDataclassMixin",
    "TaskInterrupted",
    "TaskMixin",
    "TaskNotFoundError",
    "TaskQueueDatabaseError",
    "TaskQueueError",
    "TaskRepository",
    "TaskStatus",
    "TaskTableError",
    "UnsupportedDialectError",
    "Worker",
    "WorkerStats",
    "merge_table_args",
    "task_table_args",
]

if TYPE_CHECKING:
    from .asyncio import AsyncTaskRepository, AsyncWorker

#: The version, declared once, in pyproject.toml.
__version__ = package_version()


def __getattr__(name: str) -> object:
    # the async twins need greenlet (the "async" extra), so they are imported on first use
    if name in ("AsyncTaskRepository", "AsyncWorker"):
        from . import asyncio

        return getattr(asyncio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
