"""What a handler sees while it runs: :class:`TaskContext`.

Example::

    def export(task, ctx):
        for index, chunk in enumerate(chunks):
            ctx.raise_if_stopping()          # shutdown, timeout or lost lease
            write(chunk)
            ctx.update_progress(100 * (index + 1) // len(chunks))
        return {"chunks": len(chunks)}
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy_taskqueue._validation import require_int
from sqlalchemy_taskqueue.exceptions import TaskInterrupted

__all__ = ["ProgressWriter", "TaskContext"]

logger = logging.getLogger("sqlalchemy_taskqueue.worker")

#: Writes ``(task_id, progress, lease_token)`` in its own short transaction; returns
#: ``False`` when the lease is gone.
ProgressWriter = Callable[[int, int, uuid.UUID], bool]


class TaskContext:
    """The running attempt of one task, as its handler sees it.

    :ivar task_id: the task's id.
    :ivar task_type: the task's type.
    :ivar payload: the task's JSON payload.
    :ivar attempt: 1 for the first attempt, 2 for the first retry, ...
    :ivar lease_token: the claim's lease token (fences every write of this attempt).

    Example::

        def bulk_import(task, ctx):
            rows = load_rows(ctx.payload["path"])
            for done, row in enumerate(rows, start=1):
                ctx.raise_if_stopping()  # shutdown, timeout or a lost lease
                save(row)
                ctx.update_progress(100 * done // len(rows))
    """

    def __init__(
        self,
        task: Any,
        *,
        progress_writer: ProgressWriter,
        progress_interval: float,
        worker_stopping: threading.Event,
    ) -> None:
        self.task_id: int = task.id
        self.task_type: str = task.type
        self.payload: Any = task.payload
        self.attempt: int = task.retry_count + 1
        self.lease_token: uuid.UUID = task.lease_token
        self._write = progress_writer
        self._interval = progress_interval
        self._worker_stopping = worker_stopping
        self._lock = threading.Lock()
        self._written_at = float("-inf")
        self._written: int | None = None
        self._pending: int | None = None
        self._writing = False  # one write at a time, so values land in the order reported
        self._force_next = False
        self._stop_reason: str | None = None

    # ------------------------------------------------------------------ for handlers

    def update_progress(self, percent: int) -> None:
        """Report progress (0..100).  Throttled: at most one write per progress interval;
        the latest value is always written eventually.  A failed write is logged and never
        fails the task.

        Example::

            ctx.update_progress(40)
        """
        require_int("progress", percent, minimum=0, maximum=100)  # as the repository does
        with self._lock:
            self._pending = percent
        self.flush_progress(force=False)

    def should_stop(self) -> bool:
        """True once the worker shuts down, the attempt timed out or the lease was lost.

        Example::

            while not ctx.should_stop():
                process_next_item()
        """
        return self._worker_stopping.is_set() or self._stop_reason is not None

    def raise_if_stopping(self) -> None:
        """Raise :class:`TaskInterrupted` when :meth:`should_stop` is true.

        The worker then hands the task back (shutdown) or records the failed attempt
        (timeout); nothing else is written.

        Example::

            ctx.raise_if_stopping()
        """
        if self.should_stop():
            raise TaskInterrupted(self.stop_reason or "the worker is shutting down")

    @property
    def stop_reason(self) -> str | None:
        """Why the attempt should stop, or ``None``.

        Example::

            if ctx.should_stop():
                logger.info("export stopped early: %s", ctx.stop_reason)
        """
        if self._stop_reason is not None:
            return self._stop_reason
        return "the worker is shutting down" if self._worker_stopping.is_set() else None

    # ------------------------------------------------------------------ for the worker

    def interrupt(self, reason: str) -> None:
        """Ask the handler to stop (timeout, lost lease, shutdown deadline).

        Only the first reason is kept; :meth:`should_stop` turns true.

        Example::

            ctx.interrupt("the lease on this task was lost")
        """
        if self._stop_reason is None:
            self._stop_reason = reason

    def flush_progress(self, *, force: bool) -> None:
        """Write the latest reported progress if the throttle interval has passed.

        With ``force`` it is written regardless of the interval.  While another thread
        writes, that thread writes the latest value after its own.

        Example::

            ctx.flush_progress(force=True)  # write the last value now
        """
        while True:
            with self._lock:
                if self._writing:  # the write in flight is followed by this value
                    self._force_next = self._force_next or force
                    return
                force, self._force_next = force or self._force_next, False
                value = self._pending
                now = time.monotonic()
                if value is None or value == self._written:
                    return
                if not force and now - self._written_at < self._interval:
                    return
                self._pending = None
                self._written_at = now
                self._written = value
                self._writing = True
            try:
                written = self._write(self.task_id, value, self.lease_token)
            except Exception:
                logger.warning(
                    "progress.write_failed id=%s progress=%s", self.task_id, value, exc_info=True
                )
                self.progress_unwritten(value)
                return
            finally:
                with self._lock:
                    self._writing = False
            if not written:
                self.interrupt("the lease on this task was lost")
                return

    def progress_unwritten(self, value: int) -> None:
        """A write of ``value`` failed: write it again at the next flush, unless a newer
        value was reported meanwhile.

        Example::

            ctx.progress_unwritten(40)  # the database refused the write of 40 %
        """
        with self._lock:
            self._written = None
            if self._pending is None:
                self._pending = value
