"""What :class:`~sqlalchemy_taskqueue.Worker` and :class:`~sqlalchemy_taskqueue.AsyncWorker`
share: options, bookkeeping, every decision, and every transaction body.

The two workers differ only in how they wait and how they reach the database: the
threaded worker runs each transaction body on a ``Session`` directly, the async one runs
the same body through ``AsyncSession.run_sync``.  Claiming, writing outcomes, renewing
leases, deciding retries, timeouts, prefetch and hand-backs are written once, here, and
so is the loop that runs them (:mod:`sqlalchemy_taskqueue.worker._core`, steps that
yield effects, which each worker performs its own way), so the twins cannot drift
apart.  Applications do not use this module directly.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue._concurrency import require_key_slots_table
from sqlalchemy_taskqueue._controls import require_controls_table
from sqlalchemy_taskqueue._json import UndecodableJSON
from sqlalchemy_taskqueue._loading import detached_loader
from sqlalchemy_taskqueue._messages import error_line
from sqlalchemy_taskqueue._registry import package_version, require_workers_table
from sqlalchemy_taskqueue._schema import UNSTARTED_RESCUE
from sqlalchemy_taskqueue._tracing import finish_span, start_attempt_span
from sqlalchemy_taskqueue._urls import mask_password
from sqlalchemy_taskqueue._validation import (
    DEFAULT_MAX_RESULT_BYTES,
    bounded_error_message,
    lease_duration_argument,
    require_bool,
    require_int,
    require_json,
    require_size_limit,
    require_task_type,
)
from sqlalchemy_taskqueue.backends import is_driver_error, is_permanent_error
from sqlalchemy_taskqueue.backends.base import ClaimRequest
from sqlalchemy_taskqueue.backoff import DEFAULT_BACKOFF, BackoffPolicy
from sqlalchemy_taskqueue.durations import Duration, to_seconds
from sqlalchemy_taskqueue.exceptions import (
    LeaseLostError,
    TaskInterrupted,
    TaskQueueDatabaseError,
    TaskQueueError,
    TaskTableError,
)
from sqlalchemy_taskqueue.models import require_database_schema, task_table
from sqlalchemy_taskqueue.monitoring import QueueDepth
from sqlalchemy_taskqueue.repository import (
    RATE_BUDGET_BUSY_RETRY,
    TaskRepository,
    TaskT,
    default_owner,
)
from sqlalchemy_taskqueue.scheduling._table import require_schedules_table
from sqlalchemy_taskqueue.status import TaskStatus

from ._attempts import Attempt, Outcome, WorkerStats
from ._context import ProgressWriter, TaskContext
from ._handlers import Handler, HandlerRegistry, HandlerSpec, normalize_handlers
from ._schedules import ScheduleKeeper

__all__ = [
    "DATABASE_ERRORS",
    "MAX_RETRY_DELAY",
    "STOP_BOUND",
    "UNHANDLED_CHECK_INTERVAL",
    "UNTIL_EMPTY_PATIENCE",
    "EventHook",
    "WorkerBase",
    "is_transient",
]

logger = logging.getLogger("sqlalchemy_taskqueue.worker")


class _StatementParametersHidden(logging.Filter):
    """Keeps statement parameters (payloads, results, lease tokens) out of the database
    errors the worker logs: SQLAlchemy's error text lists them unless the error says
    ``hide_parameters``, which is set here on every error a record carries."""

    def filter(self, record: logging.LogRecord) -> bool:
        carried = [record.exc_info[1]] if record.exc_info else []
        args = record.args if isinstance(record.args, tuple) else ()
        carried.extend(arg for arg in args if isinstance(arg, BaseException))
        seen: set[int] = set()
        while carried:
            exc = carried.pop()
            if exc is None or id(exc) in seen:
                continue
            seen.add(id(exc))
            if isinstance(exc, StatementError):
                exc.hide_parameters = True
            carried += [exc.__cause__, exc.__context__]
        return True


logger.addFilter(_StatementParametersHidden())

WRITE_ATTEMPTS = 5
#: Seconds beyond ``shutdown_grace`` after which a stop request ends ``run()`` whatever the
#: network does: the final hand-back and the closing of connections get this long, then
#: whatever still waits for the database is abandoned (its leases expire and other workers
#: rescue its tasks, as after a second signal).
STOP_BOUND = 5.0
#: Seconds a run until empty (``run(until_empty=True)``, ``taskqueue worker --until-empty``)
#: retries a database that does not answer before it gives up and raises
#: :class:`~sqlalchemy_taskqueue.exceptions.TaskQueueDatabaseError` (the command exits
#: 1); a worker run without ``until_empty`` retries for as long as it runs, as databases
#: restart.
UNTIL_EMPTY_PATIENCE = 30.0
#: Seconds between two looks, while the worker is idle, for pending tasks of types it has
#: no handler for (each such type is logged once, as ``worker.unhandled_types``).
UNHANDLED_CHECK_INTERVAL = 60.0
#: The longest wait between two claim turns while the database does not answer (the
#: wait doubles from ``poll_interval`` at each failed turn).
MAX_RETRY_DELAY = 30.0
#: Most slots a worker may have (each is a thread, or a task on the event loop).
MAX_CONCURRENCY = 1000
#: Most tasks a worker may claim beyond its free slots: more would hoard the queue in
#: one process while others idle (and every held lease is renewed by each heartbeat).
MAX_PREFETCH = 10_000
#: Automatic prefetch holds about this much work (seconds) beyond the free slots ...
_PREFETCH_HORIZON = 0.05
#: ... and at most this many tasks per slot.
_PREFETCH_PER_SLOT = 32

EventHook = Callable[[str, Any, float], None]
#: What a database write can raise: SQLAlchemy's errors, the library's, and the socket
#: errors an async driver raises as they are (a refused connection, say).
DATABASE_ERRORS = (SQLAlchemyError, TaskQueueError, OSError)
_R = TypeVar("_R")
#: The kind of session a worker makes: ``Session`` (``Worker``) or ``AsyncSession``
#: (``AsyncWorker``), so a factory of the other kind is a type error.
SessionT = TypeVar("SessionT")

#: The outcome of a finished transaction that wrote outcomes: ``(outcome, event)`` pairs.
Written = list[tuple[Outcome, str]]


class WorkerBase(Generic[TaskT, SessionT]):
    """Options, bookkeeping and transaction bodies shared by the two workers.

    The parameters are documented on :class:`~sqlalchemy_taskqueue.Worker`.

    Example::

        class WorkerCore(WorkerBase[TaskT]):  # the loop, as steps (_worker_core)
            ...

        class Worker(WorkerCore[TaskT]):  # performs the steps' effects on threads
            ...
    """

    def __init__(
        self,
        session_factory: Callable[[], SessionT],
        model: type[TaskT],
        handlers: Mapping[str, Handler] | HandlerRegistry[TaskT],
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
        max_result_bytes: int | None = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        if not callable(session_factory):
            raise TypeError(f"session_factory must be a sessionmaker, got {session_factory!r}")
        self._table = task_table(model)
        require_int("concurrency", concurrency, minimum=1, maximum=MAX_CONCURRENCY)
        if prefetch is not None:
            require_int("prefetch", prefetch, minimum=0, maximum=MAX_PREFETCH)
        self._prefetch = prefetch
        require_size_limit("max_result_bytes", max_result_bytes)
        self._max_result = max_result_bytes
        self._pace: float | None = None  # moving average of attempt durations (seconds)
        self._paced = 0
        self._specs: dict[str, HandlerSpec] = normalize_handlers(handlers, timeouts)
        self._check_handlers(self._specs)
        if task_types is None:
            types = sorted(self._specs)
        elif isinstance(task_types, str):
            types = [task_types]
        elif isinstance(task_types, Iterable):
            types = list(task_types)
        else:
            raise TypeError(
                "task_types must be a task type, a sequence of task types or None, "
                f"got {task_types!r}"
            )
        if not types:
            raise ValueError(
                f"task_types must name at least one task type (got {task_types!r}); "
                "register a handler or pass task_types"
            )
        for task_type in types:
            require_task_type(task_type)
        for missing in sorted(set(types) - set(self._specs)):
            logger.warning("worker.no_handler type=%s (such tasks will fail)", missing)
        self._types = types
        self._lease = lease_duration_argument(lease_duration)
        lease = self._lease.total_seconds()
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
        require_bool("listen", listen)
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
        #: the periodic schedules of the registry, fired by the supervisor
        self._schedules = ScheduleKeeper(
            handlers.schedules if isinstance(handlers, HandlerRegistry) else (),
            model.__name__,
            self._table,
        )

        #: set by a stop request; handlers see it through ``ctx.should_stop()``
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._busy = 0  # claimed tasks whose handler has not returned yet
        self._held: dict[int, Attempt] = {}  # claimed tasks whose outcome is not written
        self._outcomes: list[Outcome] = []
        self._signals_seen = 0
        self._is_running = False
        self._table_checked = False
        self._rate_limited: list[str] = []  # see _rescue_body
        self._keyed = False  # whether the queue uses concurrency keys: see _rescue_body
        self._rate_retry_at: float | None = None  # when a spent budget may allow more
        self._database = "the database"  # its masked URL once a run has looked it up
        self._unhandled_reported: set[str] = set()  # see _unhandled_seen
        self.listening = threading.Event()  #: set while LISTEN is active
        self.idle = threading.Event()  #: set while the claim loop waits for work
        self._prepare()

    def _prepare(self) -> None:
        """Set up the state of this kind of worker (overridden per worker)."""

    def _check_handlers(self, specs: dict[str, HandlerSpec]) -> None:
        """Refuse handlers this kind of worker cannot run (overridden per worker)."""

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

    # ------------------------------------------------------------------ run bookkeeping

    def _begin_run(self) -> None:
        with self._lock:
            if self._is_running:
                raise RuntimeError("this worker is already running")
            self._is_running = True
            self._table_checked = False  # by the first rescue of the run (_rescue_body)
            self._schedules.restart()

    def _end_run(self) -> None:
        with self._lock:
            self._is_running = False
            self._signals_seen = 0
        self._stopping.clear()  # a stop request ends one run; the worker may run again

    def _note_database(self, bind: Any) -> None:
        """Remember the masked URL of the database the sessions reach (for messages)."""
        url = getattr(bind, "url", None)
        if url is not None:
            self._database = mask_password(url)

    def _log_started(self, listening: bool) -> None:
        logger.info(
            "worker.started owner=%s types=%s concurrency=%d lease=%.1fs listen=%s",
            self.owner,
            ",".join(self._types),
            self._concurrency,
            self._lease.total_seconds(),
            listening,
        )

    def _stop_deadline(self) -> float:
        """When a run asked to stop now must have ended (``time.monotonic()``)."""
        return time.monotonic() + self._grace + STOP_BOUND

    def _log_abandoned(self) -> None:
        logger.error(
            "worker.stop_timed_out after=%.1fs (the database did not answer in time: "
            "unwritten outcomes and held tasks are left to lease expiry and rescue)",
            self._grace + STOP_BOUND,
        )

    def _log_stopped(self) -> None:
        logger.info(
            "worker.stopped completed=%d failed=%d retried=%d released=%d",
            self.stats.completed,
            self.stats.failed,
            self.stats.retried,
            self.stats.released,
        )

    def _free_slots(self) -> int:
        """Tasks the next claim may take: free slots plus the prefetch."""
        return self._concurrency + self._prefetch_now() - self._busy

    def _claim_failed(
        self, failure: Exception, failing_since: float, errors: int, until_empty: bool
    ) -> float:
        """Log a failed claim turn and return the delay before the next; raise instead when
        waiting cannot help: the queue's table is unusable (missing or unmigrated: its
        :class:`TaskTableError` names the table and the fix), or a run until empty has
        seen the database fail for :data:`UNTIL_EMPTY_PATIENCE` seconds.  ``failing_since``
        is when the first failed turn in a row began.  Called while ``failure`` is being
        handled.

        A database error is logged as one line (the masked URL, the next delay and the
        driver's message), its traceback at DEBUG only; anything else (a bug) with its
        traceback.
        """
        if isinstance(failure, TaskTableError):
            raise failure  # the run raises it: its message names the table and the fix
        delay: float = min(self._poll * 2.0**errors, MAX_RETRY_DELAY)
        if until_empty:
            left = failing_since + UNTIL_EMPTY_PATIENCE - time.monotonic()
            if left <= 0:
                raise TaskQueueDatabaseError(
                    f"the database at {self._database} did not answer for "
                    f"{UNTIL_EMPTY_PATIENCE:g}s, so the run until empty gives up: "
                    f"{error_line(failure)}"
                ) from failure
            delay = min(delay, left)
        if isinstance(failure, DATABASE_ERRORS):
            logger.warning(
                "worker.database_unavailable url=%s retry_in=%.1fs error=%s",
                self._database,
                delay,
                error_line(failure),
            )
            logger.debug("worker.database_unavailable traceback", exc_info=True)
        else:
            logger.exception("worker.claim_failed retry_in=%.1fs", delay)
        return delay

    def _unhandled_seen(self, depth: Iterable[QueueDepth]) -> None:
        """Log the pending task types, not logged before, that this worker neither
        handles nor claims."""
        known = set(self._types) | set(self._specs) | self._unhandled_reported
        new = sorted({item.task_type for item in depth} - known)
        if not new:
            return
        self._unhandled_reported.update(new)
        logger.warning(
            "worker.unhandled_types types=%s (pending tasks of these types wait for a worker "
            "with a handler for them; this one has none, and does not claim them)",
            ",".join(new),
        )

    def _idle_wait(self, next_rescue: float) -> float:
        """Seconds the claim loop may wait for a wake-up: the poll interval, but never past
        the next rescue, so a worker waiting for notifications still rescues on time, nor
        past the moment a rate-limited type's budget allows more claims."""
        until = min(self._poll, next_rescue - time.monotonic())
        if self._rate_waiting():
            assert self._rate_retry_at is not None
            until = min(until, self._rate_retry_at - time.monotonic())
        return max(until, 0.0)

    def _rate_waiting(self) -> bool:
        """Whether a rate-limited type's spent budget frees later (then the queue is not
        empty for ``until_empty``); a moment passed is forgotten (no busy loop)."""
        if self._rate_retry_at is not None and self._rate_retry_at <= time.monotonic():
            self._rate_retry_at = None
        return self._rate_retry_at is not None

    def _drained(self) -> bool:
        with self._lock:
            return self._busy == 0 and not self._outcomes

    # ------------------------------------------------------------------ transactions

    def _repository(self, session: Session) -> TaskRepository[TaskT]:
        return TaskRepository(
            session,
            self._model,
            backoff=self._backoff,
            lease_duration=self._lease,
            owner=self.owner,  # and it announces the tasks it hands back or rescues
            max_result_bytes=self._max_result,
        )

    def _take_outcomes(self) -> list[Outcome]:
        """The outcomes ready to be written (the queue is emptied)."""
        outcomes: list[Outcome] = []
        with self._lock:
            for outcome in self._outcomes:
                if outcome.kind == "start":  # not an end: nothing to forget
                    if not outcome.attempt.finished:
                        outcomes.append(outcome)
                elif outcome.attempt.lost:  # already reported when the lease was found lost
                    self._forget(outcome.attempt)
                else:
                    outcomes.append(outcome)
            self._outcomes = []
        return outcomes

    def _settle_body(
        self, outcomes: list[Outcome], free: int
    ) -> Callable[[Session], tuple[Written, list[Any]]]:
        """The body of one claim turn: write ``outcomes``, then claim ``free`` tasks.

        Acknowledging finished tasks and fetching the next ones together costs one
        commit per turn instead of one per task.
        """

        def body(session: Session) -> tuple[Written, list[Any]]:
            repo = self._repository(session)
            written = self._write_outcomes(repo, outcomes)
            claimed: list[Any] = []
            if free > 0:
                claimed = repo._claim(
                    self._types,
                    limit=free,
                    lease_duration=self._lease,
                    # only claims: a claim lost in a crash is just claimed again (not so a
                    # rate-limited one: its budget would forget the starts it counted)
                    relaxed_commit=not outcomes and not self._rate_limited,
                    own_session=True,
                    starting=self._starting(),
                    rate_limited=self._rate_limited,
                    keyed=self._keyed,
                )
                retry = repo._rate_retry_after
                # at least a moment ahead: a budget found spent keeps the queue from
                # counting as empty until the next claim, even one freeing right now
                self._rate_retry_at = (
                    None if retry is None else time.monotonic() + max(retry, RATE_BUDGET_BUSY_RETRY)
                )
            return written, claimed

        return body

    def _claim_request(self, free: int) -> ClaimRequest:
        """The claim of a turn that only claims, run without a session (see
        :func:`claims_without_session`); it commits without waiting for its log flush."""
        return ClaimRequest(
            self._types,
            free,
            self._lease,
            self.owner,
            relaxed_commit=True,
            starting=self._starting(),
            keyed=self._keyed,
        )

    def _starting(self) -> int:
        """How many of the tasks a claim takes now go straight to free slots: those are
        recorded as started by the claim itself, the rest when a slot takes them."""
        return max(self._concurrency - self._busy, 0)

    def _settle_failed(self, exc: Exception, outcomes: list[Outcome]) -> bool:
        """After a failed claim turn: requeue the outcomes when the failure is transient
        (``False``), or say they must be written one by one (``True``)."""
        if isinstance(exc, DATABASE_ERRORS) and is_transient(exc):
            self._requeue(outcomes)  # the next turn writes them
            return False
        return True  # isolate the outcome the database (or a bug) refuses

    def _settled(self, written: Written) -> None:
        with self._lock:
            for outcome, _ in written:
                self._forget(outcome.attempt)

    def _requeue(self, outcomes: list[Outcome]) -> None:
        with self._lock:
            self._outcomes[:0] = outcomes

    def _outcome_write_failed(self, outcome: Outcome) -> None:
        if outcome.kind == "start":  # the attempt goes on; its rescue would not charge it
            logger.warning("task.start_not_recorded id=%d", outcome.attempt.task_id)
            return
        logger.exception(
            "task.outcome_write_failed id=%d (its lease will expire and it is rescued)",
            outcome.attempt.task.id,
        )
        self._end_span(outcome.attempt, "write_failed")
        with self._lock:
            self._forget(outcome.attempt)

    def _outcomes_body(self, outcomes: list[Outcome]) -> Callable[[Session], Written]:
        return lambda session: self._write_outcomes(self._repository(session), outcomes)

    def _start_body(self, attempt: Attempt) -> Callable[[Session], Written]:
        """Record the start of ``attempt`` on its own (see ``Attempt.record_first``)."""
        return self._outcomes_body([Outcome(attempt, "start")])

    def _lone_outcome_body(self, outcome: Outcome) -> Callable[[Session], Written]:
        """One outcome of a batch the database refused, written alone.  A completion
        refused for good (:func:`~sqlalchemy_taskqueue.backends.is_permanent_error`: a result over the
        database's own limits, say) fails its task instead, without a retry: the same
        result would be refused again, and dropping the outcome would leave the task to
        be rescued and run again for nothing."""

        def body(session: Session) -> Written:
            repo = self._repository(session)
            if outcome.kind != "complete":
                return self._write_outcomes(repo, [outcome])
            try:
                with session.begin_nested():
                    return self._write_outcomes(repo, [outcome])
            except DATABASE_ERRORS as exc:
                if not is_permanent_error(exc.__cause__ or exc):
                    raise  # perhaps not next time: the lease expires and it runs again
                message = f"the handler's result could not be stored: {exc}"
                refused = dataclasses.replace(
                    outcome, kind="fail", result=None, retry=False, message=message
                )
                return self._write_outcomes(repo, [refused])

        return body

    def _rescue_body(self, session: Session) -> dict[int, TaskStatus]:
        if not self._table_checked:
            # once per run, before its first claim: a table the model matches but the
            # database does not (a migration not applied) would otherwise fail every
            # turn with errors that do not say why; a database unreachable here leaves
            # the check to the next rescue
            connection = session.connection(bind_arguments={"mapper": self._model})
            require_database_schema(connection, self._table)
            require_controls_table(connection, self._table)  # claims read its pauses
            require_key_slots_table(connection, self._table)  # and keyed claims its slots
            require_workers_table(connection, self._table)
            if self._schedules:
                require_schedules_table(connection, self._table)
            self._repository(session)._record_worker(self._registration(), self._lease)
            self._table_checked = True
        else:
            self._repository(session)._forget_dead_workers()
        repo = self._repository(session)
        # which of its types are rate-limited: those only a claim within budget takes
        # (until a worker learns of a new limit, plain claims skip the type: never too many)
        self._rate_limited = repo._rate_limited_types(self._types)
        self._keyed = repo._uses_keys(fresh=True)
        return repo.rescue_expired_leases()

    def _keys_body(self, session: Session) -> bool:
        """Whether the queue has begun to use concurrency keys since this worker last
        looked (an empty turn asks: a keyed task is claimed only by a keyed claim)."""
        self._keyed = self._repository(session)._uses_keys(fresh=True)
        return self._keyed

    def _rescued(self, rescued: dict[int, TaskStatus]) -> int:
        for task_id, status in rescued.items():
            logger.warning("task.rescued id=%d status=%s (its lease expired)", task_id, status)
        self.stats.add(rescued=len(rescued))
        return len(rescued)

    def _progress_body(
        self, task_id: int, progress: int, lease_token: Any
    ) -> Callable[[Session], None]:
        def body(session: Session) -> None:
            self._repository(session).update_progress(
                task_id, progress, lease_token=lease_token, relaxed_commit=True
            )

        return body

    def _renewal_body(self, attempts: list[Attempt]) -> Callable[[Session], set[int]]:
        """The heartbeat: renew the leases of ``attempts`` and, once the worker has
        registered (its first rescue), its registration, in one statement."""

        def body(session: Session) -> set[int]:
            repo = self._repository(session)
            leases = [a.lease for a in attempts]
            if self._table_checked:
                return repo._heartbeat(leases, self._registration(), self._lease)
            return set(repo.renew_leases(leases, lease_duration=self._lease)) if leases else set()

        return body

    def _registration(self) -> dict[str, Any]:
        """The worker's row in the registry."""
        return {
            "worker_id": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "task_types": list(self._types),
            "slots": self._concurrency,
            "version": package_version(),
        }

    def _unregister_body(self, session: Session) -> None:
        self._repository(session)._remove_worker(self.owner)

    def _write_retry(self, attempt: int, exc: Exception) -> float | None:
        """The delay before retrying a failed write, or ``None`` to give up (re-raise)."""
        if not is_transient(exc) or attempt == WRITE_ATTEMPTS - 1:
            return None
        delay: float = 0.1 * 2.0**attempt
        logger.warning("worker.write_retry in=%.1fs error=%s", delay, exc)
        return delay

    # ------------------------------------------------------------------ attempts

    def _forget(self, attempt: Attempt) -> None:
        """Stop holding ``attempt`` (call with the lock held)."""
        if self._held.get(attempt.task_id) is attempt:
            del self._held[attempt.task_id]

    def _write_progress(self, task_id: int, progress: int, lease_token: uuid.UUID) -> bool:
        """Every context's progress writer (each worker writes in its own way)."""
        raise NotImplementedError

    def _hand_out(
        self,
        written: Written,
        claimed: list[Any],
        failure: Exception | None,
        queue_attempt: Callable[[Attempt], None],
    ) -> list[Any]:
        """The end of a claim turn, outside the write lock: hold what was claimed (so it
        is heartbeated before any callback runs) and queue it for the slots, report what
        was written (events and user callbacks never hold up heartbeats), then raise the
        turn's ``failure``, if any; returns ``claimed``."""
        if claimed:
            for attempt in self._hold(claimed):
                queue_attempt(attempt)
        self._report(written)
        if failure is not None:
            raise failure
        return claimed

    def _hold(self, claimed: list[Any]) -> list[Attempt]:
        """Hold freshly claimed tasks (their leases are renewed from now on)."""
        attempts = [self._attempt(task, self._write_progress) for task in claimed]
        with self._lock:
            self._busy += len(attempts)
            for attempt in attempts:
                self._held[attempt.task_id] = attempt
        self.stats.add(claimed=len(attempts))
        return attempts

    def _attempt(self, task: Any, progress_writer: ProgressWriter) -> Attempt:
        context = TaskContext(
            task,
            progress_writer=progress_writer,
            progress_interval=self._progress_interval,
            worker_stopping=self._stopping,
        )
        spec = self._specs.get(context.task_type)
        if task.timeout_seconds:
            timeout: float | None = float(task.timeout_seconds)
        elif spec is not None and spec.timeout_seconds:
            timeout = spec.timeout_seconds
        else:
            timeout = self._default_timeout
        attempt = Attempt(task, context, timeout)
        if task.started_at is None:  # claimed ahead of a free slot (prefetch)
            attempt.start_recorded = False
            attempt.record_first = task.error_message == UNSTARTED_RESCUE
        return attempt

    def _start(self, attempt: Attempt) -> Outcome | HandlerSpec | None:
        """Start an attempt on its slot: the handler to call, or the outcome without a
        call (``None``: nothing to do, it was lost or handed back while it waited)."""
        task = attempt.task
        with self._lock:
            if attempt.finished:
                return None
            if self._stopping.is_set():
                return Outcome(attempt, "release")  # claimed, but shutdown came first
            attempt.start()
            if not attempt.start_recorded and not attempt.record_first:
                # recorded with the next batch of outcomes (record_first: by the slot,
                # before the handler runs)
                attempt.start_recorded = True
                self._outcomes.append(Outcome(attempt, "start"))
        if logger.isEnabledFor(logging.INFO):  # spare reading the row's attributes
            logger.info(
                "task.started id=%d type=%s attempt=%d",
                task.id,
                task.type,
                attempt.context.attempt,
            )
        attempt.span = start_attempt_span(task, attempt.context.attempt)
        if isinstance(task.payload, UndecodableJSON):  # stored by SQL around the repository
            message = f"ValueError: the task's payload cannot be read: {task.payload.error}"
            return self._outcome(attempt, "fail", message=message, retry=False)
        spec = self._specs.get(attempt.context.task_type)
        if spec is None:
            message = f"no handler is registered for task type {task.type!r}"
            return self._outcome(attempt, "fail", message=message, retry=False)
        return spec

    def _raised(self, attempt: Attempt, exc: BaseException) -> Outcome:
        """The outcome of a handler that raised ``exc``."""
        if isinstance(exc, TaskInterrupted):
            if self._stopping.is_set():
                return self._outcome(attempt, "release")
            return self._outcome(attempt, "fail", message=f"TaskInterrupted: {exc}")
        # the message once, bounded, in the outcome's log line and in the row; the
        # traceback without it (its last line would repeat the message, unbounded)
        trace = traceback.TracebackException.from_exception(exc)
        lines = list(trace.format())
        stack = lines[: len(lines) - len(list(trace.format_exception_only()))]
        return self._outcome(
            attempt,
            "fail",
            message=failure_text(exc),
            trace="".join(map(bounded_error_message, stack)).rstrip(),
        )

    def _returned(self, attempt: Attempt, result: Any) -> Outcome:
        """The outcome of a handler that returned ``result``."""
        try:
            require_json("result", result, allow_none=True, max_bytes=self._max_result)
        except (TypeError, ValueError) as exc:  # the same result again next time: no retry
            message = f"{type(exc).__name__}: the handler's result cannot be stored: {exc}"
            return self._outcome(attempt, "fail", message=message, retry=False)
        return self._outcome(attempt, "complete", result=result)

    def _slot_done(self, attempt: Attempt, outcome: Outcome | None) -> None:
        """Bookkeeping after a slot is done with ``attempt`` (its outcome is queued)."""
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
        if outcome is not None and attempt.finished:  # its span ends with what settled it
            logger.warning(
                "task.outcome_discarded id=%d outcome=%s reason=%s",
                attempt.task.id,
                outcome.kind,
                attempt.context.stop_reason,
            )

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

    def _outcome(self, attempt: Attempt, kind: Any, **fields: Any) -> Outcome:
        seconds = time.monotonic() - attempt.started
        if kind == "fail":  # a failed task keeps its progress: write the last value first
            attempt.context.flush_progress(force=True)
        if "message" in fields:
            fields["message"] = bounded_error_message(fields["message"])
        return Outcome(attempt, kind, seconds=seconds, **fields)

    # ------------------------------------------------------------------ writing outcomes

    def _write_outcomes(self, repo: TaskRepository[TaskT], outcomes: list[Outcome]) -> Written:
        """Write outcomes in the caller's transaction; returns ``(outcome, event)`` pairs.

        Completions go in one statement; failures one by one (each decides retry or
        failure atomically); hand-backs in one statement.  An outcome whose lease is no
        longer current is reported as ``lease_lost`` and changes nothing.
        """
        written: Written = []
        starts = [o.attempt.lease for o in outcomes if o.kind == "start"]
        if starts:  # before the completions, which would record a start themselves
            repo.record_starts(starts)
        completions = [o for o in outcomes if o.kind == "complete"]
        if completions:
            done = repo.complete_tasks([(*o.attempt.lease, o.result) for o in completions])
            for outcome in completions:
                event = "completed" if outcome.attempt.task_id in done else "lease_lost"
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

    def _report(self, written: Written) -> None:
        """After the commit: count, log and emit events (outside every lock)."""
        counts = Counter(event for _, event in written if event != "lease_lost")
        if counts:  # one update for the batch, before any callback sees the events
            self.stats.add(**counts)
        for outcome, event in written:
            if event == "lease_lost":
                self._lease_lost(outcome.attempt)
            else:
                self._report_event(outcome, event)

    def _report_event(self, outcome: Outcome, event: str) -> None:
        attempt, task = outcome.attempt, outcome.attempt.task
        self._end_span(attempt, event, outcome.message)
        if event == "completed":
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "task.completed id=%d type=%s duration=%.3fs",
                    task.id,
                    task.type,
                    outcome.seconds,
                )
        elif event == "released":
            attempt.context.interrupt("handed back at shutdown")
            logger.info("task.released id=%d type=%s", task.id, task.type)
        else:  # the message once (bounded), with the handler's traceback if it raised
            logger.warning(
                "task.%s id=%d type=%s attempt=%d duration=%.3fs error=%s%s",
                event,
                task.id,
                task.type,
                attempt.context.attempt,
                outcome.seconds,
                outcome.message,
                "\n" + outcome.trace if outcome.trace else "",
            )
        if self._on_event is None:
            return
        try:
            self._on_event(event, task, outcome.seconds)
        except Exception:
            logger.exception("worker.on_event_failed event=%s", event)

    def _end_span(self, attempt: Attempt, outcome: str, message: str = "") -> None:
        """End the attempt's span, once, with how it ended (any thread may call it; never
        with the lock held)."""
        if attempt.span is None:  # no tracing: no lock taken on the outcome's path
            return
        with self._lock:
            span, attempt.span = attempt.span, None
        finish_span(span, outcome, message)

    def _lease_lost(self, attempt: Attempt) -> None:
        self._end_span(attempt, "lease_lost")
        with self._lock:
            attempt.lost = True
        attempt.context.interrupt("the lease on this task was lost")
        self.stats.add(lost_leases=1)
        logger.warning(
            "task.lease_lost id=%d type=%s (cancelled by an operator, or rescued after "
            "the lease expired; the handler is asked to stop and its outcome is not written)",
            attempt.task.id,
            attempt.task.type,
        )

    # ------------------------------------------------------------------ supervision

    def _to_renew(self) -> list[Attempt]:
        with self._lock:
            return [a for a in self._held.values() if not a.finished]

    def _renewed(self, attempts: list[Attempt], renewed: set[int]) -> list[Attempt]:
        """Report the attempts whose lease a renewal did not extend as lost (rescued
        elsewhere, or cancelled by an operator), and return them."""
        with self._lock:
            lost = [
                a
                for a in attempts
                if a.task_id not in renewed and self._held.get(a.task_id) is a and not a.finished
            ]
        for attempt in lost:
            self._lease_lost(attempt)
        return lost

    def _release_stale_waiting(self, now: float) -> bool:
        """Hand back claimed tasks that waited a whole lease for a slot (every slot is
        busy, perhaps with handlers that timed out but never return), so other workers
        can run them.  ``True`` when some were queued for hand-back."""
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
        return bool(stale)

    def _running(self) -> list[Attempt]:
        with self._lock:
            return [a for a in self._held.values() if a.running]

    def _next_wake(self, next_heartbeat: float, running: list[Attempt]) -> float:
        """Seconds until the supervisor has something to do."""
        deadlines = [a.deadline for a in running if a.deadline and not a.finished]
        now = time.monotonic()
        wait = min([next_heartbeat, *deadlines]) - now
        if self._table_checked:  # schedules fire once the run has checked their table
            wait = min(wait, self._schedules.seconds_until_due(now))
        if self._progress_interval:  # also idle: a handler starting now may throttle a value
            wait = min(wait, self._progress_interval)
        return max(wait, 0.01)

    def _expired(self, now: float) -> list[Attempt]:
        """Running attempts past their deadline, now settled (their outcome is a timeout)."""
        with self._lock:
            expired = [
                a
                for a in self._held.values()
                if a.running and a.deadline is not None and a.deadline <= now and not a.finished
            ]
            for attempt in expired:
                attempt.settled = True
        return expired

    def _timed_out(self, attempt: Attempt) -> Outcome:
        """Ask a handler past its deadline to stop; the failed outcome to write."""
        message = f"TimeoutError: the attempt exceeded its timeout of {attempt.timeout_seconds:g}s"
        attempt.context.interrupt(message)
        self.stats.add(timed_out=1)
        return self._outcome(attempt, "fail", message=message)

    # ------------------------------------------------------------------ shutdown

    def _still_running(self) -> bool:
        """Handlers whose outcome is still open (a timed-out one is already settled)."""
        with self._lock:
            return any(a.running and not a.finished for a in self._held.values())

    def _release_waiting(self, attempt: Attempt) -> None:
        """A claimed task that never reached a slot before shutdown goes straight back."""
        with self._lock:
            self._busy -= 1
            if attempt.finished or attempt.outcome_queued:
                return  # already handed back (it waited too long) or lost
            attempt.outcome_queued = True
            self._outcomes.append(Outcome(attempt, "release"))

    def _hand_back_leftovers(self) -> list[Attempt]:
        """Queue hand-backs for attempts still open when the grace period ended."""
        with self._lock:
            leftover = [a for a in self._held.values() if not a.finished and not a.outcome_queued]
            for attempt in leftover:
                attempt.settled = True  # whatever the handler returns later is discarded
            self._outcomes.extend(self._outcome(a, "release") for a in leftover)
        for attempt in leftover:
            attempt.context.interrupt("handed back at shutdown")
        return leftover

    def _unwritten(self) -> None:
        with self._lock:
            unwritten, self._outcomes = self._outcomes, []
        for outcome in unwritten:
            self._end_span(outcome.attempt, "write_failed")
        logger.error(
            "worker.unwritten_outcomes count=%d (their leases expire and the tasks are rescued)",
            len(unwritten),
        )

    def _signal_count(self, name: str) -> bool:
        """Count a SIGINT/SIGTERM; ``True`` when it is the second (exit at once)."""
        self._signals_seen += 1
        if self._signals_seen > 1:
            logger.warning("worker.exit_now signal=%s (leases will expire and be rescued)", name)
            return True
        logger.info("worker.shutdown_requested signal=%s grace=%.1fs", name, self._grace)
        return False


def claim_connection_engine(session: Session, model: type[Any]) -> Engine | None:
    """The engine from which a worker may open its own autocommit connection for turns
    that only claim, given one of its sessions; ``None`` to keep those turns in
    ordinary transactions.

    ``None`` when the model's bind is a connection (the worker must use that one), or
    when the application hooks transaction begins: a session ``after_begin`` or an
    engine ``begin`` listener may set per-transaction state (``SET LOCAL``) that the
    claim must see, and autocommit would drop it.

    Example::

        engine = claim_connection_engine(session, Task)
    """
    bind = session.get_bind(mapper=model)
    if not isinstance(bind, Engine) or session.dispatch.after_begin or bind.dispatch.begin:
        return None
    return bind


#: session events a claim run without a session would not fire
_TURN_EVENTS = (
    "do_orm_execute",
    "after_transaction_create",
    "after_transaction_end",
    "before_commit",
    "after_commit",
    "after_rollback",
    "after_soft_rollback",
)


def claims_without_session(session: Session, model: Any) -> bool:
    """Whether a worker's turns that only claim may run the claim straight on its own
    connection, without a session: the factory makes plain ``Session`` objects (a class
    that overrides nothing, no execution options, no listeners on transactions or
    executions, which would not fire) and the model's instances are built without an ORM
    query (:func:`~sqlalchemy_taskqueue._loading.detached_loader`).

    Example::

        claims_without_session(session, Task)  # True for sessionmaker(engine)
    """
    return (
        _overrides_nothing(type(session))
        and not getattr(session, "execution_options", None)
        and not any(getattr(session.dispatch, event) for event in _TURN_EVENTS)
        and detached_loader(model) is not None
    )


def _overrides_nothing(session_class: type[Any]) -> bool:
    """``Session`` itself, or subclasses of it that define nothing of their own (such as
    the one every ``sessionmaker`` makes)."""
    mro = session_class.__mro__
    if Session not in mro:
        return False
    own = mro[: mro.index(Session)]
    return all(name.startswith("__") for cls in own for name in vars(cls))


def is_coroutine_handler(function: Handler) -> bool:
    """Whether calling ``function`` returns a coroutine (an ``async def`` handler).

    >>> async def send(task, ctx): ...
    >>> is_coroutine_handler(send), is_coroutine_handler(print)
    (True, False)
    """
    call = getattr(function, "__call__", None)  # noqa: B004 - callable objects too
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


def failure_text(exc: BaseException) -> str:
    """How a handler's exception is recorded: ``Type: message``, or ``Type`` alone when the
    message is empty, as :mod:`traceback` prints it (also when ``str(exc)`` raises).

    >>> failure_text(ValueError("row 7")), failure_text(RuntimeError())
    ('ValueError: row 7', 'RuntimeError')
    """
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not keep the attempt from failing
        text = "<exception str() failed>"
    return f"{name}: {text}" if text else name


def claim_worth_retrying(exc: BaseException) -> bool:
    """Whether a claim-only turn that failed (its claim connection discarded) runs once
    more on a new connection: after any error of the database or its driver.  A dead
    connection is not always reported as one: asyncpg reports a backend terminated while
    idle as "another operation is in progress", which SQLAlchemy passes on unclassified
    (or not wrapped at all).  An error that persists fails the second try too.

    >>> claim_worth_retrying(ValueError("a bug")), claim_worth_retrying(OSError())
    (False, True)
    """
    if isinstance(exc, (DBAPIError, OSError)):
        return True
    return is_driver_error(exc)


def is_transient(exc: BaseException) -> bool:
    """Connection-level errors worth retrying (not lease or state errors).

    >>> is_transient(ValueError("no")), is_transient(ConnectionRefusedError())
    (False, True)
    """
    cause = exc.__cause__ if isinstance(exc, TaskQueueError) else exc
    if cause is None or is_permanent_error(cause):  # e.g. a value over the database's limit
        return False
    if isinstance(cause, (OperationalError, OSError)):  # OSError: an async driver's socket
        return True
    return isinstance(cause, DBAPIError) and bool(cause.connection_invalidated)
