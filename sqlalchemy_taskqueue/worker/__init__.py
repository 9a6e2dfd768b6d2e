"""Workers: run handlers for claimed tasks, with leases, retries and graceful shutdown.

:class:`Worker` runs on threads; :class:`AsyncWorker` (the ``async`` extra) on an asyncio
event loop.  Both take a :class:`HandlerRegistry` (or a plain mapping of task type to
handler) and hand each handler a :class:`TaskContext` for progress and cancellation::

    from sqlalchemy.orm import sessionmaker
    from sqlalchemy_taskqueue.worker import HandlerRegistry, Worker

    registry = HandlerRegistry()

    @registry.handler("data_export")
    def export(task, ctx):
        ctx.report_progress(50)
        return {"rows": 10}

    Worker(sessionmaker(engine), Task, registry, concurrency=4).run()

An application that runs workers on engines of its own can make them as
``taskqueue worker`` does: :func:`create_worker_engine` and
:func:`create_async_worker_engine` bound every wait on the network (connect, keepalive
and statement timeouts, per driver), and :func:`dispose_engine` /
:func:`dispose_async_engine` close a pool without waiting on a frozen network.

The worker loop is written once (``_core``); ``_threaded`` and ``_asyncio`` only drive
it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy_taskqueue._engines import (
    create_async_worker_engine,
    create_worker_engine,
    dispose_async_engine,
    dispose_engine,
)

from ._attempts import WorkerStats
from ._context import TaskContext
from ._handlers import HandlerRegistry
from ._threaded import Worker

__all__ = [
    "AsyncWorker",
    "HandlerRegistry",
    "TaskContext",
    "Worker",
    "WorkerStats",
    "create_async_worker_engine",
    "create_worker_engine",
    "dispose_async_engine",
    "dispose_engine",
]

if TYPE_CHECKING:
    from ._asyncio import AsyncWorker


def __getattr__(name: str) -> object:
    # the async twin needs greenlet (the "async" extra), so it is imported on first use
    if name == "AsyncWorker":
        from ._asyncio import AsyncWorker

        return AsyncWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
