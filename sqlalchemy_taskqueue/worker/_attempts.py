"""The worker's bookkeeping: attempts it holds, outcomes waiting to be written, counters.

An :class:`Attempt` lives from the claim until its outcome is written: while it waits
for a slot, while its handler runs, and while its :class:`Outcome` waits for the next
batched write.  The worker renews the leases of every attempt it holds.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from ._context import TaskContext

__all__ = ["Attempt", "Outcome", "WorkerStats"]


@dataclass
class WorkerStats:
    """Counters of one worker since it was created (safe to read from any thread).

    Example::

        worker.run(until_empty=True)
        print(worker.stats.completed, worker.stats.failed, worker.stats.retried)
    """

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    rescued: int = 0
    released: int = 0
    timed_out: int = 0
    lost_leases: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Increment counters by name.

        >>> stats = WorkerStats()
        >>> stats.add(claimed=2, completed=1)
        >>> stats.claimed, stats.completed
        (2, 1)
        """
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


@dataclass
class Attempt:
    """One claimed task, from the claim until its outcome is in the database.

    Example::

        attempt = Attempt(task, context, timeout_seconds=30.0)
        attempt.lease  # (task id, lease token): what its writes are fenced by
    """

    task: Any
    context: TaskContext
    timeout_seconds: float | None
    deadline: float | None = None
    claimed: float = field(default_factory=time.monotonic)
    started: float = 0.0
    running: bool = False
    settled: bool = False
    """Its outcome was written by someone else (timeout, shutdown hand-back)."""
    lost: bool = False
    """Its lease is gone; nothing more may be written for it."""
    outcome_queued: bool = False
    """Its handler returned; the outcome waits for the next batched write."""
    start_recorded: bool = True
    """The database knows it started (claimed straight into a slot, or recorded since);
    only then does a rescue charge it an attempt."""
    record_first: bool = False
    """Its start must be recorded before its handler runs: it was rescued once without a
    charge (``statements.UNSTARTED_RESCUE``), perhaps because it kills its worker."""
    task_id: int = field(init=False)
    """The task's id (read once, by the context, rather than from the mapped row)."""
    span: Any = None
    """Its OpenTelemetry span while the handler runs and until the outcome is written
    (``None`` without tracing)."""

    @property
    def lease(self) -> tuple[int, uuid.UUID]:
        """``(task_id, lease_token)`` as the repository's lease methods take it.

        Example::

            repo.renew_leases([attempt.lease for attempt in held])
        """
        return (self.task_id, self.context.lease_token)

    @property
    def finished(self) -> bool:
        """Nothing more may be written for this attempt.

        Example::

            leases = [a.lease for a in attempts if not a.finished]
        """
        return self.settled or self.lost

    def __post_init__(self) -> None:
        self.started = self.claimed  # until the handler starts
        self.task_id = self.context.task_id

    def start(self) -> None:
        """The handler starts now: the timeout counts from here.

        Example::

            attempt.start()
            result = spec.function(attempt.task, attempt.context)
        """
        self.started = time.monotonic()
        self.running = True
        if self.timeout_seconds is not None:
            self.deadline = self.started + self.timeout_seconds


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, waiting to be written with the next batch.

    Example::

        Outcome(attempt, "complete", result={"rows": 10}, seconds=0.4)
        Outcome(attempt, "fail", message="ValueError: bad row", retry=True)
        Outcome(attempt, "release")  # back to pending, no retry used (shutdown)
        Outcome(attempt, "start")  # not an end: a prefetched attempt's start, to record
    """

    attempt: Attempt
    kind: Literal["complete", "fail", "release", "start"]
    result: Any = None
    message: str = ""
    retry: bool = True
    seconds: float = 0.0
    trace: str = ""
    """The handler's traceback (without the message), logged with the outcome."""
