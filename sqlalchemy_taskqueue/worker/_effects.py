"""What the worker's steps ask their driver to do: the effects, and :class:`Stepper`.

The loop of both workers (:mod:`sqlalchemy_taskqueue.worker._core`) is written as
generators that yield :class:`Effect` objects; ``yield from effect`` has the effect done
and evaluates to its result (or raises its error there)::

    written = yield from Transaction(self._outcomes_body(outcomes))
    yield from Wait(self._wake, 0.5)

A driver runs the steps with a :class:`Stepper` and performs each effect its own way:
:class:`~sqlalchemy_taskqueue.Worker` by blocking a thread,
:class:`~sqlalchemy_taskqueue.AsyncWorker` by awaiting.  Applications do not use this
module.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue.backends import backend_for
from sqlalchemy_taskqueue.backends.base import ClaimRequest

if TYPE_CHECKING:
    from ._attempts import Attempt

_R = TypeVar("_R")

#: Steps of the loop returning an ``_R``: a generator of :class:`Effect` objects, sent
#: each effect's result.
Steps = Generator["Effect[Any]", Any, _R]

#: What a worker waits on (``threading.Event`` in the threaded worker, ``asyncio.Event``
#: in the async one); the steps only set, clear and test it.
WakeEvent: TypeAlias = "threading.Event | asyncio.Event"

#: Claimed tasks waiting for a slot (``None`` ends a slot).
SlotQueue: TypeAlias = "queue.SimpleQueue[Attempt | None] | asyncio.Queue[Attempt | None]"


class Effect(Generic[_R]):
    """Something a step asks its driver to do; ``yield from effect`` has it done and
    evaluates to its result (or raises its error)."""

    __slots__ = ()

    def __iter__(self) -> Steps[_R]:
        result: _R = yield self
        return result


@dataclass(frozen=True)
class Transaction(Effect[_R]):
    """Run ``body`` in a session of its own and commit; the body's result.

    ``claim_only``: on the worker's claim connection where it may (see
    ``WorkerCore._claim_only``).  ``shielded``: an async worker cancelled meanwhile
    first waits for the commit (and the connection's return); false inside steps that
    are :class:`Shielded` already."""

    body: Callable[[Session], _R]
    claim_only: bool = False
    shielded: bool = True


@dataclass(frozen=True)
class ClaimDirectly(Effect[Sequence[Any]]):
    """Make the claim ``request`` straight on the claim ``connection`` (autocommit, no
    session); the rows it returns.  The threaded driver calls :meth:`run` with the
    connection, the asyncio driver hands it to ``AsyncConnection.run_sync``."""

    connection: Any
    table: Table
    request: ClaimRequest

    def run(self, connection: Connection) -> Sequence[Any]:
        """The claim, made by the backend of the connection's database."""
        return backend_for(connection.dialect).claim(connection, self.table, self.request)


@dataclass(frozen=True)
class CloseClaimConnection(Effect[None]):
    """Give the claim connection back to the pool, or with ``discard`` (after an error,
    its state unknown) close it for good."""

    discard: bool = False


@dataclass(frozen=True)
class Wait(Effect[None]):
    """Wait until ``event`` is set or ``seconds`` pass (it stays set)."""

    event: WakeEvent
    seconds: float


@dataclass(frozen=True)
class Sleep(Effect[None]):
    """Back off from a failing database for ``seconds`` (not to synchronise)."""

    seconds: float


@dataclass(frozen=True)
class Locked(Effect[_R]):
    """Run ``steps`` holding the write lock (outcome writes and lease renewals touch the
    same rows in no fixed order, and a renewal must see the outcomes written)."""

    steps: Steps[_R]


@dataclass(frozen=True)
class Shielded(Effect[_R]):
    """Run ``steps`` to their end even if the async worker is cancelled meanwhile (a
    claim or outcome write must not be cut off after the server committed it); the
    cancellation is raised once they end.  Nothing cancels a thread."""

    steps: Steps[_R]


@dataclass(frozen=True)
class ProgressLanded(Effect[None]):
    """Wait for the progress write queued for ``task_id``, if any, so that it lands
    before the attempt's outcome (a thread's progress writes have landed when they
    return)."""

    task_id: int


class Stepper(Generic[_R]):
    """Runs ``steps`` from one effect to the next for a driver.

    Iterating gives the effects; before the next one, the driver sets :attr:`value` to
    the effect's result or :attr:`error` to what it raised; :meth:`result` is what the
    steps returned.

    >>> def steps() -> Steps[str]:
    ...     yield from Sleep(0.5)
    ...     return "slept"
    >>> run = Stepper(steps())
    >>> [effect for effect in run]  # a driver would sleep here (and set run.value)
    [Sleep(seconds=0.5)]
    >>> run.result()
    'slept'
    """

    __slots__ = ("_steps", "error", "value")

    def __init__(self, steps: Steps[_R]) -> None:
        self._steps = steps
        self.value: Any = None
        self.error: BaseException | None = None

    def __iter__(self) -> Stepper[_R]:
        return self

    def __next__(self) -> Effect[Any]:
        try:
            if self.error is None:
                return self._steps.send(self.value)
            error, self.error = self.error, None
            return self._steps.throw(error)
        except StopIteration as stop:
            self.value = stop.value
            raise StopIteration from None

    def result(self) -> _R:
        """What the steps returned (once the iteration has ended)."""
        result: _R = self.value
        return result
