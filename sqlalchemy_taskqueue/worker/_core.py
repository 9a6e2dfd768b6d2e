"""The worker loop, written once for :class:`~sqlalchemy_taskqueue.Worker` and
:class:`~sqlalchemy_taskqueue.AsyncWorker`.

Both workers run the same loop: claim turns that write the finished outcomes and claim
the next tasks in one transaction (outcomes the database refuses written one by one),
writes retried with backoff, turns that only claim run on a connection of the worker's
own, rescue of expired leases, the supervisor's heartbeats, timeouts and throttled
progress, and the graceful shutdown.  They differ only in how they wait (``threading``
or ``asyncio``) and how they reach the database (``Session`` or ``AsyncSession``).

So the loop is written here once, without I/O.  Each step is a generator that *yields
effects* -- run this transaction body, wait for this event or a timeout, sleep, hold the
write lock around these steps, finish these steps even if cancelled -- and receives each
effect's result at its ``yield`` (or its exception, raised there)::

    def _rescue(self) -> Steps[int]:
        rescued = yield from Transaction(self._rescue_body)
        return self._rescued(rescued)

The effects are in :mod:`sqlalchemy_taskqueue.worker._effects`.  A worker is a small driver:
``Worker._perform`` does an effect by blocking its thread, ``AsyncWorker._perform`` by
awaiting, and each runs the steps with a :class:`~._effects.Stepper`::

    def _drive(self, steps):                    # the threaded driver
        run = Stepper(steps)
        for effect in run:
            try:
                run.value = self._perform(effect)
            except BaseException as exc:        # raised at the step's yield
                run.error = exc
        return run.result()

What stays in the two workers is what really differs: their threads or event-loop tasks
(slots, supervisor, listener), how a handler is called (on a slot thread; in a task that
can be cancelled, or on a thread pool), signals, and how a stop that the database keeps
from ending is given up.  Where only the async worker can do something (cancel an
``async def`` handler, let a queued progress write land, finish a committed claim in
spite of a cancellation), the step says so with a hook or an effect that the threaded
driver performs as nothing.

Why not one async source with the threaded worker generated from it (``unasync``): the
threaded worker is not the async one without ``await`` -- its slots are threads, it
cannot cancel a handler, it never abandons a transaction half-way -- so the generated
twin would need as many hand-made exceptions as there are differences, and a second
copy of every line to keep current.  Here there is one copy; only waiting and I/O are
written twice, each in a few lines.

Decisions, bookkeeping and transaction bodies live in
:mod:`~sqlalchemy_taskqueue.worker._base`.  Applications do not use this module.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue.backends import find_backend
from sqlalchemy_taskqueue.backends.base import Backend
from sqlalchemy_taskqueue.repository import TaskT, detached_in_claim_order

from ._attempts import Attempt, Outcome
from ._base import (
    DATABASE_ERRORS,
    UNHANDLED_CHECK_INTERVAL,
    WRITE_ATTEMPTS,
    SessionT,
    WorkerBase,
    Written,
    claim_worth_retrying,
    logger,
)
from ._effects import (
    ClaimDirectly,
    CloseClaimConnection,
    Locked,
    ProgressLanded,
    Shielded,
    Sleep,
    SlotQueue,
    Steps,
    Transaction,
    Wait,
    WakeEvent,
)
from ._handlers import HandlerSpec

_R = TypeVar("_R")


class WorkerCore(WorkerBase[TaskT, SessionT]):
    """The loop of both workers, as steps: a worker runs them with its ``_drive`` and
    does their effects with its ``_perform``."""

    _wake: WakeEvent
    _supervisor_wake: WakeEvent
    _slots: SlotQueue
    _supervisor_stop = False
    _abandoning = False  # the stop passed its deadline: wait for no database
    _claim_connection: Any = None  # see _claim_only
    _claims_directly = False

    # ------------------------------------------------------------------ claim loop

    def _claim_loop(self, until_empty: bool) -> Steps[None]:
        """Write finished outcomes and claim new tasks, one transaction per turn."""
        next_rescue = 0.0
        errors = 0
        failing_since = 0.0
        next_unhandled_check = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            turn_began = time.monotonic()
            try:
                if time.monotonic() >= next_rescue:
                    yield from self._rescue()
                    next_rescue = time.monotonic() + self._rescue_every
                free = self._free_slots()
                claimed = yield from Shielded(self._settle_and_claim(free))
                # empty only if a claim was tried: handlers may have finished meanwhile
                empty = free > 0 and not claimed and self._drained() and not self._rate_waiting()
                if empty and not self._keyed and (yield from Transaction(self._keys_body)):
                    continue  # the first keyed tasks of the queue: claim them now
                if empty and time.monotonic() >= next_unhandled_check:
                    yield from self._report_unhandled()
                    next_unhandled_check = time.monotonic() + UNHANDLED_CHECK_INTERVAL
                if until_empty and empty and (yield from self._rescue()) == 0:
                    return
                errors = 0
            except Exception as exc:  # the database, the network, or a bug: keep the worker alive
                errors += 1
                if errors == 1:
                    failing_since = turn_began
                yield from self._back_off(
                    self._claim_failed(exc, failing_since, errors, until_empty)
                )
                continue
            if free > 0 and len(claimed) == free:
                continue  # maybe more work: claim again once a slot frees
            if not claimed and self._drained():
                self.idle.set()
            yield from Wait(self._wake, self._idle_wait(next_rescue))
            self.idle.clear()

    def _back_off(self, delay: float) -> Steps[None]:
        """Pause the claim loop for ``delay`` seconds after a failed turn, or until a stop
        request."""
        resume = time.monotonic() + delay
        while not self._stopping.is_set() and time.monotonic() < resume:
            self._wake.clear()
            yield from Wait(self._wake, resume - time.monotonic())

    def _settle_and_claim(self, free: int) -> Steps[list[Any]]:
        """One transaction: write the outcomes that are ready, then claim ``free`` tasks.

        If the transaction fails, the outcomes stay queued for the next turn.  Run it
        :class:`Shielded`: a claim committed must be held, whatever cancellation comes.
        """
        written, claimed, failure = yield from Locked(self._settle(free))
        return self._hand_out(written, claimed, failure, self._slots.put_nowait)

    def _settle(self, free: int) -> Steps[tuple[Written, list[Any], Exception | None]]:
        """The turn under the write lock: what was written, what was claimed, and the
        turn's failure (raised once the claimed tasks are held)."""
        outcomes = self._take_outcomes()
        if not outcomes and free <= 0:
            return [], [], None
        written: Written = []
        claimed: list[Any] = []
        failure: Exception | None = None
        try:
            if outcomes:
                settle = Transaction(self._settle_body(outcomes, free), shielded=False)
                written, claimed = yield from settle
            else:
                claimed = yield from self._claim_only(free)
        except Exception as exc:
            written, claimed = [], []  # the transaction rolled back: nothing was written
            if self._settle_failed(exc, outcomes):
                written = yield from self._write_separately(outcomes)
            failure = exc
        except BaseException:
            self._requeue(outcomes)
            raise
        self._settled(written)
        return written, claimed, failure

    def _claim_only(self, free: int) -> Steps[list[Any]]:
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
            return (yield from self._claim_once(free))
        except Exception as exc:
            if not claim_worth_retrying(exc):
                raise
        return (yield from self._claim_once(free))

    def _claim_once(self, free: int) -> Steps[list[Any]]:
        connection = self._claim_connection
        if self._rate_limited:  # a budget's row lock must last the transaction: no autocommit
            _, claimed = yield from Transaction(self._settle_body([], free), shielded=False)
            return claimed
        if connection is None or not self._claims_directly:
            body = self._settle_body([], free)
            _, claimed = yield from Transaction(body, claim_only=True, shielded=False)
            return claimed
        try:
            rows = yield from ClaimDirectly(connection, self._table, self._claim_request(free))
        except BaseException:
            yield from CloseClaimConnection(discard=True)
            raise
        return detached_in_claim_order(self._model, rows)

    def _write_separately(self, outcomes: list[Outcome]) -> Steps[Written]:
        """Write each outcome in its own transaction; one that fails is dropped (its lease
        then expires and the task is rescued) instead of blocking the rest."""
        written: Written = []
        for outcome in outcomes:
            try:
                written.extend((yield from self._write(self._lone_outcome_body(outcome))))
            except Exception:
                self._outcome_write_failed(outcome)
        return written

    def _write(self, body: Callable[[Session], _R]) -> Steps[_R]:
        """Run one write in its own transaction, retrying transient database errors."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return (yield from Transaction(body))
            except DATABASE_ERRORS as exc:
                delay = self._write_retry(attempt, exc)
                if delay is None:
                    raise
                yield from Sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _report_unhandled(self) -> Steps[None]:
        """Log, once per type, the types of pending tasks this worker has no handler for
        (it never claims them: without another worker to run them they wait for ever)."""
        self._unhandled_seen(
            (yield from Transaction(lambda session: self._repository(session).queue_depth()))
        )

    def _rescue(self) -> Steps[int]:
        checked = self._table_checked
        rescued = yield from Transaction(self._rescue_body)
        if not checked and self._schedules:
            self._supervisor_wake.set()  # the tables are there: fire what is due
        return self._rescued(rescued)

    # ------------------------------------------------------------------ slots

    def _begin(self, attempt: Attempt) -> Steps[Outcome | HandlerSpec | None]:
        """Start an attempt on its slot: the handler to call, or the outcome without a
        call (``None``: nothing to do).  A start that must be recorded first is written
        now; if it cannot be, the task goes back to run later."""
        start = self._start(attempt)
        if not isinstance(start, HandlerSpec):
            return start
        if attempt.record_first:
            try:
                yield from self._write(self._start_body(attempt))
            except DATABASE_ERRORS:
                return Outcome(attempt, "release")  # runs later, once it can be recorded
        if attempt.deadline is not None:
            self._supervisor_wake.set()  # re-plan around the new deadline
        return start

    def _cancel_handler(self, attempt: Attempt) -> None:
        """Cancel the handler of a settled attempt where the worker can (an ``async def``
        one); otherwise it is only asked to stop and its late outcome is discarded."""

    # ------------------------------------------------------------------ supervisor

    def _supervise(self) -> Steps[None]:
        """Heartbeats, timeouts, throttled progress and stale prefetched tasks."""
        next_heartbeat = time.monotonic() + self._heartbeat
        while not self._supervisor_stop:
            wait = self._poll
            try:
                now = time.monotonic()
                if now >= next_heartbeat:
                    yield from Locked(self._renew_leases())
                    if self._release_stale_waiting(now):
                        self._wake.set()
                    next_heartbeat = now + self._heartbeat
                for attempt in self._expired(now):
                    yield from self._time_out(attempt)
                if self._table_checked and self._schedules.due(now):
                    yield from self._fire_schedules()
                running = self._running()
                for attempt in running:
                    attempt.context.flush_progress(force=False)
                wait = self._next_wake(next_heartbeat, running)
            except Exception:  # keep heartbeating whatever happens
                logger.exception("worker.supervisor_error")
            yield from Wait(self._supervisor_wake, wait)
            self._supervisor_wake.clear()

    def _fire_schedules(self) -> Steps[None]:
        """Fire the due schedules the worker carries, in one transaction; a turn that
        fails changed nothing and is tried again later."""
        try:
            report = yield from Transaction(self._schedules.body(self._repository))
        except Exception as exc:  # the database, or a bug: both retried with a back-off
            self._schedules.failed(exc, from_database=isinstance(exc, DATABASE_ERRORS))
            return
        self._schedules.fired(report)
        if report.enqueued:
            self._wake.set()  # claim what was just enqueued without waiting for a notice

    def _renew_leases(self) -> Steps[None]:
        """Renew the leases of every attempt held, and the worker's registration (run it
        :class:`Locked`)."""
        attempts = self._to_renew()
        if not attempts and not self._table_checked:
            return
        try:
            renewed = yield from self._write(self._renewal_body(attempts))
        except DATABASE_ERRORS:
            logger.exception("worker.heartbeat_failed (will retry)")
            return
        for attempt in self._renewed(attempts, renewed):
            self._cancel_handler(attempt)  # an ``async def`` one; a thread is only asked

    def _time_out(self, attempt: Attempt) -> Steps[None]:
        """Fail an attempt that passed its deadline; its handler is asked to stop (an
        ``async def`` one is cancelled).  A handler that runs on keeps its slot busy
        until it returns; what it returns is discarded."""
        outcome = self._timed_out(attempt)
        self._cancel_handler(attempt)  # settled already: whatever it does now is discarded
        yield from ProgressLanded(attempt.task_id)
        try:
            written = yield from Locked(self._write(self._outcomes_body([outcome])))
        except DATABASE_ERRORS:
            logger.exception("task.timeout_write_failed id=%d", attempt.task.id)
            self._end_span(attempt, "write_failed")
            return
        self._report(written)

    # ------------------------------------------------------------------ start and stop

    def _listening_backend(self, dialect: Dialect, *, asynchronous: bool) -> Backend | None:
        """The backend through which the worker wakes on notifications from ``dialect``'s
        database, or ``None`` to poll: where the database has no channels, or where the
        driver cannot listen (it says so)."""
        backend = find_backend(dialect.name)
        if backend is None or not backend.capabilities.listen:
            return None
        drivers = backend.async_listen_drivers if asynchronous else backend.listen_drivers
        if dialect.driver not in drivers:
            logger.warning(
                "worker.polling driver=%s (wake-up by notification needs %s)",
                dialect.driver,
                " or ".join(drivers),
            )
            return None
        return backend

    def _wind_down(self) -> Steps[None]:
        """Give running tasks the grace period, write their outcomes, hand back the rest.

        Once the run is abandoned (an async worker's stop passed its deadline) nothing
        here waits for the database: the outcomes are left unwritten."""
        self._release_queued()
        if self._busy:
            logger.info("worker.stopping running=%d grace=%.1fs", self._busy, self._grace)
        deadline = time.monotonic() + self._grace
        while not self._abandoning:
            flushed = yield from self._flush_outcomes()
            if (flushed and not self._still_running()) or time.monotonic() >= deadline:
                break
            yield from Wait(self._wake, min(max(deadline - time.monotonic(), 0.01), 0.5))
            self._wake.clear()
        for attempt in self._hand_back_leftovers():
            self._cancel_handler(attempt)
        if self._abandoning or not (yield from self._flush_outcomes()):
            self._unwritten()
            return
        try:  # gone from the registry (else its row expires one lease later)
            yield from self._write(self._unregister_body)
        except DATABASE_ERRORS:
            logger.warning("worker.unregister_failed (its registration expires by itself)")

    def _release_queued(self) -> None:
        """Claimed tasks still waiting for a slot go straight back."""
        while True:
            try:
                attempt = self._slots.get_nowait()
            except (queue.Empty, asyncio.QueueEmpty):
                return
            if attempt is not None:
                self._release_waiting(attempt)

    def _flush_outcomes(self) -> Steps[bool]:
        """Write the queued outcomes; ``False`` when the database could not be reached."""
        try:
            yield from Shielded(self._settle_and_claim(0))
        except Exception:
            logger.exception("worker.flush_failed (retrying until the grace period ends)")
            return False
        return True
