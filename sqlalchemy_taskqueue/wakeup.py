"""Waking idle workers with PostgreSQL ``LISTEN/NOTIFY``.

Every enqueue sends ``NOTIFY`` on the queue's channel; PostgreSQL delivers it when the
enqueuing transaction commits.  :class:`NotificationListener` keeps one dedicated
connection in ``LISTEN`` and calls back on each notification, so an idle worker claims a
new task within milliseconds instead of at its next poll.  If the connection drops, the
listener reconnects with backoff and the worker keeps polling meanwhile.

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

import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from .statements import listen_statement

__all__ = ["NotificationListener"]

logger = logging.getLogger("sqlalchemy_taskqueue.worker")

_IDLE_CHECK_SECONDS = 0.5
_MAX_RECONNECT_DELAY = 30.0


class NotificationListener:
    """A thread that listens on ``channel`` and calls ``on_notify()`` for notifications.

    :ivar listening: set while the ``LISTEN`` connection is established.
    """

    def __init__(
        self,
        engine: Engine,
        channel: str,
        on_notify: Callable[[], None],
        *,
        listening: threading.Event | None = None,
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._on_notify = on_notify
        self._stopped = threading.Event()
        self._stop_reader, self._stop_writer = os.pipe()  # wakes select() on stop
        self.listening = listening if listening is not None else threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"taskqueue-listen-{channel}", daemon=True
        )

    def start(self) -> None:
        """Start listening in a background thread.

        Example::

            listener.start()
            listener.listening.wait(5)  # True once LISTEN is established
        """
        self._thread.start()

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
        delay = 0.5
        while not self._stopped.is_set():
            try:
                self._listen()
                delay = 0.5
            except Exception:
                self.listening.clear()
                logger.warning(
                    "listen.connection_lost channel=%s retry_in=%.1fs",
                    self._channel,
                    delay,
                    exc_info=True,
                )
                self._on_notify()  # poll at once: something may have been missed
                self._stopped.wait(delay)
                delay = min(delay * 2, _MAX_RECONNECT_DELAY)

    def _listen(self) -> None:
        proxy = self._engine.raw_connection()
        try:
            connection: Any = proxy.dbapi_connection
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(listen_statement(self._channel))
            self.listening.set()
            while not self._stopped.is_set():
                readable, _, _ = select.select(
                    [connection, self._stop_reader], [], [], _IDLE_CHECK_SECONDS
                )
                if connection not in readable:
                    continue
                connection.poll()
                if connection.notifies:
                    connection.notifies.clear()
                    self._on_notify()
        finally:
            self.listening.clear()
            # never return a LISTENing connection to the pool
            proxy.invalidate()
