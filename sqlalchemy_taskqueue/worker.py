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
  :data:`~sqlalchemy_taskqueue.worker_base.STOP_BOUND` of the stop request whatever the
  network does: the worker runs on threads of its own, and the thread that called
  ``run()`` only waits, handles signals, and gives up on a database that never answers.
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
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, scoped_session

from . import statements
from .attempts import Attempt, Outcome, WorkerStats
from .exceptions import LeaseLostError
from .handlers import HandlerSpec
from .repository import TaskT, detached_in_claim_order
from .wakeup import LISTEN_DRIVERS, NotificationListener
from .worker_base import (
    DATABASE_ERRORS,
    WRITE_ATTEMPTS,
    WorkerBase,
    Written,
    claim_connection_engine,
    claim_worth_retrying,
    claims_without_session,
    is_coroutine_handler,
    logger,
)

__all__ = ["Worker", "WorkerStats"]

_R = TypeVar("_R")

#: What run()'s waiting thread is told (see Worker._await_run).
_STOP_REQUESTED = "stop requested"
_RUN_ENDED = "run ended"


class Worker(WorkerBase[TaskT]):
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
        self._supervisor_stop = threading.Event()
        self._supervisor_wake = threading.Event()
        # held while a transaction writes outcomes or renews leases: the two touch the
        # same rows in no fixed order, and a heartbeat must see outcomes already written
        self._write_lock = threading.Lock()
        self._slots: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self._claim_connection: Connection | None = None  # see _claim_only
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
        A running worker rides out database outages (it retries with backoff); with
        ``until_empty`` it gives up after five failed turns in a row and raises the
        last error.

        After a stop request it returns within ``shutdown_grace`` plus
        :data:`~sqlalchemy_taskqueue.worker_base.STOP_BOUND` (5 s), whatever the
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
            with self._signal_handlers(install_signal_handlers):
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
            try:
                event = events.get(
                    timeout=None if deadline is None else max(deadline - time.monotonic(), 0.0)
                )
            except queue.Empty:
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
            self._supervisor_stop.clear()
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
                    target=self._supervise, name="taskqueue-supervisor", daemon=True
                )
                supervisor.start()
                self._claim_loop(until_empty)
            finally:
                self._shut_down(listener, slots, supervisor)
        except BaseException as exc:  # raised again by run(), on the caller's thread
            self._run_error = exc
        finally:
            self._end_run()
            events.put(_RUN_ENDED)

    # ------------------------------------------------------------------ database

    def _transaction(self, body: Callable[[Session], _R], *, claim_only: bool = False) -> _R:
        """Run ``body`` in a session of its own and commit; with ``claim_only``, on the
        worker's own connection where it may (see :meth:`_claim_only`)."""
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

    def _claim_only(self, free: int) -> list[Any]:
        """A turn with nothing to acknowledge (every wake-up from idle).

        It runs on a connection the worker keeps for such turns, in autocommit, where
        :func:`~.worker_base.claim_connection_engine` allows it: the claim is one
        statement, so it needs no ``BEGIN``/``COMMIT`` round trips and no pool check-out.
        Where :func:`~.worker_base.claims_without_session` allows it too, the statement
        runs straight on that connection, without a session.  The connection is
        discarded on any error (never returned to the pool in an unknown state); after an
        error of the database or its driver (a dead connection after a server restart or
        a failover, a cancelled statement) the turn runs once more on a new one, as a
        pool check-out with ``pool_pre_ping`` would.
        """
        try:
            return self._claim_once(free)
        except Exception as exc:
            if not claim_worth_retrying(exc):
                raise
        return self._claim_once(free)

    def _claim_once(self, free: int) -> list[Any]:
        connection = self._claim_connection
        if connection is None or not self._claims_directly:
            return self._transaction(self._settle_body([], free), claim_only=True)[1]
        try:
            stmt, params = self._claim_params(free)
            rows = connection.execute(stmt, params).all()
        except BaseException:
            self._close_claim_connection(discard=True)
            raise
        return detached_in_claim_order(self._model, rows)

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

    def _write(self, body: Callable[[Session], _R]) -> _R:
        """Run one write in its own transaction, retrying transient database errors."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return self._transaction(body)
            except DATABASE_ERRORS as exc:
                delay = self._write_retry(attempt, exc)
                if delay is None:
                    raise
                time.sleep(delay)  # backing off from a failing database, not synchronising
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ claim loop

    def _claim_loop(self, until_empty: bool) -> None:
        """Write finished outcomes and claim new tasks, one transaction per turn."""
        next_rescue = 0.0
        errors = 0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                if time.monotonic() >= next_rescue:
                    self._rescue()
                    next_rescue = time.monotonic() + self._rescue_every
                free = self._free_slots()
                claimed = self._settle_and_claim(free)
                # empty only if a claim was tried: handlers may have finished meanwhile
                empty = free > 0 and not claimed and self._drained()
                if until_empty and empty and self._rescue() == 0:
                    return
                errors = 0
            except Exception:  # the database, the network, or a bug: keep the worker alive
                errors += 1
                delay = self._claim_failed(errors, until_empty)
                if delay is None:
                    raise
                self._stopping.wait(delay)
                continue
            if free > 0 and len(claimed) == free:
                continue  # maybe more work: claim again once a slot frees
            if not claimed and self._drained():
                self.idle.set()
            self._wake.wait(self._idle_wait(next_rescue))
            self.idle.clear()

    def _settle_and_claim(self, free: int) -> list[Any]:
        """One transaction: write the outcomes that are ready, then claim ``free`` tasks.

        If the transaction fails, the outcomes stay queued for the next turn.
        """
        outcomes = self._take_outcomes()
        if not outcomes and free <= 0:
            return []
        written: Written = []
        claimed: list[Any] = []
        failure: Exception | None = None
        with self._write_lock:
            try:
                if outcomes:
                    written, claimed = self._transaction(self._settle_body(outcomes, free))
                else:
                    claimed = self._claim_only(free)
            except Exception as exc:
                written, claimed = [], []  # the transaction rolled back: nothing was written
                if self._settle_failed(exc, outcomes):
                    written = self._write_separately(outcomes)
                failure = exc
            except BaseException:
                self._requeue(outcomes)
                raise
            self._settled(written)
        return self._hand_out(written, claimed, failure, self._slots.put)

    def _write_separately(self, outcomes: list[Outcome]) -> Written:
        """Write each outcome in its own transaction; one that fails is dropped (its lease
        then expires and the task is rescued) instead of blocking the rest."""
        written: Written = []
        for outcome in outcomes:
            try:
                written.extend(self._write(self._lone_outcome_body(outcome)))
            except Exception:
                self._outcome_write_failed(outcome)
        return written

    def _rescue(self) -> int:
        return self._rescued(self._transaction(self._rescue_body))

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
        start = self._start(attempt)
        if not isinstance(start, HandlerSpec):
            return start
        if attempt.record_first:
            try:
                self._write(self._start_body(attempt))
            except DATABASE_ERRORS:
                return Outcome(attempt, "release")  # runs later, once it can be recorded
        if attempt.deadline is not None:
            self._supervisor_wake.set()  # re-plan around the new deadline
        try:
            result = start.function(attempt.task, attempt.context)
        except BaseException as exc:  # SystemExit from a handler fails the attempt too
            return self._raised(attempt, exc)
        return self._returned(attempt, result)

    def _write_progress(self, task_id: int, progress: int, lease_token: uuid.UUID) -> bool:
        try:
            self._write(self._progress_body(task_id, progress, lease_token))
        except LeaseLostError:
            return False
        return True

    # ------------------------------------------------------------------ supervisor

    def _supervise(self) -> None:
        """Heartbeats, timeouts, throttled progress and stale prefetched tasks, on one
        background thread."""
        next_heartbeat = time.monotonic() + self._heartbeat
        while not self._supervisor_stop.is_set():
            wait = self._poll
            try:
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._renew_leases()
                    if self._release_stale_waiting(now):
                        self._wake.set()
                    next_heartbeat = now + self._heartbeat
                for attempt in self._expired(now):
                    self._time_out(attempt)
                running = self._running()
                for attempt in running:
                    attempt.context.flush_progress(force=False)
                wait = self._next_wake(next_heartbeat, running)
            except Exception:  # keep heartbeating whatever happens
                logger.exception("worker.supervisor_error")
            self._supervisor_wake.wait(wait)
            self._supervisor_wake.clear()

    def _renew_leases(self) -> None:
        with self._write_lock:
            attempts = self._to_renew()
            if not attempts:
                return
            try:
                renewed = self._write(self._renewal_body(attempts))
            except DATABASE_ERRORS:
                logger.exception("worker.heartbeat_failed (will retry)")
                return
            self._renewed(attempts, renewed)

    def _time_out(self, attempt: Attempt) -> None:
        """Fail an attempt that passed its deadline; its handler is asked to stop."""
        outcome = self._timed_out(attempt)
        try:
            with self._write_lock:
                written = self._write(self._outcomes_body([outcome]))
        except DATABASE_ERRORS:
            logger.exception("task.timeout_write_failed id=%d", attempt.task.id)
            return
        # held until the handler returns: its slot stays busy till then
        self._report(written)

    # ------------------------------------------------------------------ start and stop

    def _start_listener(self) -> NotificationListener | None:
        if not self._listen:
            return None
        with self._session_factory() as session:
            bind = session.get_bind(mapper=self._model)
        if not isinstance(bind, Engine) or bind.dialect.name != "postgresql":
            return None
        if bind.dialect.driver not in LISTEN_DRIVERS:
            logger.warning(
                "worker.polling driver=%s (LISTEN/NOTIFY wake-up needs psycopg2 or psycopg)",
                bind.dialect.driver,
            )
            return None
        channel = statements.notify_channel(self._table)
        listener = NotificationListener(bind, channel, self._wake.set, listening=self.listening)
        listener.start()
        return listener

    def _shut_down(
        self,
        listener: NotificationListener | None,
        slots: list[threading.Thread],
        supervisor: threading.Thread | None,
    ) -> None:
        """Give running tasks the grace period, write their outcomes, hand back the rest;
        then end the threads that were started (all of them, or those that were when
        starting the others failed)."""
        try:
            if listener is not None:
                listener.stop()
            self._release_queued()
            if self._busy:
                logger.info("worker.stopping running=%d grace=%.1fs", self._busy, self._grace)
            deadline = time.monotonic() + self._grace
            while True:
                flushed = self._flush_outcomes()
                if (flushed and not self._still_running()) or time.monotonic() >= deadline:
                    break
                self._wake.wait(min(max(deadline - time.monotonic(), 0.01), 0.5))
                self._wake.clear()
            self._hand_back_leftovers()
            if not self._flush_outcomes():
                self._unwritten()
        finally:
            self._close_claim_connection()
            self._supervisor_stop.set()
            self._supervisor_wake.set()
            if supervisor is not None:
                supervisor.join(timeout=5)
            for _ in slots:
                self._slots.put(None)
            for thread in slots:
                thread.join(timeout=0.1)
            self._log_stopped()

    def _release_queued(self) -> None:
        """Claimed tasks still waiting for a slot go straight back."""
        while True:
            try:
                attempt = self._slots.get_nowait()
            except queue.Empty:
                return
            if attempt is not None:
                self._release_waiting(attempt)

    def _flush_outcomes(self) -> bool:
        """Write the queued outcomes; ``False`` when the database could not be reached."""
        try:
            self._settle_and_claim(0)
        except Exception:
            logger.exception("worker.flush_failed (retrying until the grace period ends)")
            return False
        return True

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
