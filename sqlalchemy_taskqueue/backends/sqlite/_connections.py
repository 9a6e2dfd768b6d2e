"""Engines for a SQLite queue: WAL, a busy timeout, and transactions that take the write
lock when they begin.

SQLite lets one connection write at a time.  A transaction that reads first and writes
later (``BEGIN DEFERRED``) may find, when it comes to write, that another connection
wrote meanwhile, and then fails at once with ``database is locked`` whatever the busy
timeout.  The queue's own operations avoid that by writing first; the worker's engines
begin every transaction with ``BEGIN IMMEDIATE`` (the write lock at once, waiting for
it up to the busy timeout), which suits short transactions that write.

:func:`configure_engine` sets an application's engine up the same way::

    from sqlalchemy import create_engine
    from sqlalchemy_taskqueue.backends.sqlite import configure_engine

    engine = configure_engine(create_engine("sqlite:///app.db"))

What it sets on each new connection: ``journal_mode = WAL`` (readers never wait for the
writer; a file setting, kept once set), ``synchronous = NORMAL`` (durable at every
checkpoint, safe with WAL), ``busy_timeout`` (:data:`BUSY_TIMEOUT_MS`: a writer waits
that long for the lock before ``database is locked``) and ``foreign_keys = ON``; and
SQLAlchemy, not the driver, begins transactions, reads included (so savepoints work and
a transaction reads one snapshot): ``BEGIN`` by default, ``BEGIN IMMEDIATE`` with
``immediate=True``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "BUSY_TIMEOUT_MS",
    "configure_engine",
    "create_async_worker_engine",
    "create_worker_engine",
]

#: Milliseconds a connection waits for another's write lock before giving up.
BUSY_TIMEOUT_MS = 30_000

_CONFIGURED = "taskqueue_sqlite_configured"


def configure_engine(engine: Engine, *, immediate: bool = False) -> Engine:
    """``engine`` (a SQLite one, sync or the ``sync_engine`` of an async one) with the
    settings of the module's docstring on every connection; returned for chaining.
    With ``immediate``, every transaction takes the write lock when it begins.

    Example::

        engine = configure_engine(create_engine("sqlite:///queue.db"))
    """
    if engine.dialect.name != "sqlite":
        raise ValueError(f"configure_engine expects a SQLite engine, not {engine.dialect.name}")
    if getattr(engine, _CONFIGURED, False):
        return engine
    setattr(engine, _CONFIGURED, True)
    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # the driver's own transaction handling off: SQLAlchemy's begin event starts them
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode = WAL",
            "synchronous = NORMAL",
            f"busy_timeout = {BUSY_TIMEOUT_MS}",
            "foreign_keys = ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql(begin)

    return engine


def create_worker_engine(url: URL, *, concurrency: int) -> Engine:
    """A configured engine (:func:`configure_engine`) for a worker.

    Example::

        engine = create_worker_engine(make_url("sqlite:///queue.db"), concurrency=4)
    """
    engine = create_engine(url, pool_size=concurrency + 2, max_overflow=4)
    return configure_engine(engine, immediate=True)


def create_async_worker_engine(url: URL, *, concurrency: int) -> AsyncEngine:
    """A configured async engine (aiosqlite) for a worker.

    Example::

        engine = create_async_worker_engine(make_url("sqlite+aiosqlite:///q.db"), concurrency=4)
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, pool_size=concurrency + 2, max_overflow=4)
    configure_engine(engine.sync_engine, immediate=True)
    return engine
