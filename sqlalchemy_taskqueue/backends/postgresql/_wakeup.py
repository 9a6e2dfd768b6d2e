"""Waking idle workers with PostgreSQL ``LISTEN/NOTIFY``.

Every enqueue sends ``NOTIFY`` on the queue's channel; PostgreSQL delivers it when the
enqueuing transaction commits.  :class:`NotificationListener` keeps one dedicated
connection in ``LISTEN`` and calls back on each notification, so an idle worker claims a
new task within milliseconds instead of at its next poll.  If the connection drops, the
listener reconnects with backoff and the worker keeps polling meanwhile; once it listens
again it wakes the worker once more, for tasks enqueued while nobody listened.

:class:`AsyncNotificationListener` does the same on an asyncio loop through asyncpg or
psycopg 3 (the :class:`~sqlalchemy_taskqueue.AsyncWorker`'s wake-up).

Behind PgBouncer in transaction mode ``LISTEN`` does not work; run workers with
``listen=False`` there (polling only).

Example::

    listener = NotificationListener(engine, "taskqueue_tasks", wake.set)
    listener.start()
    listener.listening.wait(5)
    ...
    listener.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import Engine

from sqlalchemy_taskqueue._messages import error_line
from sqlalchemy_taskqueue._urls import mask_password

from ._statements import listen_statement

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "ASYNC_LISTEN_DRIVERS",
    "LISTEN_DRIVERS",
    "AsyncNotificationListener",
    "NotificationListener",
]

logger = logging.getLogger("sqlalchemy_taskqueue.worker")
_EngineT = TypeVar("_EngineT")

_IDLE_CHECK_SECONDS = 0.5
_MAX_RECONNECT_DELAY = 30.0


_FIRST_RECONNECT_DELAY = 0.5


class _Listener(Generic[_EngineT]):
    """What both listeners share: the channel, the callback, the ``listening`` flag and
    what they do when their connection is lost."""

    def __init__(
        self,
        engine: _EngineT,
        channel: str,
        on_notify: Callable[[], None],
        *,
        listening: threading.Event | None = None,
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._on_notify = on_notify
        self.listening = listening if listening is not None else threading.Event()
        self._lost = False  # the connection was lost since ``LISTEN`` was last in place

    def _now_listening(self) -> None:
        """``LISTEN`` is in place.  After a lost connection, make the caller poll once
        more: a task enqueued while nobody listened announced itself to no one."""
        self.listening.set()
        if self._lost:
            self._lost = False
            self._on_notify()

    def _connection_lost(self, delay: float) -> float:
        """Report a lost connection (call from an ``except`` block) and make the caller
        poll at once; the delay after this one's retry."""
        self.listening.clear()
        # one line when the connection is lost, the retries (the worker's claim loop says
        # once per retry that the database does not answer) and tracebacks at DEBUG
        level = logging.DEBUG if self._lost else logging.WARNING
        self._lost = True
        logger.log(
            level,
            "listen.connection_lost channel=%s url=%s retry_in=%.1fs error=%s",
            self._channel,
            mask_password(getattr(self._engine, "url", "")),
            delay,
            error_line(sys.exc_info()[1] or RuntimeError("unknown")),
        )
        logger.debug("listen.connection_lost traceback", exc_info=True)
        self._on_notify()  # poll at once: something may have been missed
        return min(delay * 2, _MAX_RECONNECT_DELAY)


class NotificationListener(_Listener[Engine]):
    """A thread that listens on ``channel`` and calls ``on_notify()`` for notifications.

    :ivar listening: set while the ``LISTEN`` connection is established.

    Example::

        wake = threading.Event()
        listener = NotificationListener(engine, notify_channel(Task.__table__), wake.set)
        listener.start()
    """

    def __init__(
        self,
        engine: Engine,
        channel: str,
        on_notify: Callable[[], None],
        *,
        listening: threading.Event | None = None,
    ) -> None:
        super().__init__(engine, channel, on_notify, listening=listening)
        self._stopped = threading.Event()
        self._stop_reader, self._stop_writer = os.pipe()  # wakes select() on stop
        self._thread = threading.Thread(
            target=self._run, name=f"taskqueue-listen-{channel}", daemon=True
        )

    def start(self) -> None:
        """Start listening in a background thread.

        Example::

            listener.start()
            listener.listening.wait(5)  # True once LISTEN is established
        """
        try:
            self._thread.start()
        except BaseException:  # can't start new thread: nothing will ever read the pipe
            os.close(self._stop_reader)
            os.close(self._stop_writer)
            raise

    def stop(self) -> None:
        """Stop listening and close the connection.

        Example::

            listener.stop()
        """
        self._stopped.set()
        os.write(self._stop_writer, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        os.close(self._stop_reader)
        os.close(self._stop_writer)

    def _run(self) -> None:
        delay = _FIRST_RECONNECT_DELAY
        while not self._stopped.is_set():
            try:
                self._listen()
                delay = _FIRST_RECONNECT_DELAY
            except Exception:
                next_delay = self._connection_lost(delay)
                self._stopped.wait(delay)
                delay = next_delay

    def _listen(self) -> None:
        proxy = self._engine.raw_connection()
        try:
            connection: Any = proxy.dbapi_connection
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(listen_statement(self._channel))
            self._now_listening()
            while not self._stopped.is_set():
                readable, _, _ = select.select(
                    [connection, self._stop_reader], [], [], _IDLE_CHECK_SECONDS
                )
                if connection in readable and _received(connection):
                    self._on_notify()
        finally:
            self.listening.clear()
            # never return a LISTENing connection to the pool
            proxy.invalidate()


#: The drivers whose connections :class:`NotificationListener` can listen on ...
LISTEN_DRIVERS = ("psycopg2", "psycopg")
#: ... and those of :class:`AsyncNotificationListener`.
ASYNC_LISTEN_DRIVERS = ("asyncpg", "psycopg")


def _received(connection: Any) -> bool:
    """Read what the server sent; whether it held notifications (psycopg2 or psycopg 3)."""
    if hasattr(connection, "poll"):  # psycopg2
        connection.poll()
        received = bool(connection.notifies)
        connection.notifies.clear()
        return received
    return bool(list(connection.notifies(timeout=0)))  # psycopg 3: drain without waiting


class AsyncNotificationListener(_Listener[Any]):
    """The asyncio twin of :class:`NotificationListener`: a task on the running loop that
    keeps one asyncpg or psycopg 3 connection in ``LISTEN`` and calls ``on_notify()`` (on
    the loop) for each notification, reconnecting with backoff when the connection drops.

    Example::

        listener = AsyncNotificationListener(async_engine, "taskqueue_tasks", wake.set)
        listener.start()
        ...
        await listener.stop()
    """

    _engine: AsyncEngine  # (the async extra may be missing: imported for typing only)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening in a task on the running event loop.

        Example::

            listener.start()
        """
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"taskqueue-listen-{self._channel}"
        )

    async def stop(self) -> None:
        """Stop listening and close the connection.

        Example::

            await listener.stop()
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # not ``await task``: suppressing the CancelledError it raises would also
            # swallow a cancellation of the caller (a loop tearing down the worker)
            await asyncio.wait([task])

    async def _run(self) -> None:
        delay = _FIRST_RECONNECT_DELAY
        while True:
            try:
                await self._listen()
                delay = _FIRST_RECONNECT_DELAY
            except Exception:
                next_delay = self._connection_lost(delay)
                await asyncio.sleep(delay)  # backing off from a failing server
                delay = next_delay

    async def _listen(self) -> None:
        connection = await self._engine.connect()
        try:
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            if self._engine.dialect.driver == "asyncpg":
                await self._listen_asyncpg(driver)
            else:
                await self._listen_psycopg(driver)
        finally:
            self.listening.clear()
            # never return a LISTENing connection to the pool
            with contextlib.suppress(Exception):
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()

    async def _listen_asyncpg(self, driver: Any) -> None:
        lost = asyncio.Event()
        driver.add_termination_listener(lambda _connection: lost.set())
        await driver.add_listener(self._channel, lambda *_args: self._on_notify())
        self._now_listening()
        while not lost.is_set() and not driver.is_closed():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lost.wait(), _IDLE_CHECK_SECONDS)
        raise ConnectionError("the LISTEN connection was closed")

    async def _listen_psycopg(self, driver: Any) -> None:
        await driver.set_autocommit(True)
        await driver.execute(listen_statement(self._channel))
        self._now_listening()
        while not driver.closed:
            async for _notification in driver.notifies(timeout=_IDLE_CHECK_SECONDS):
                self._on_notify()
        raise ConnectionError("the LISTEN connection was closed")
