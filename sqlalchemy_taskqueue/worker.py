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
  rescue the tasks).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from types import FrameType
from typing import Any, Generic

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import statements
from .attempts import Attempt, Outcome, WorkerStats
from .backoff import DEFAULT_BACKOFF, BackoffPolicy
from .context import TaskContext
from .durations import Duration, to_seconds
from .exceptions import LeaseLostError, TaskInterrupted, TaskQueueError
from .handlers import Handler, HandlerRegistry, HandlerSpec, normalize_handlers
from .models import task_table
from .repository import TaskRepository, TaskT, default_owner
from .status import TaskStatus
from .validation import require_int, require_json, storable_text
from .wakeup import NotificationListener

__all__ = ["Worker", "WorkerStats"]

logger = logging.getLogger("sqlalchemy_taskqueue.worker")

_WRITE_ATTEMPTS = 5
#: Consecutive failed turns after which ``run(until_empty=True)`` gives up and raises.
_UNTIL_EMPTY_ATTEMPTS = 5
#: Automatic prefetch holds about this much work (seconds) beyond the free slots ...
_PREFETCH_HORIZON = 0.05
#: ... and at most this many tasks per slot.
_PREFETCH_PER_SLOT = 16

EventHook = Callable[[str, Any, float], None]


class Worker(Generic[TaskT]):
    """Runs handlers for claimed tasks on ``concurrency`` slots.

    :param session_factory: a ``sessionmaker`` bound to the queue's database; the worker
        owns the transactions of the sessions it makes.
    :param model: the task model (a :class:`~sqlalchemy_taskqueue.TaskMixin` table).
    :param handlers: ``{task_type: handler}`` or a :class:`HandlerRegistry`.
    :param concurrency: slots, i.e. tasks run at the same time (threads).
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
        for slow tasks, at most 16 per slot, and none until ``concurrency`` attempts
        have finished.  A number fixes it; 0 turns it off.
    :param on_event: ``callback(event, task, seconds)`` called for ``"completed"``,
        ``"failed"``, ``"retried"`` and ``"released"`` (used for metrics).

    Durations accept a ``timedelta`` or a number of seconds.
    """

    def __init__(
        self,
        session_factory: Callable[[], Session],
        model: type[TaskT],
        handlers: Mapping[str, Handler] | HandlerRegistry,
        *,
        concurrency: int = 4,
        task_types: Sequence[str] | None = None,
        lease_duration: Duration = timedelta(seconds=60),
        poll_interval: Duration = timedelta(seconds=1),
        heartbeat_interval: Duration | None = None,
        rescue_interval: Duration | None = None,
        timeouts: Mapping[str, Duration] | None = None,
        default_timeout: Duration | None = None,
        shutdown_grace: Duration = timedelta(seconds=30),
        progress_interval: Duration = timedelta(milliseconds=500),
        listen: bool = True,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
        owner: str | None = None,
        on_event: EventHook | None = None,
        prefetch: int | None = None,
    ) -> None:
        if not callable(session_factory):
            raise TypeError(f"session_factory must be a sessionmaker, got {session_factory!r}")
        self._table = task_table(model)
        require_int("concurrency", concurrency, minimum=1)
        if prefetch is not None:
            require_int("prefetch", prefetch, minimum=0)
        self._prefetch = prefetch
        self._pace: float | None = None  # moving average of attempt durations (seconds)
        self._paced = 0
        self._specs: dict[str, HandlerSpec] = normalize_handlers(handlers, timeouts)
        if task_types is None:
            types = sorted(self._specs)
        elif isinstance(task_types, str):
            types = [task_types]
        else:
            types = list(task_types)
        if not types or not all(isinstance(t, str) and t.strip() for t in types):
            raise ValueError(
                f"task_types must name at least one task type (got {task_types!r}); "
                "register a handler or pass task_types"
            )
        for missing in sorted(set(types) - set(self._specs)):
            logger.warning("worker.no_handler type=%s (such tasks will fail)", missing)
        self._types = types
        lease = to_seconds("lease_duration", lease_duration)
        self._lease = timedelta(seconds=lease)
        self._poll = to_seconds("poll_interval", poll_interval)
        self._heartbeat = (
            lease / 4
            if heartbeat_interval is None
            else to_seconds("heartbeat_interval", heartbeat_interval)
        )
        if self._heartbeat >= lease:
            raise ValueError(
                f"heartbeat_interval ({self._heartbeat}s) must be shorter than "
                f"lease_duration ({lease}s)"
            )
        self._rescue_every = (
            min(lease / 4, 15.0)
            if rescue_interval is None
            else to_seconds("rescue_interval", rescue_interval)
        )
        self._default_timeout = (
            None if default_timeout is None else to_seconds("default_timeout", default_timeout)
        )
        self._grace = to_seconds("shutdown_grace", shutdown_grace, allow_zero=True)
        self._progress_interval = to_seconds(
            "progress_interval", progress_interval, allow_zero=True
        )
        if not isinstance(listen, bool):
            raise TypeError(f"listen must be a bool, got {listen!r}")
        if not isinstance(backoff, BackoffPolicy):
            raise TypeError(f"backoff must be a BackoffPolicy, got {backoff!r}")
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be callable, got {on_event!r}")
        self._session_factory = session_factory
        self._model = model
        self._concurrency = concurrency
        self._listen = listen
        self._backoff = backoff
        self._on_event = on_event
        if owner is not None and (not isinstance(owner, str) or not owner.strip()):
            raise ValueError(f"owner must be a non-empty string, got {owner!r}")
        registry_model = handlers.model if isinstance(handlers, HandlerRegistry) else None
        if registry_model is not None and registry_model is not model:
            raise ValueError(
                f"the handlers were registered for {registry_model.__name__}, "
                f"not for {model.__name__}"
            )
        self.owner: str = owner or default_owner()
        self.stats = WorkerStats()

        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._supervisor_stop = threading.Event()
        self._supervisor_wake = threading.Event()
        self._lock = threading.Lock()
        # held while a transaction writes outcomes or renews leases: the two touch the
        # same rows in no fixed order, and a heartbeat must see outcomes already written
        self._write_lock = threading.Lock()
        self._busy = 0  # claimed tasks whose handler has not returned yet
        self._held: dict[int, Attempt] = {}  # claimed tasks whose outcome is not written
        self._outcomes: list[Outcome] = []
        self._slots: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self._signals_seen = 0
        self._is_running = False
        self.listening = threading.Event()  #: set while LISTEN is active
        self.idle = threading.Event()  #: set while the claim loop waits for work

    # ------------------------------------------------------------------ public

    @property
    def task_types(self) -> list[str]:
        """The task types this worker claims.

        Example::

            worker = Worker(sessionmaker(engine), Task, tasks, task_types=["export"])
            worker.task_types  # ['export']
        """
        return list(self._types)

    @property
    def concurrency(self) -> int:
        """Number of slots.

        Example::

            Worker(sessionmaker(engine), Task, tasks, concurrency=8).concurrency  # 8
        """
        return self._concurrency

    def stop(self) -> None:
        """Ask a running worker to shut down gracefully (safe from any thread or signal).

        Example::

            threading.Timer(60, worker.stop).start()
            worker.run()
        """
        self._stopping.set()
        self._wake.set()

    def run(self, *, until_empty: bool = False) -> None:
        """Process tasks until stopped; with ``until_empty``, until nothing is claimable.

        Installs SIGINT/SIGTERM handlers when called on the main thread (restored on
        return); from other threads, use :meth:`stop`.  A running worker rides out
        database outages (it retries with backoff); with ``until_empty`` it gives up after
        five failed turns in a row and raises the last error.

        Example::

            worker.run(until_empty=True)   # drain the queue, then return
        """
        with self._lock:
            if self._is_running:
                raise RuntimeError("this worker is already running")
            self._is_running = True
        slots = [
            threading.Thread(target=self._slot_loop, name=f"taskqueue-slot-{n}", daemon=True)
            for n in range(self._concurrency)
        ]
        supervisor = threading.Thread(
            target=self._supervise, name="taskqueue-supervisor", daemon=True
        )
        self._supervisor_stop.clear()
        listener = self._start_listener()
        logger.info(
            "worker.started owner=%s types=%s concurrency=%d lease=%.1fs listen=%s",
            self.owner,
            ",".join(self._types),
            self._concurrency,
            self._lease.total_seconds(),
            listener is not None,
        )
        try:
            with self._signal_handlers():
                for thread in [*slots, supervisor]:
                    thread.start()
                try:
                    self._claim_loop(until_empty)
                finally:
                    self._shut_down(listener, slots, supervisor)
        finally:
            with self._lock:
                self._is_running = False
                self._signals_seen = 0
            self._stopping.clear()  # a stop request ends one run; the worker may run again

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
                free = self._concurrency + self._prefetch_now() - self._busy
                claimed = self._settle_and_claim(free)
                if until_empty and not claimed and self._drained() and self._rescue() == 0:
                    return
                errors = 0
            except Exception:  # the database, the network, or a bug: keep the worker alive
                errors += 1
                if until_empty and errors >= _UNTIL_EMPTY_ATTEMPTS:
                    logger.error("worker.giving_up errors=%d (run until empty)", errors)
                    raise  # a batch run reports failure instead of waiting forever
                delay = min(self._poll * 2**errors, 30.0)
                logger.exception("worker.claim_failed retry_in=%.1fs", delay)
                self._stopping.wait(delay)
                continue
            if free > 0 and len(claimed) == free:
                continue  # maybe more work: claim again once a slot frees
            if not claimed and self._drained():
                self.idle.set()
            self._wake.wait(self._poll)
            self.idle.clear()

    def _drained(self) -> bool:
        with self._lock:
            return self._busy == 0 and not self._outcomes

    def _settle_and_claim(self, free: int) -> list[Any]:
        """One transaction: write the outcomes that are ready, then claim ``free`` tasks.

        Acknowledging finished tasks and fetching the next ones together costs one
        commit per turn instead of one per task.  If the transaction fails, the outcomes
        stay queued for the next turn.
        """
        with self._lock:
            outcomes = [o for o in self._outcomes if not o.attempt.lost]
            for outcome in self._outcomes:
                if outcome.attempt.lost:  # already reported when the lease was found lost
                    self._forget(outcome.attempt)
            self._outcomes = []
        if not outcomes and free <= 0:
            return []
        written: list[tuple[Outcome, str]] = []
        claimed: list[Any] = []
        failure: Exception | None = None
        with self._write_lock:
            try:
                with self._session_factory() as session:
                    repo = self._repository(session)
                    written = self._write_outcomes(repo, outcomes)
                    if free > 0:
                        claimed = repo._claim(
                            self._types,
                            limit=free,
                            lease_duration=self._lease,
                            # only claims: a claim lost in a crash is just claimed again
                            relaxed_commit=not outcomes,
                        )
                        session.expunge_all()  # this session holds nothing else
                    session.commit()
            except Exception as exc:
                written, claimed = [], []  # the transaction rolled back: nothing was written
                if isinstance(exc, (SQLAlchemyError, TaskQueueError)) and _is_transient(exc):
                    self._requeue(outcomes)  # the next turn writes them
                else:  # isolate the outcome the database (or a bug) refuses
                    written = self._write_separately(outcomes)
                failure = exc
            except BaseException:
                self._requeue(outcomes)
                raise
            with self._lock:
                for outcome, _ in written:
                    self._forget(outcome.attempt)
        if claimed:
            self._dispatch(claimed)  # held (and heartbeated) before any callback runs
        # events and user callbacks run outside the write lock: heartbeats never wait on them
        self._report(written)
        if failure is not None:
            raise failure
        return claimed

    def _requeue(self, outcomes: list[Outcome]) -> None:
        with self._lock:
            self._outcomes[:0] = outcomes

    def _write_separately(self, outcomes: list[Outcome]) -> list[tuple[Outcome, str]]:
        """Write each outcome in its own transaction; one that fails is dropped (its lease
        then expires and the task is rescued) instead of blocking the rest."""
        written: list[tuple[Outcome, str]] = []
        for outcome in outcomes:
            try:
                written.extend(self._write_alone([outcome]))
            except Exception:
                logger.exception(
                    "task.outcome_write_failed id=%d (its lease will expire and it is rescued)",
                    outcome.attempt.task.id,
                )
                with self._lock:
                    self._forget(outcome.attempt)
        return written

    def _write_alone(self, outcomes: list[Outcome]) -> list[tuple[Outcome, str]]:
        """Write outcomes in a transaction of their own (retrying transient errors)."""
        written: list[tuple[Outcome, str]] = self._write(
            lambda repo: self._write_outcomes(repo, outcomes)
        )
        return written

    def _forget(self, attempt: Attempt) -> None:
        """Stop holding ``attempt`` (call with the lock held)."""
        if self._held.get(attempt.task.id) is attempt:
            del self._held[attempt.task.id]

    def _dispatch(self, claimed: list[Any]) -> None:
        attempts = [self._attempt(task) for task in claimed]  # claimed now
        with self._lock:
            self._busy += len(attempts)
            for attempt in attempts:
                self._held[attempt.task.id] = attempt
        self.stats.add(claimed=len(attempts))
        for attempt in attempts:
            self._slots.put(attempt)

    def _attempt(self, task: Any) -> Attempt:
        spec = self._specs.get(task.type)
        if task.timeout_seconds:
            timeout: float | None = float(task.timeout_seconds)
        elif spec is not None and spec.timeout_seconds:
            timeout = spec.timeout_seconds
        else:
            timeout = self._default_timeout
        context = TaskContext(
            task,
            progress_writer=self._write_progress,
            progress_interval=self._progress_interval,
            worker_stopping=self._stopping,
        )
        return Attempt(task, context, timeout)

    def _rescue(self) -> int:
        with self._session_factory() as session:
            rescued = self._repository(session).rescue_expired_leases()
            session.commit()
        for task_id, status in rescued.items():
            logger.warning("task.rescued id=%d status=%s (its lease expired)", task_id, status)
        self.stats.add(rescued=len(rescued))
        return len(rescued)

    def _repository(self, session: Session) -> TaskRepository[TaskT]:
        return TaskRepository(
            session,
            self._model,
            backoff=self._backoff,
            lease_duration=self._lease,
            owner=self.owner,
            notify=False,
        )

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
                with self._lock:
                    self._busy -= 1
                    attempt.running = False
                    if attempt.started != attempt.claimed:  # the handler ran: note its pace
                        self._note_pace(time.monotonic() - attempt.started)
                    if outcome is not None and not attempt.finished:
                        attempt.outcome_queued = True
                        self._outcomes.append(outcome)
                    elif not attempt.outcome_queued:
                        self._forget(attempt)
                if outcome is not None and attempt.finished:
                    self._discard(outcome)
                self._wake.set()

    def _note_pace(self, seconds: float) -> None:
        """Fold one attempt's duration into the moving average (call with the lock held)."""
        self._paced += 1
        self._pace = seconds if self._pace is None else self._pace + 0.2 * (seconds - self._pace)

    def _prefetch_now(self) -> int:
        """The prefetch to claim with: the fixed one, or what the slots will start within
        the prefetch horizon at the recent pace."""
        if self._prefetch is not None:
            return self._prefetch
        now = time.monotonic()
        with self._lock:
            pace, paced = self._pace, self._paced
            # a long-running attempt counts at once, before it finishes: after a run of
            # quick tasks, slow ones must not be claimed ahead of idle workers
            oldest = max((now - a.started for a in self._held.values() if a.running), default=0.0)
        if pace is None or paced < self._concurrency:
            return 0
        ahead = int(self._concurrency * _PREFETCH_HORIZON / max(pace, oldest, 1e-4))
        return min(ahead, self._concurrency * _PREFETCH_PER_SLOT)

    def _execute(self, attempt: Attempt) -> Outcome | None:
        """Run the handler and say how the attempt ended (written later, in a batch)."""
        task = attempt.task
        spec = self._specs.get(task.type)
        with self._lock:
            if attempt.finished:
                return None  # lost or handed back while it waited for this slot
            if self._stopping.is_set():
                return Outcome(attempt, "release")  # claimed, but shutdown came first
            attempt.start()
        self._supervisor_wake.set()  # re-plan around the new deadline
        logger.info(
            "task.started id=%d type=%s attempt=%d", task.id, task.type, attempt.context.attempt
        )
        if spec is None:
            message = f"no handler is registered for task type {task.type!r}"
            return self._outcome(attempt, "fail", message=message, retry=False)
        try:
            result = spec.function(task, attempt.context)
        except TaskInterrupted as exc:
            if self._stopping.is_set():
                return self._outcome(attempt, "release")
            return self._outcome(attempt, "fail", message=f"TaskInterrupted: {exc}")
        except BaseException as exc:  # SystemExit from a handler fails the attempt too
            message = f"{type(exc).__name__}: {exc}"
            logger.error(
                "task.error id=%d type=%s error=%s\n%s",
                task.id,
                task.type,
                message,
                traceback.format_exc().rstrip(),
            )
            return self._outcome(attempt, "fail", message=message)
        try:
            require_json("result", result, allow_none=True)
        except (TypeError, ValueError) as exc:
            message = f"TypeError: the handler's result is not JSON: {exc}"
            return self._outcome(attempt, "fail", message=message, retry=False)
        return self._outcome(attempt, "complete", result=result)

    def _outcome(self, attempt: Attempt, kind: Any, **fields: Any) -> Outcome:
        seconds = time.monotonic() - attempt.started
        if "message" in fields:
            fields["message"] = storable_text(fields["message"])
        return Outcome(attempt, kind, seconds=seconds, **fields)

    def _discard(self, outcome: Outcome) -> None:
        logger.warning(
            "task.outcome_discarded id=%d outcome=%s reason=%s",
            outcome.attempt.task.id,
            outcome.kind,
            outcome.attempt.context.stop_reason,
        )

    # ------------------------------------------------------------------ writing outcomes

    def _write_outcomes(
        self, repo: TaskRepository[TaskT], outcomes: list[Outcome]
    ) -> list[tuple[Outcome, str]]:
        """Write outcomes in the caller's transaction; returns ``(outcome, event)`` pairs.

        Completions go in one statement; failures one by one (each decides retry or
        failure atomically); hand-backs in one statement.  An outcome whose lease is no
        longer current is reported as ``lease_lost`` and changes nothing.
        """
        written: list[tuple[Outcome, str]] = []
        completions = [o for o in outcomes if o.kind == "complete"]
        if completions:
            done = repo.complete_tasks(
                [(o.attempt.task.id, o.attempt.task.lease_token, o.result) for o in completions]
            )
            for outcome in completions:
                event = "completed" if outcome.attempt.task.id in done else "lease_lost"
                written.append((outcome, event))
        for outcome in outcomes:
            if outcome.kind != "fail":
                continue
            task = outcome.attempt.task
            try:
                status = repo.fail_task(
                    task.id, outcome.message, lease_token=task.lease_token, retry=outcome.retry
                )
            except LeaseLostError:
                written.append((outcome, "lease_lost"))
                continue
            written.append((outcome, "retried" if status is TaskStatus.PENDING else "failed"))
        releases = [o for o in outcomes if o.kind == "release"]
        if releases:
            released = repo.release_tasks([o.attempt.lease for o in releases])
            for outcome in releases:
                event = "released" if outcome.attempt.task.id in released else "lease_lost"
                written.append((outcome, event))
        return written

    def _report(self, written: list[tuple[Outcome, str]]) -> None:
        """After the commit: log, count and emit events (outside every lock)."""
        for outcome, event in written:
            if event == "lease_lost":
                self._lease_lost(outcome.attempt)
            else:
                self._report_event(outcome, event)

    def _report_event(self, outcome: Outcome, event: str) -> None:
        attempt, task = outcome.attempt, outcome.attempt.task
        if event == "completed":
            logger.info(
                "task.completed id=%d type=%s duration=%.3fs", task.id, task.type, outcome.seconds
            )
        elif event == "released":
            attempt.context.interrupt("handed back at shutdown")
            logger.info("task.released id=%d type=%s", task.id, task.type)
        else:
            logger.warning(
                "task.%s id=%d type=%s attempt=%d duration=%.3fs error=%s",
                event,
                task.id,
                task.type,
                attempt.context.attempt,
                outcome.seconds,
                outcome.message,
            )
        self.stats.add(**{event: 1})
        self._emit(event, task, outcome.seconds)

    def _lease_lost(self, attempt: Attempt) -> None:
        with self._lock:
            attempt.lost = True
        attempt.context.interrupt("the lease on this task was lost")
        self.stats.add(lost_leases=1)
        logger.warning(
            "task.lease_lost id=%d type=%s (rescued or changed by an operator; "
            "this worker's outcome was not written)",
            attempt.task.id,
            attempt.task.type,
        )

    def _write(self, action: Callable[[TaskRepository[TaskT]], Any]) -> Any:
        """Run one write in its own transaction, retrying transient database errors."""
        delay = 0.1
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._session_factory() as session:
                    outcome = action(self._repository(session))
                    session.commit()
                    return outcome
            except (SQLAlchemyError, TaskQueueError) as exc:
                if not _is_transient(exc) or attempt == _WRITE_ATTEMPTS - 1:
                    raise
                logger.warning("worker.write_retry in=%.1fs error=%s", delay, exc)
                time.sleep(delay)  # backing off from a failing database, not synchronising
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_progress(self, task_id: int, progress: int, lease_token: uuid.UUID) -> bool:
        try:
            self._write(
                lambda repo: repo.update_progress(task_id, progress, lease_token=lease_token)
            )
        except LeaseLostError:
            return False
        return True

    def _emit(self, event: str, task: Any, seconds: float) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event, task, seconds)
        except Exception:
            logger.exception("worker.on_event_failed event=%s", event)

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
                    self._release_stale_waiting(now)
                    next_heartbeat = now + self._heartbeat
                self._enforce_timeouts(now)
                with self._lock:
                    running = [a for a in self._held.values() if a.running]
                for attempt in running:
                    attempt.context.flush_progress(force=False)
                deadlines = [a.deadline for a in running if a.deadline and not a.finished]
                wait = min([next_heartbeat, *deadlines]) - time.monotonic()
                if running and self._progress_interval:
                    wait = min(wait, self._progress_interval)
            except Exception:  # keep heartbeating whatever happens
                logger.exception("worker.supervisor_error")
            self._supervisor_wake.wait(max(wait, 0.01))
            self._supervisor_wake.clear()

    def _release_stale_waiting(self, now: float) -> None:
        """Hand back claimed tasks that waited a whole lease for a slot (every slot is
        busy, perhaps with handlers that timed out but never return), so other workers
        can run them."""
        limit = self._lease.total_seconds()
        with self._lock:
            stale = [
                a
                for a in self._held.values()
                if not a.running
                and not a.outcome_queued
                and not a.finished
                and a.started == a.claimed
                and now - a.claimed > limit
            ]
            for attempt in stale:
                attempt.settled = True
                attempt.outcome_queued = True
                self._outcomes.append(Outcome(attempt, "release"))
        if stale:
            logger.warning(
                "worker.release_waiting count=%d (no slot freed within a lease)", len(stale)
            )
            self._wake.set()

    def _renew_leases(self) -> None:
        with self._write_lock:
            with self._lock:
                attempts = [a for a in self._held.values() if not a.finished]
            if not attempts:
                return
            try:
                renewed = self._write(
                    lambda repo: repo.renew_leases(
                        [a.lease for a in attempts], lease_duration=self._lease
                    )
                )
            except (SQLAlchemyError, TaskQueueError):
                logger.exception("worker.heartbeat_failed (will retry)")
                return
            with self._lock:
                lost = [
                    a
                    for a in attempts
                    if a.task.id not in renewed
                    and self._held.get(a.task.id) is a
                    and not a.finished
                ]
        for attempt in lost:
            self._lease_lost(attempt)

    def _enforce_timeouts(self, now: float) -> None:
        with self._lock:
            expired = [
                a
                for a in self._held.values()
                if a.running and a.deadline is not None and a.deadline <= now and not a.finished
            ]
            for attempt in expired:
                attempt.settled = True
        for attempt in expired:
            self._time_out(attempt)

    def _time_out(self, attempt: Attempt) -> None:
        """Fail an attempt that passed its deadline; its handler is asked to stop."""
        message = f"TimeoutError: the attempt exceeded its timeout of {attempt.timeout_seconds:g}s"
        attempt.context.interrupt(message)
        self.stats.add(timed_out=1)
        outcome = self._outcome(attempt, "fail", message=message)
        try:
            with self._write_lock:
                written = self._write_alone([outcome])
        except (SQLAlchemyError, TaskQueueError):
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
        channel = statements.notify_channel(self._table)
        listener = NotificationListener(
            bind, channel, self._on_notification, listening=self.listening
        )
        listener.start()
        return listener

    def _on_notification(self) -> None:
        self._wake.set()

    def _shut_down(
        self,
        listener: NotificationListener | None,
        slots: list[threading.Thread],
        supervisor: threading.Thread,
    ) -> None:
        """Give running tasks the grace period, write their outcomes, hand back the rest."""
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
            with self._lock:
                leftover = [
                    a for a in self._held.values() if not a.finished and not a.outcome_queued
                ]
                for attempt in leftover:
                    attempt.settled = True  # whatever the handler returns later is discarded
                self._outcomes.extend(self._outcome(a, "release") for a in leftover)
            for attempt in leftover:
                attempt.context.interrupt("handed back at shutdown")
            if not self._flush_outcomes():
                with self._lock:
                    unwritten, self._outcomes = self._outcomes, []
                logger.error(
                    "worker.unwritten_outcomes count=%d (their leases expire and the tasks "
                    "are rescued)",
                    len(unwritten),
                )
        finally:
            self._supervisor_stop.set()
            self._supervisor_wake.set()
            supervisor.join(timeout=5)
            for _ in slots:
                self._slots.put(None)
            for thread in slots:
                thread.join(timeout=0.1)
            logger.info(
                "worker.stopped completed=%d failed=%d retried=%d released=%d",
                self.stats.completed,
                self.stats.failed,
                self.stats.retried,
                self.stats.released,
            )

    def _still_running(self) -> bool:
        """Handlers whose outcome is still open (a timed-out one is already settled)."""
        with self._lock:
            return any(a.running and not a.finished for a in self._held.values())

    def _release_queued(self) -> None:
        """Claimed tasks still waiting for a slot go straight back."""
        while True:
            try:
                attempt = self._slots.get_nowait()
            except queue.Empty:
                return
            if attempt is None:
                continue
            with self._lock:
                self._busy -= 1
                if attempt.finished or attempt.outcome_queued:
                    continue  # already handed back (it waited too long) or lost
                attempt.outcome_queued = True
                self._outcomes.append(Outcome(attempt, "release"))

    def _flush_outcomes(self) -> bool:
        """Write the queued outcomes; ``False`` when the database could not be reached."""
        try:
            self._settle_and_claim(0)
        except Exception:
            logger.exception("worker.flush_failed (retrying until the grace period ends)")
            return False
        return True

    @contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
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
        self._signals_seen += 1
        name = signal.Signals(signum).name
        if self._signals_seen > 1:
            logger.warning("worker.exit_now signal=%s (leases will expire and be rescued)", name)
            os._exit(128 + signum)
        logger.info("worker.shutdown_requested signal=%s grace=%.1fs", name, self._grace)
        self.stop()


def _is_transient(exc: BaseException) -> bool:
    """Connection-level errors worth retrying (not lease or state errors)."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    cause = exc.__cause__ if isinstance(exc, TaskQueueError) else exc
    if isinstance(cause, OperationalError):
        return True
    return isinstance(cause, DBAPIError) and bool(cause.connection_invalidated)
