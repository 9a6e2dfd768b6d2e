"""The engines of ``taskqueue worker`` processes: made by the database's backend, and
closed without waiting on a frozen network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from sqlalchemy_taskqueue.backends import backend_for_url, supported_dialects
from sqlalchemy_taskqueue.backends.base import Backend
from sqlalchemy_taskqueue.exceptions import UnsupportedDialectError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "DISPOSE_TIMEOUT",
    "create_async_worker_engine",
    "create_worker_engine",
    "dispose_async_engine",
    "dispose_engine",
    "url_backend",
]

logger = logging.getLogger("sqlalchemy_taskqueue.worker")

#: Seconds the command line waits for its engine's connections to close at exit.
DISPOSE_TIMEOUT = 2.0


def url_backend(url: str | URL) -> Backend:
    """The backend of the database ``url`` names, or
    :class:`~sqlalchemy_taskqueue.exceptions.UnsupportedDialectError`.

    Example::

        url_backend("postgresql://app@db/app").name  # 'postgresql'
    """
    parsed = make_url(url) if isinstance(url, str) else url
    backend = backend_for_url(parsed)
    if backend is None:
        raise UnsupportedDialectError(
            f"sqlalchemy-taskqueue does not support the {parsed.get_backend_name()!r} "
            f"database yet; supported: {', '.join(supported_dialects())}."
        )
    return backend


def create_worker_engine(url: str | URL, *, concurrency: int) -> Engine:
    """The engine a worker process runs a :class:`~sqlalchemy_taskqueue.Worker` on, made
    by the database's backend (bounded waits on the network, a pool for ``concurrency``
    slots).

    Example::

        engine = create_worker_engine("postgresql+psycopg2://app@db/app", concurrency=8)
    """
    parsed = make_url(url) if isinstance(url, str) else url
    return url_backend(parsed).create_worker_engine(parsed, concurrency=concurrency)


def create_async_worker_engine(url: str | URL, *, concurrency: int) -> AsyncEngine:
    """The engine a worker process runs an :class:`~sqlalchemy_taskqueue.AsyncWorker` on:
    the same database through its backend's async driver.

    Example::

        engine = create_async_worker_engine("postgresql://app@db/app", concurrency=8)
    """
    parsed = make_url(url) if isinstance(url, str) else url
    return url_backend(parsed).create_async_worker_engine(parsed, concurrency=concurrency)


def dispose_engine(engine: Engine, timeout: float = DISPOSE_TIMEOUT) -> bool:
    """Close the engine's pooled connections, waiting at most ``timeout`` seconds;
    ``False`` if they were still closing then (they are left to the process's exit).

    Closing a connection sends the server a goodbye; over a frozen network that send
    can block, so it happens on a daemon thread that is not waited for past ``timeout``.

    Example::

        dispose_engine(engine)
    """
    closing = threading.Thread(target=engine.dispose, name="taskqueue-dispose", daemon=True)
    closing.start()
    closing.join(timeout)
    if closing.is_alive():
        logger.warning("worker.dispose_timed_out after=%.1fs", timeout)
        return False
    return True


async def dispose_async_engine(engine: AsyncEngine, timeout: float = DISPOSE_TIMEOUT) -> bool:
    """Close the engine's pooled connections, waiting at most ``timeout`` seconds;
    ``False`` if they had to be cut off.

    An async driver may wait for the server to acknowledge a connection's close without
    a limit: over a frozen network ``await engine.dispose()`` would wait until the
    network returns.  Cancelled at ``timeout``, the driver aborts the connection instead.

    Example::

        await dispose_async_engine(engine)
    """
    try:
        await asyncio.wait_for(engine.dispose(), timeout)
    except asyncio.TimeoutError:
        logger.warning("worker.dispose_timed_out after=%.1fs", timeout)
        return False
    return True
