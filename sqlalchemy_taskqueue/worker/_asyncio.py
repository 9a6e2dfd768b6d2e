"""The asyncio twin of :class:`~sqlalchemy_taskqueue.Worker`: :class:`AsyncWorker`.

It takes an ``async_sessionmaker`` and runs on one event loop: ``async def`` handlers
run concurrently on the loop, plain functions in a thread pool of ``concurrency``
threads, so neither blocks the other.  Options, leases, batched outcomes, rescue,
timeouts, progress, prefetch and graceful shutdown are those of
:class:`~sqlalchemy_taskqueue.Worker`: both run one loop, written once as steps that
yield effects (:mod:`sqlalchemy_taskqueue.worker._core`), with the decisions and
transaction bodies of :mod:`sqlalchemy_taskqueue.worker._base`.  This module is the
asyncio driver of those steps: it performs each effect by awaiting (a transaction body
runs through ``AsyncSession.run_sync``), and owns the event-loop tasks (slots,
supervisor, progress writers), the thread pool and the signal handling.  Idle workers
wake on ``LISTEN/NOTIFY`` through asyncpg (the ``async`` extra) or psycopg 3.

Example::

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy_taskqueue import AsyncWorker

    async def export(task, ctx):
        rows = await fetch_rows(ctx.payload["project_id"])
        ctx.update_progress(50)          # never blocks the loop
        return {"rows": len(rows)}

    engine = create_async_engine("postgresql+asyncpg://app@db/app")
    worker = AsyncWorker(async_sessionmaker(engine), Task, {"data_export": export})
    await worker.run()                   # SIGINT/SIGTERM or worker.stop() end it

Differences from the threaded worker, all in the async worker's favour:

* An ``async def`` handler that passes its timeout is cancelled (``CancelledError`` at
  its next ``await``) after its failure is recorded, so its slot frees at once; a plain
  function in the thread pool is only asked to stop, as with threads.
* At the end of the shutdown grace period, ``async def`` handlers still running are
  cancelled after their tasks are handed back.
* Cancelling the task that awaits :meth:`AsyncWorker.run` is a stop request: the
  graceful shutdown runs before the cancellation propagates, and a claim or outcome
  write in flight is finished first, so nothing it did is lost.

As with the threaded worker, a stop ends :meth:`AsyncWorker.run` within
``shutdown_grace`` plus :data:`~sqlalchemy_taskqueue.worker._base.STOP_BOUND` whatever the
network does: at that deadline what still waits for the database is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, NamedTuple, ParamSpec, TypeVar, cast

from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from sqlalchemy_taskqueue._schema import notify_channel
from sqlalchemy_taskqueue._tracing import await_in_span, call_in_span
from sqlalchemy_taskqueue.backends.base import AsyncListener
from sqlalchemy_taskqueue.exceptions import LeaseLostError
from sqlalchemy_taskqueue.repository import TaskT

from . import _effects as effects
from ._attempts import Attempt, Outcome
from ._base import (
    claim_connection_engine,
    claims_without_session,
    is_coroutine_handler,
    logger,
)
from ._core import WorkerCore
from ._handlers import HandlerSpec
from ._logging import default_logging

__all__ = ["AsyncWorker"]

_R = TypeVar("_R")
_P = ParamSpec("_P")

#: Seconds an abandoned run's work gets to unwind once cancelled (within STOP_BOUND).
_UNWIND = 1.0


class _Escaped(NamedTuple):
    """``SystemExit`` or ``KeyboardInterrupt`` raised by an ``async def`` handler."""

    error: BaseException


async def _contained(coroutine: Awaitable[Any]) -> Any:
    """Await a handler's coroutine in a task of its own.  asyncio lets ``SystemExit`` and
    ``KeyboardInterrupt`` raised in a task stop the whole event loop; from a handler they
    only fail its attempt (as with the threaded worker), so they are handed back as a
    value."""
    try:
        return await coroutine
    except (SystemExit, KeyboardInterrupt) as exc:
        return _Escaped(exc)


class DaemonThreadPool(Executor):
    """``size`` daemon threads running submitted calls, for plain-function handlers.

    Like the threaded worker's slots, its threads never hold up interpreter exit: a
    handler that ignores a stop request must not keep a stopped worker's process alive
    (``ThreadPoolExecutor`` joins its threads at exit).

    Example::

        pool = DaemonThreadPool(4, "taskqueue-slot")
        result = await loop.run_in_executor(pool, handler, task, ctx)
    """

    def __init__(self, size: int, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        try:
            for n in range(size):
                thread = threading.Thread(target=self._serve, name=f"{name}-{n}", daemon=True)
                thread.start()
                self._threads.append(thread)
        except BaseException:  # can't start new thread: end those that did start
            self.shutdown(wait=False)
            raise

    def submit(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_R]:
        """Run ``fn(*args, **kwargs)`` on a free thread.

        Example::

            pool.submit(print, "hello").result()
        """
        future: Future[_R] = Future()
        self._calls.put((future, lambda: fn(*args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let the threads end once their current call returns.

        Example::

            pool.shutdown(wait=False)
        """
        for _ in self._threads:
            self._calls.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, function = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = function()
            except BaseException as exc:  # the handler's error, reported through the future
                future.set_exception(exc)
            else:
                future.set_result(result)


class AsyncWorker(WorkerCore[TaskT, AsyncSession]):
    """Runs handlers for claimed tasks on ``concurrency`` slots of one event loop.

    Takes exactly the options of :class:`~sqlalchemy_taskqueue.Worker`, with an
    ``async_sessionmaker`` as ``session_factory`` (an ``async_scoped_session`` stands for
    its ``session_factory``).  ``concurrency`` is both the number of
    handlers running at once and the size of the thread pool for plain-function handlers.

    Example::

        worker = AsyncWorker(async_sessionmaker(engine), Task, tasks, concurrency=16)
        await worker.run(until_empty=True)
    """

    _wake: asyncio.Event
    _slots: asyncio.Queue[Attempt | None]
    _claim_connection: AsyncConnection | None

    def _prepare(self) -> None:
        if isinstance(self._session_factory, async_scoped_session):
            # each transaction runs in a task of its own: taken through a proxy scoped to
            # the task, every one would leave its session in the registry
            self._session_factory = self._session_factory.session_factory
        if isinstance(self._session_factory, (sessionmaker, scoped_session)):
            raise TypeError(
                "AsyncWorker needs an async_sessionmaker (AsyncSession); "
                "use Worker with a sessionmaker"
            )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: DaemonThreadPool | None = None
        self._abandoning = False  # the stop passed its deadline: wait for no database
        self._claim_connection = None  # see WorkerCore._claim_only
        self._claims_directly = False
        self._loop_thread: int | None = None
        self._supervisor_stop = False
        self._slots_cancelled = False
        self._handler_calls: dict[int, asyncio.Future[Any]] = {}
        self._cancelled_calls: set[int] = set()  # task ids whose handler the worker cancelled
        self._progress_values: dict[int, tuple[int, uuid.UUID]] = {}
        self._progress_writers: dict[int, asyncio.Task[bool]] = {}

    # ------------------------------------------------------------------ public

    def stop(self) -> None:
        """Ask a running worker to shut down gracefully (safe from any thread or signal).

        Example::

            asyncio.get_running_loop().call_later(60, worker.stop)
            await worker.run()
        """
        self._stopping.set()
        loop = self._loop
        if loop is not None:
            # also from a signal handler on the loop's own thread: this wakes its select()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._stop_noticed)

    def _stop_noticed(self) -> None:
        """On the loop: wake the claim loop, and run()'s wait to start the stop's clock."""
        self._wake.set()
        self._stop_requested.set()

    async def run(self, *, until_empty: bool = False, install_signal_handlers: bool = True) -> None:
        """Process tasks until stopped; with ``until_empty``, until nothing is claimable.

        Installs SIGINT/SIGTERM handlers when it runs on the main thread (restored on
        return) unless ``install_signal_handlers`` is false, as inside a web server that
        handles signals itself; otherwise use :meth:`stop`.  Rides out database outages
        like :meth:`Worker.run <sqlalchemy_taskqueue.Worker.run>`.  Cancelling the task
        that awaits it is a graceful stop.

        After a stop request it returns within ``shutdown_grace`` plus
        :data:`~sqlalchemy_taskqueue.worker._base.STOP_BOUND` (5 s), whatever the
        network does: what still waits for the database then is cancelled
        (``worker.stop_timed_out`` is logged; the tasks still held are rescued once
        their leases expire).

        Example::

            await worker.run(until_empty=True)   # drain the queue, then return
        """
        self._begin_run()
        work: asyncio.Future[None] | None = None
        try:
            self._wake = asyncio.Event()
            self._stop_requested = asyncio.Event()
            self._supervisor_wake = asyncio.Event()
            # held while a transaction writes outcomes or renews leases (see Worker)
            self._write_lock = asyncio.Lock()
            self._slots = asyncio.Queue()
            self._supervisor_stop = self._slots_cancelled = self._abandoning = False
            self._pool = None
            self._loop_thread = threading.get_ident()
            self._loop = asyncio.get_running_loop()  # published last: stop() may use it now
            with default_logging(), self._signal_handlers(install_signal_handlers):
                work = asyncio.ensure_future(self._work(until_empty))
                await self._await_work(work)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._loop = self._loop_thread = None
            if work is None or work.done():
                self._end_run()
            else:  # abandoned, still unwinding: the run ends with it
                work.add_done_callback(lambda _: self._end_run())

    async def _work(self, until_empty: bool) -> None:
        """The worker itself: listener, slots, supervisor, claim loop and shutdown.
        Whatever started is stopped again, however it ends."""
        listener = await self._start_listener()
        slots: list[asyncio.Task[None]] = []
        supervisor: asyncio.Task[None] | None = None
        try:
            self._log_started(listener is not None)
            self._pool = DaemonThreadPool(self._concurrency, "taskqueue-slot")
            slots = [asyncio.ensure_future(self._slot_loop()) for _ in range(self._concurrency)]
            supervisor = asyncio.ensure_future(self._drive(self._supervise()))
            await self._drive(self._claim_loop(until_empty))
        except asyncio.CancelledError:
            self._stopping.set()  # the loop is being torn down: stop as gracefully as it allows
            raise
        finally:
            await self._shut_down(listener, slots, supervisor)

    async def _await_work(self, work: asyncio.Future[None]) -> None:
        """Wait for the work to end; once a stop is requested, for its deadline at most,
        then cancel what still waits for the database.

        Cancelling this wait is a stop request (the work shuts down gracefully and the
        cancellation is raised once it has); a second cancellation gives up at once.
        """
        deadline: float | None = None
        cancelled = False
        stop_requested = asyncio.ensure_future(self._stop_requested.wait())
        try:
            while not work.done():
                waiting: set[asyncio.Future[Any]] = {work}
                timeout: float | None = None
                if self._stopping.is_set():
                    if deadline is None:
                        deadline = self._stop_deadline() - _UNWIND
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        await self._abandon(work)
                        if cancelled:
                            raise asyncio.CancelledError
                        return  # the work's end (cancelled here) is no error of the run
                else:
                    waiting.add(stop_requested)
                try:
                    await asyncio.wait(
                        waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                except asyncio.CancelledError:
                    if cancelled:
                        await self._abandon(work)
                        raise
                    cancelled = True
                    self.stop()
        finally:
            stop_requested.cancel()
        if cancelled:
            raise asyncio.CancelledError
        work.result()  # the work's own error (a batch run that gave up, a failed start)

    async def _abandon(self, work: asyncio.Future[None]) -> None:
        """Give up on a stop that the database keeps from ending: cancel the work (from
        now on nothing waits for the database) and let it unwind for a moment."""
        self._abandoning = True
        self._log_abandoned()
        work.cancel()
        await asyncio.wait({work}, timeout=_UNWIND)

    # ------------------------------------------------------------------ driver

    async def _drive(self, steps: effects.Steps[_R]) -> _R:
        """Run the worker's ``steps`` in this task, awaiting each effect as it comes."""
        run = effects.Stepper(steps)
        for effect in run:
            try:
                run.value = await self._perform(effect)
            except BaseException as exc:  # a cancellation too: raised in the steps
                run.error = exc
        return run.result()

    async def _perform(self, effect: effects.Effect[Any]) -> Any:
        """Do what a step asks, awaiting it."""
        if isinstance(effect, effects.Transaction):
            transaction = self._transact(effect.body, claim_only=effect.claim_only)
            return await (self._finish(transaction) if effect.shielded else transaction)
        if isinstance(effect, effects.Locked):
            async with self._write_lock:
                return await self._drive(effect.steps)
        if isinstance(effect, effects.Shielded):
            return await self._finish(self._drive(effect.steps))
        if isinstance(effect, effects.ClaimDirectly):
            connection = cast(AsyncConnection, effect.connection)
            return await connection.run_sync(effect.run)
        if isinstance(effect, effects.Wait):
            with contextlib.suppress(asyncio.TimeoutError):
                event = cast(asyncio.Event, effect.event)
                await asyncio.wait_for(event.wait(), max(effect.seconds, 0.0))
        elif isinstance(effect, effects.Sleep):
            await asyncio.sleep(effect.seconds)  # backing off from a failing database
        elif isinstance(effect, effects.ProgressLanded):
            await self._progress_landed(effect.task_id)
        elif isinstance(effect, effects.CloseClaimConnection):
            await self._close_claim_connection(discard=effect.discard)
        return None

    async def _transact(self, body: Callable[[Session], _R], *, claim_only: bool = False) -> _R:
        """Run ``body`` on the sync face of an ``AsyncSession`` of its own and commit; with
        ``claim_only``, on the worker's own connection where it may (see
        ``WorkerCore._claim_only``)."""
        async with self._session_factory() as session:
            if not isinstance(session, AsyncSession):
                raise TypeError(f"session_factory must make AsyncSessions, got {session!r}")
            joined = claim_only and await self._join_claim_connection(session)
            try:
                result = await session.run_sync(body)
                await session.commit()
            except BaseException:
                if joined:
                    await self._close_claim_connection(discard=True)
                raise
            return result

    async def _join_claim_connection(self, session: AsyncSession) -> bool:
        if self._claim_connection is None:
            engine = claim_connection_engine(session.sync_session, self._model)
            if engine is None:
                return False
            connection = await AsyncEngine(engine).connect()
            self._claim_connection = await connection.execution_options(
                isolation_level="AUTOCOMMIT"
            )
            self._claims_directly = type(session) is AsyncSession and claims_without_session(
                session.sync_session, self._model
            )
        try:
            await session.connection(
                bind_arguments={"bind": self._claim_connection.sync_connection}
            )
        except BaseException:
            await self._close_claim_connection(discard=True)
            raise
        return True

    async def _close_claim_connection(self, *, discard: bool = False) -> None:
        """Give the claim connection back to the pool, or with ``discard`` close it for
        good (see ``Worker._close_claim_connection``)."""
        connection, self._claim_connection = self._claim_connection, None
        if connection is not None:
            try:
                if discard:
                    await connection.invalidate()
                await connection.close()
            except Exception:  # already broken: nothing left to release
                logger.debug("worker.claim_connection_close_failed", exc_info=True)

    async def _finish(self, work: Awaitable[_R]) -> _R:
        """Await ``work`` to its end even if the caller is cancelled meanwhile (a claim or
        outcome write must not be cut off after the server committed it); a cancellation
        is re-raised once the work is done.  Once the run is abandoned (its stop passed
        its deadline) the work is cancelled too and not waited for: the database it waits
        for may never answer."""
        job = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            if self._abandoning:
                job.cancel()
            else:
                await asyncio.wait([job])
            raise

    # ------------------------------------------------------------------ slots

    async def _slot_loop(self) -> None:
        while True:
            attempt = await self._slots.get()
            if attempt is None:
                return
            outcome: Outcome | None = None
            cancelled = False
            try:
                outcome = await self._execute(attempt)
                await self._progress_landed(attempt.task_id)
            except asyncio.CancelledError:  # this slot is cancelled: hand the task back
                cancelled = True
                outcome = Outcome(attempt, "release")
            except BaseException:  # a bug here must not kill the slot or strand the task
                logger.exception("worker.slot_error id=%s", attempt.task.id)
            finally:
                self._slot_done(attempt, outcome)
                self._wake.set()
            if cancelled:
                raise asyncio.CancelledError

    async def _execute(self, attempt: Attempt) -> Outcome | None:
        """Run the handler and say how the attempt ended (written later, in a batch)."""
        start = await self._drive(self._begin(attempt))
        if not isinstance(start, HandlerSpec):
            return start
        task, context, task_id = attempt.task, attempt.context, attempt.task_id
        call: asyncio.Future[Any]
        try:
            span = attempt.span
            if is_coroutine_handler(start.function):
                running = await_in_span(span, start.function(task, context))
                call = asyncio.ensure_future(_contained(running))
            else:
                loop = asyncio.get_running_loop()
                if self._pool is None:  # pragma: no cover - slots run only after it started
                    raise RuntimeError("the worker's thread pool is not running")
                call = loop.run_in_executor(
                    self._pool, call_in_span, span, start.function, task, context
                )
            self._handler_calls[task_id] = call
            result = await call
            if isinstance(result, _Escaped):
                raise result.error
            if inspect.isawaitable(result):  # a plain function that returned a coroutine
                result = await await_in_span(attempt.span, result)
        except asyncio.CancelledError as exc:
            if task_id in self._cancelled_calls:
                return None  # the worker cancelled it (timeout, shutdown): already settled
            if self._slot_cancelled():
                raise
            return self._raised(attempt, exc)  # the handler raised it on its own
        except BaseException as exc:  # SystemExit from a handler fails the attempt too
            return self._raised(attempt, exc)
        finally:
            self._handler_calls.pop(task_id, None)
            self._cancelled_calls.discard(task_id)
        return self._returned(attempt, result)

    def _slot_cancelled(self) -> bool:
        """Whether the running slot itself is being cancelled (not just its handler)."""
        if self._slots_cancelled:
            return True
        current = asyncio.current_task()
        cancelling = getattr(current, "cancelling", None)  # Python 3.11+
        if cancelling is not None:
            return bool(cancelling())
        # 3.10 cannot say: during a stop, assume the slot is cancelled (otherwise, such as
        # when a loop torn down cancels slots before run(), the attempt counts as failed)
        return self._stopping.is_set()

    def _cancel_handler(self, attempt: Attempt) -> None:
        """Cancel the ``async def`` handler of a settled attempt (threads run on)."""
        call = self._handler_calls.get(attempt.task_id)
        if isinstance(call, asyncio.Task) and not call.done():
            self._cancelled_calls.add(attempt.task_id)
            call.cancel()

    # ------------------------------------------------------------------ progress

    def _write_progress(self, task_id: int, progress: int, lease_token: uuid.UUID) -> bool:
        """The progress writer of every context.  On the loop it queues the write and
        returns at once (a lost lease then interrupts the attempt); from a pool thread it
        waits for the write."""
        loop = self._loop
        if loop is None:
            return False  # the worker stopped: the attempt is over
        if threading.get_ident() == self._loop_thread:
            self._queue_progress(task_id, progress, lease_token)
            return True
        write = asyncio.run_coroutine_threadsafe(
            self._queued_progress(task_id, progress, lease_token), loop
        )
        return write.result(timeout=self._lease.total_seconds())

    async def _queued_progress(self, task_id: int, progress: int, lease_token: uuid.UUID) -> bool:
        return await self._queue_progress(task_id, progress, lease_token)

    def _queue_progress(
        self, task_id: int, progress: int, lease_token: uuid.UUID
    ) -> asyncio.Task[bool]:
        """Write progress through the task's one writer: values reported while a write is
        in flight are coalesced into the next, so writes stay in order and never pile up."""
        self._progress_values[task_id] = (progress, lease_token)
        writer = self._progress_writers.get(task_id)
        if writer is None or writer.done():
            writer = asyncio.ensure_future(self._progress_writer(task_id))
            self._progress_writers[task_id] = writer
        return writer

    async def _progress_writer(self, task_id: int) -> bool:
        written = True
        try:
            while (value := self._progress_values.pop(task_id, None)) is not None:
                written = await self._write_one_progress(task_id, *value)
        finally:
            if self._progress_writers.get(task_id) is asyncio.current_task():
                del self._progress_writers[task_id]
        return written

    async def _write_one_progress(
        self, task_id: int, progress: int, lease_token: uuid.UUID
    ) -> bool:
        held = self._held.get(task_id)
        try:
            await self._drive(self._write(self._progress_body(task_id, progress, lease_token)))
        except LeaseLostError:
            if held is not None and held.task.lease_token == lease_token:
                held.context.interrupt("the lease on this task was lost")
            return False
        except Exception:
            logger.warning(
                "progress.write_failed id=%s progress=%s", task_id, progress, exc_info=True
            )
            if held is not None:
                held.context.progress_unwritten(progress)
        return True

    async def _progress_landed(self, task_id: int) -> None:
        """Wait for the progress write queued for ``task_id``, if any, so that it lands
        before the attempt's outcome (a failed task keeps its last progress)."""
        writer = self._progress_writers.get(task_id)
        if writer is not None:
            await asyncio.wait([writer])

    # ------------------------------------------------------------------ start and stop

    async def _start_listener(self) -> AsyncListener | None:
        async with self._session_factory() as session:
            bind = session.get_bind(mapper=self._model)
        self._note_database(bind)
        if not self._listen:
            return None
        backend = self._listening_backend(bind.dialect, asynchronous=True)
        if backend is None:
            return None
        engine = bind if isinstance(bind, AsyncEngine) else AsyncEngine(bind.engine)
        channel = notify_channel(self._table)
        listener = backend.async_listener(engine, channel, self._wake.set, listening=self.listening)
        listener.start()
        return listener

    async def _shut_down(
        self,
        listener: AsyncListener | None,
        slots: list[asyncio.Task[None]],
        supervisor: asyncio.Task[None] | None,
    ) -> None:
        """Give running tasks the grace period, write their outcomes, hand back the rest.

        Once the run is abandoned (see :meth:`_abandon`) nothing here waits for the
        database: the outcomes are left unwritten and the connections are cut."""
        try:
            if listener is not None:
                await listener.stop()
            await self._drive(self._wind_down())
        finally:
            # discarded when abandoned (its state is unknown): SQLAlchemy gives a discarded
            # connection's goodbye a couple of seconds, then cuts it, instead of a reset
            # over the network
            await self._close_claim_connection(discard=self._abandoning)
            await self._stop_tasks(slots, supervisor)
            self._log_stopped()

    async def _stop_tasks(
        self, slots: list[asyncio.Task[None]], supervisor: asyncio.Task[None] | None
    ) -> None:
        """End the slots, the supervisor and the progress writers; a handler that ignores
        its cancellation (or a thread that never returns) is left behind, not awaited.
        An abandoned run cancels them at once and waits for none."""
        self._supervisor_stop = True
        self._supervisor_wake.set()
        for _ in slots:
            self._slots.put_nowait(None)
        tasks: list[asyncio.Task[Any]] = [*slots, *self._progress_writers.values()]
        if supervisor is not None:
            tasks.append(supervisor)
        if not tasks:
            return
        if self._abandoning:
            pending = {task for task in tasks if not task.done()}
        else:
            _, pending = await asyncio.wait(tasks, timeout=1.0)
        if pending:
            self._slots_cancelled = True
            for task in pending:
                task.cancel()
            if self._abandoning:
                return
            _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            logger.warning(
                "worker.abandoned tasks=%d (handlers that ignore cancellation keep running)",
                len(pending),
            )

    @contextlib.contextmanager
    def _signal_handlers(self, install: bool) -> Iterator[None]:
        """SIGINT/SIGTERM ask for a stop while the worker runs (through the loop, so they
        wake it at once); the Python handlers that were there are restored afterwards.
        A signal the host already handles on this loop is left to the host."""
        if not install or threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        # asyncio marks a signal handled by loop.add_signal_handler with a no-op Python
        # handler of its own: such a handler could not be put back, so it is not replaced
        ours = {
            sig: handler
            for sig, handler in previous.items()
            if getattr(handler, "__module__", None) != "asyncio.unix_events"
        }
        for sig in ours:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig, handler in ours.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)

    def _on_signal(self, signum: int) -> None:
        if self._signal_count(signal.Signals(signum).name):
            os._exit(128 + signum)
        self.stop()
