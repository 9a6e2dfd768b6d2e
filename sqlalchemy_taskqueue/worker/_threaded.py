"""The worker: claims tasks, runs their handlers on N slots, and records the outcome.

Example::

    from sqlalchemy.orm import sessionmaker
    from sqlalchemy_taskqueue import Worker

    def export(task, ctx):
        ctx.update_progress(50)
        return {"url": "s3://exports/7.csv"}

    worker = Worker(sessionmaker(engine), Task, {"data_export": export}, concurrency=8)
    worker.run()                  # blocks; SIGINT/SIGTERM or worker.stop() end it

How it works:

* **Claim** — a loop claims up to its free slots in one short committed transaction
  (``FOR UPDATE SKIP LOCKED``), hands the tasks to slot threads, and waits for a free
  slot, a ``NOTIFY`` from an enqueue, or the poll interval.  No transaction stays open
  while a handler runs.
* **Leases** — each claim carries a lease (``lease_duration``).  A supervisor thread
  renews the leases of all running tasks in one statement every ``heartbeat_interval``
  (a quarter of the lease by default).  Any worker rescues tasks whose lease expired
  (their worker died) every ``rescue_interval``: back to ``pending`` with a retry used,
  or ``failed`` when none is left.  Completion, failure and progress writes carry the
  lease token, so a worker that lost its lease cannot overwrite its successor.
* **Outcome** — the handler's return value (JSON) is stored in ``result``; an exception
  fails the attempt (``"ValueError: message"``) and the repository's backoff schedules
  the retry through ``run_at``; the worker never sleeps for backoff.
* **Timeouts** — per task (``timeout_seconds`` column), per type (registry or
  ``timeouts=``) or ``default_timeout``.  At the deadline the attempt is failed, its
  lease is invalidated and ``ctx.should_stop()`` turns true.  Python cannot kill a
  thread, so a handler that never returns keeps its slot busy; its late result is
  discarded.
* **Shutdown** — on SIGINT/SIGTERM or :meth:`Worker.stop`: stop claiming, let running
  tasks finish within ``shutdown_grace``, then hand the rest back to ``pending`` without
  using a retry.  A second signal exits at once (the leases expire and other workers
  rescue the tasks).  :meth:`Worker.run` returns within ``shutdown_grace`` plus
  :data:`~sqlalchemy_taskqueue.worker._base.STOP_BOUND` of the stop request whatever the
  network does: the worker runs on threads of its own, and the thread that called
  ``run()`` only waits, handles signals, and gives up on a database that never answers.

The loop itself is written once for this worker and
:class:`~sqlalchemy_taskqueue.AsyncWorker`, as steps that yield effects
(:mod:`sqlalchemy_taskqueue.worker._core`); this module is their threaded driver: it
performs each effect by blocking the thread that runs the steps, and owns the threads
(claim loop, slots, supervisor) and the signal handling.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, scoped_session

from sqlalchemy_taskqueue._schema import notify_channel
from sqlalchemy_taskqueue._tracing import call_in_span
from sqlalchemy_taskqueue.backends.base import Listener
from sqlalchemy_taskqueue.exceptions import LeaseLostError
from sqlalchemy_taskqueue.repository import TaskT

from . import _effects as effects
from ._attempts import Attempt, Outcome, WorkerStats
from ._base import (
    claim_connection_engine,
    claims_without_session,
    is_coroutine_handler,
    logger,
)
from ._core import WorkerCore
from ._handlers import HandlerSpec
from ._logging import default_logging

__all__ = ["Worker", "WorkerStats"]

_R = TypeVar("_R")

#: The longest run()'s waiting thread waits before it checks for signals again.
_SIGNAL_CHECK = 0.2
#: What run()'s waiting thread is told (see Worker._await_run).
_STOP_REQUESTED = "stop requested"
_RUN_ENDED = "run ended"


class Worker(WorkerCore[TaskT, Session]):
    """Runs handlers for claimed tasks on ``concurrency`` slots.

    :param session_factory: a ``sessionmaker`` bound to the queue's database; the worker
        owns the transactions of the sessions it makes.  A ``scoped_session`` stands for
        its ``session_factory`` (the worker never uses a scope's session).
    :param model: the task model (a :class:`~sqlalchemy_taskqueue.TaskMixin` table).
    :param handlers: ``{task_type: handler}`` or a :class:`HandlerRegistry`.
    :param concurrency: slots, i.e. tasks run at the same time (threads), 1 to 1000.
    :param task_types: types to claim; ``None`` means the handlers' types.
    :param lease_duration: how long a claim lasts without a heartbeat.
    :param poll_interval: the longest idle wait between claims (LISTEN usually wakes the
        worker much earlier).
    :param heartbeat_interval: lease renewal period (default: a quarter of the lease).
    :param rescue_interval: how often expired leases are rescued (default: a quarter of
        the lease, at most 15 s); a dead worker's task is back within about
        ``lease_duration + rescue_interval``.
    :param timeouts: per-type attempt timeouts, ``{task_type: duration}``.
    :param default_timeout: attempt timeout for types without one.
    :param shutdown_grace: how long running tasks may finish after a stop request.
    :param progress_interval: the shortest time between two progress writes of a task.
    :param listen: wake on ``LISTEN/NOTIFY`` (PostgreSQL); ``False`` polls only.
    :param backoff: retry delay policy for failed attempts.
    :param prefetch: tasks claimed beyond the free slots, waiting in the worker for a
        slot (their leases are renewed too), so that each claim transaction carries a
        bigger batch.  ``None`` (the default) sizes it from the tasks' recent pace (the
        moving average of attempt durations, or the age of the oldest running attempt
        if that is longer): as many as the slots will start within about 50 ms, so none
        for slow tasks, at most 32 per slot, and none until ``concurrency`` attempts
        have finished.  A number fixes it (at most 10,000); 0 turns it off.
    :param max_result_bytes: largest handler result stored, as UTF-8 JSON text (default
        1 MiB; ``None`` for no limit); a larger one fails its task without a retry.
    :param on_event: ``callback(event, task, seconds)`` called for ``"completed"``,
        ``"failed"``, ``"retried"`` and ``"released"`` (used for metrics).

    Durations accept a ``timedelta`` or a number of seconds.  Handlers are plain
    functions; ``async def`` handlers need :class:`~sqlalchemy_taskqueue.AsyncWorker`.

    Example::

        worker = Worker(sessionmaker(engine), Task, {"data_export": export}, concurrency=8)
        worker.run()  # until SIGINT/SIGTERM or worker.stop()
    """

    _slots: queue.SimpleQueue[Attempt | None]
    _claim_connection: Connection | None

    def _prepare(self) -> None:
        if isinstance(self._session_factory, scoped_session):
            # its sessions are its scopes' (a thread's, a request's, a handler's): the
            # worker makes its own, or a progress write would commit a handler's session
            self._session_factory = self._session_factory.session_factory
        # an async_scoped_session stands for its async_sessionmaker (not imported here:
        # the async extra may be missing)
        factory = getattr(self._session_factory, "session_factory", self._session_factory)
        made = getattr(factory, "class_", None)
        if isinstance(made, type) and not issubclass(made, Session):
            raise TypeError(
                f"Worker needs a sessionmaker of Sessions, got one of {made.__name__}; "
                "an async_sessionmaker goes with AsyncWorker"
            )
        self._wake = threading.Event()
        self._supervisor_wake = threading.Event()
        # held while a transaction writes outcomes or renews leases: the two touch the
        # same rows in no fixed order, and a heartbeat must see outcomes already written
        self._write_lock = threading.Lock()
        self._slots = queue.SimpleQueue()
        self._claim_connection = None  # see WorkerCore._claim_only
        self._claims_directly = False
        self._run_events: queue.SimpleQueue[str] | None = None  # see _await_run
        self._run_error: BaseException | None = None

    def _check_handlers(self, specs: dict[str, HandlerSpec]) -> None:
        for task_type, spec in specs.items():
            if is_coroutine_handler(spec.function):
                raise TypeError(
                    f"the handler for {task_type!r} is an async function: run it with "
                    "AsyncWorker (Worker runs plain functions on threads)"
                )

    # ------------------------------------------------------------------ public

    def stop(self) -> None:
        """Ask a running worker to shut down gracefully (safe from any thread or signal).

        Example::

            threading.Timer(60, worker.stop).start()
            worker.run()
        """
        self._stopping.set()
        self._wake.set()
        events = self._run_events
        if events is not None:
            events.put(_STOP_REQUESTED)  # wakes run()'s thread to start the stop's clock

    def run(self, *, until_empty: bool = False, install_signal_handlers: bool = True) -> None:
        """Process tasks until stopped; with ``until_empty``, until nothing is claimable.

        Installs SIGINT/SIGTERM handlers when called on the main thread (restored on
        return) unless ``install_signal_handlers`` is false (the host application
        handles signals and calls :meth:`stop`); from other threads, use :meth:`stop`.
        A running worker rides out database outages (it retries with backoff, one
        ``worker.database_unavailable`` line per retry); with ``until_empty`` it gives
        up once the database has not answered for
        :data:`~sqlalchemy_taskqueue.worker._base.UNTIL_EMPTY_PATIENCE` (30 s) and
        raises :class:`~sqlalchemy_taskqueue.TaskQueueDatabaseError`.  A missing or
        unmigrated queue table raises :class:`~sqlalchemy_taskqueue.TaskTableError` at
        once.  When the application configured no logging, the worker's lines go to
        stderr while it runs (see :mod:`sqlalchemy_taskqueue.worker._logging`).

        After a stop request it returns within ``shutdown_grace`` plus
        :data:`~sqlalchemy_taskqueue.worker._base.STOP_BOUND` (5 s), whatever the
        network does: the worker runs on threads of its own while the calling thread
        only waits, so it stays free to handle signals and to give up on a database that
        does not answer (``worker.stop_timed_out`` is logged; the tasks still held are
        rescued once their leases expire).

        Example::

            worker.run(until_empty=True)   # drain the queue, then return
        """
        self._begin_run()
        self._run_error = None
        events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._run_events = events
        runner = threading.Thread(
            target=self._run_turns, args=(until_empty, events), name="taskqueue-worker", daemon=True
        )
        try:
            with default_logging(), self._signal_handlers(install_signal_handlers):
                runner.start()
                self._await_run(events)
        except BaseException:
            if runner.ident is None:  # never started: nothing else will end the run
                self._end_run()
            raise
        if self._run_error is not None:
            error, self._run_error = self._run_error, None
            raise error

    def _await_run(self, events: queue.SimpleQueue[str]) -> None:
        """Wait for the run to end; once a stop is requested, for its deadline at most.

        The calling thread does nothing else: a thread inside a driver's C call cannot
        run Python's signal handlers, so they must not run on the thread that talks to
        the database.  It waits on a ``SimpleQueue``, whose ``put`` is safe even from a
        signal handler interrupting this very wait (an ``Event.set`` there could
        deadlock on the lock the interrupted ``wait`` holds).
        """
        deadline: float | None = None
        interrupted: BaseException | None = None
        while True:
            if deadline is None and self._stopping.is_set():
                deadline = self._stop_deadline()
            # never a long wait: a signal the kernel hands to another thread interrupts no
            # wait of this one, and its handler runs only once this thread runs Python
            wait = _SIGNAL_CHECK if deadline is None else deadline - time.monotonic()
            try:
                event = events.get(timeout=max(min(wait, _SIGNAL_CHECK), 0.0))
            except queue.Empty:
                if deadline is None or time.monotonic() < deadline:
                    continue
                self._log_abandoned()
                break
            except BaseException as exc:  # KeyboardInterrupt, or a host's handler raising
                if interrupted is not None:
                    raise  # interrupted twice: stop waiting
                interrupted = exc
                self.stop()  # a graceful stop first, bounded as any other
                continue
            if event == _RUN_ENDED:
                break
        if interrupted is not None:
            raise interrupted

    def _run_turns(self, until_empty: bool, events: queue.SimpleQueue[str]) -> None:
        """The worker itself, on a thread of its own: listener, slots, supervisor, claim
        loop and shutdown.  Whatever started is stopped again, however it ends."""
        try:
            listener = self._start_listener()
            slots: list[threading.Thread] = []
            supervisor: threading.Thread | None = None
            self._supervisor_stop = False
            try:
                self._log_started(listener is not None)  # from here a signal stops it gracefully
                # started one by one inside the try: if one cannot start, those that did
                # (and the listener) are stopped again
                for n in range(self._concurrency):
                    slot = threading.Thread(
                        target=self._slot_loop, name=f"taskqueue-slot-{n}", daemon=True
                    )
                    slot.start()
                    slots.append(slot)
                supervisor = threading.Thread(
                    target=self._drive,
                    args=(self._supervise(),),
                    name="taskqueue-supervisor",
                    daemon=True,
                )
                supervisor.start()
                self._drive(self._claim_loop(until_empty))
            finally:
                self._shut_down(listener, slots, supervisor)
        except BaseException as exc:  # raised again by run(), on the caller's thread
            self._run_error = exc
        finally:
            self._end_run()
            events.put(_RUN_ENDED)

    # ------------------------------------------------------------------ driver

    def _drive(self, steps: effects.Steps[_R]) -> _R:
        """Run the worker's ``steps`` on this thread, performing each effect as it comes."""
        run = effects.Stepper(steps)
        for effect in run:
            try:
                run.value = self._perform(effect)
            except BaseException as exc:  # raised in the steps, where the effect was asked
                run.error = exc
        return run.result()

    def _perform(self, effect: effects.Effect[Any]) -> Any:
        """Do what a step asks, blocking this thread until it is done."""
        if isinstance(effect, effects.Transaction):
            return self._transaction(effect.body, claim_only=effect.claim_only)
        if isinstance(effect, effects.Locked):
            with self._write_lock:
                return self._drive(effect.steps)
        if isinstance(effect, effects.Shielded):  # nothing cancels a thread
            return self._drive(effect.steps)
        if isinstance(effect, effects.ClaimDirectly):
            return effect.run(cast(Connection, effect.connection))
        if isinstance(effect, effects.Wait):
            cast(threading.Event, effect.event).wait(max(effect.seconds, 0.0))
        elif isinstance(effect, effects.Sleep):
            time.sleep(effect.seconds)  # backing off from a failing database
        elif isinstance(effect, effects.CloseClaimConnection):
            self._close_claim_connection(discard=effect.discard)
        # ProgressLanded: a thread's progress write has landed when it returns
        return None

    def _transaction(self, body: Callable[[Session], _R], *, claim_only: bool = False) -> _R:
        """Run ``body`` in a session of its own and commit; with ``claim_only``, on the
        worker's own connection where it may (see ``WorkerCore._claim_only``)."""
        with self._session_factory() as session:
            joined = claim_only and self._join_claim_connection(session)
            try:
                result = body(session)
                session.commit()
            except BaseException:
                if joined:
                    self._close_claim_connection(discard=True)
                raise
            return result

    def _join_claim_connection(self, session: Session) -> bool:
        if self._claim_connection is None:
            engine = claim_connection_engine(session, self._model)
            if engine is None:
                return False
            self._claim_connection = engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            )
            self._claims_directly = claims_without_session(session, self._model)
        try:
            session.connection(bind_arguments={"bind": self._claim_connection})
        except BaseException:
            self._close_claim_connection(discard=True)
            raise
        return True

    def _close_claim_connection(self, *, discard: bool = False) -> None:
        """Give the claim connection back to the pool, or with ``discard`` (after an
        error, its state unknown) close it for good."""
        connection, self._claim_connection = self._claim_connection, None
        if connection is not None:
            try:
                if discard:
                    connection.invalidate()
                connection.close()
            except Exception:  # already broken: nothing left to release
                logger.debug("worker.claim_connection_close_failed", exc_info=True)

    # ------------------------------------------------------------------ slots

    def _slot_loop(self) -> None:
        while True:
            attempt = self._slots.get()
            if attempt is None:
                return
            outcome: Outcome | None = None
            try:
                outcome = self._execute(attempt)
            except BaseException:  # a bug here must not kill the slot or strand the task
                logger.exception("worker.slot_error id=%s", attempt.task.id)
            finally:
                self._slot_done(attempt, outcome)
                # the claim loop clears the flag before it reads what slots did: a flag
                # still set will be seen, so it need not be set again
                if not self._wake.is_set():
                    self._wake.set()

    def _execute(self, attempt: Attempt) -> Outcome | None:
        """Run the handler and say how the attempt ended (written later, in a batch)."""
        start = self._drive(self._begin(attempt))
        if not isinstance(start, HandlerSpec):
            return start
        try:
            result = call_in_span(attempt.span, start.function, attempt.task, attempt.context)
        except BaseException as exc:  # SystemExit from a handler fails the attempt too
            return self._raised(attempt, exc)
        return self._returned(attempt, result)

    def _write_progress(self, task_id: int, progress: int, lease_token: uuid.UUID) -> bool:
        try:
            self._drive(self._write(self._progress_body(task_id, progress, lease_token)))
        except LeaseLostError:
            return False
        return True

    # ------------------------------------------------------------------ start and stop

    def _start_listener(self) -> Listener | None:
        with self._session_factory() as session:
            bind = session.get_bind(mapper=self._model)
        self._note_database(bind)
        if not self._listen or not isinstance(bind, Engine):
            return None
        backend = self._listening_backend(bind.dialect, asynchronous=False)
        if backend is None:
            return None
        channel = notify_channel(self._table)
        listener = backend.listener(bind, channel, self._wake.set, listening=self.listening)
        listener.start()
        return listener

    def _shut_down(
        self,
        listener: Listener | None,
        slots: list[threading.Thread],
        supervisor: threading.Thread | None,
    ) -> None:
        """Give running tasks the grace period, write their outcomes, hand back the rest;
        then end the threads that were started (all of them, or those that were when
        starting the others failed)."""
        try:
            if listener is not None:
                listener.stop()
            self._drive(self._wind_down())
        finally:
            self._close_claim_connection()
            self._supervisor_stop = True
            self._supervisor_wake.set()
            if supervisor is not None:
                supervisor.join(timeout=5)
            for _ in slots:
                self._slots.put(None)
            for thread in slots:
                thread.join(timeout=0.1)
            self._log_stopped()

    @contextmanager
    def _signal_handlers(self, install: bool) -> Iterator[None]:
        if not install or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signal_count(signal.Signals(signum).name):
            os._exit(128 + signum)
        self.stop()
