"""AsyncWorker's own behaviour; the shared behaviour runs against both twins in
conformance/worker/, test_worker_resilience.py and test_worker_processes.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.pool import NullPool
from twins import async_url

from sqlalchemy_taskqueue import (
    AsyncTaskRepository,
    AsyncWorker,
    TaskContext,
    TaskRepository,
    TaskStatus,
    Worker,
)
from sqlalchemy_taskqueue.worker._asyncio import DaemonThreadPool

Factory = sessionmaker[Session]
T = TypeVar("T")


def enqueue_many(factory: Factory, model: type[Any], task_type: str, count: int) -> list[int]:
    with factory() as session:
        ids = TaskRepository(session, model).enqueue_many(
            task_type, [{"n": n} for n in range(count)]
        )
        session.commit()
    return ids


def statuses(factory: Factory, model: type[Any], ids: list[int]) -> list[Any]:
    with factory() as session:
        repo = TaskRepository(session, model)
        return [repo.get_task(task_id).status for task_id in ids]  # type: ignore[union-attr]


@pytest.fixture
def run_async(database_url: str) -> Callable[[Callable[[Any], Awaitable[T]]], T]:
    """``run_async(body)``: ``await body(async_sessionmaker)`` on a new event loop."""

    def run(body: Callable[[Any], Awaitable[T]]) -> T:
        async def main() -> T:
            engine = create_async_engine(async_url(database_url), pool_size=10)
            try:
                return await body(async_sessionmaker(engine))
            finally:
                await engine.dispose()

        return asyncio.run(main())

    return run


@asynccontextmanager
async def running(worker: AsyncWorker[Any]) -> AsyncIterator[asyncio.Task[None]]:
    run = asyncio.ensure_future(worker.run())
    try:
        yield run
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)


def test_the_twins_take_the_same_options_and_offer_the_same_surface() -> None:
    assert inspect.signature(Worker) == inspect.signature(AsyncWorker)
    names = {n for n in dir(Worker) if not n.startswith("_")}
    assert names == {n for n in dir(AsyncWorker) if not n.startswith("_")}
    assert inspect.signature(Worker.run) == inspect.signature(AsyncWorker.run)
    assert inspect.iscoroutinefunction(AsyncWorker.run)
    assert not inspect.iscoroutinefunction(AsyncWorker.stop)


def test_async_handlers_run_concurrently_on_one_loop(
    run_async: Any, session_factory: Factory, clean_table: type[Any]
) -> None:
    ids = enqueue_many(session_factory, clean_table, "fan", 12)
    threads: set[int] = set()

    async def body(factory: Any) -> None:
        all_in = asyncio.Event()
        inside = 0

        async def fan(task: Any, ctx: TaskContext) -> int:
            nonlocal inside
            threads.add(threading.get_ident())
            inside += 1
            if inside == len(ids):
                all_in.set()
            await asyncio.wait_for(all_in.wait(), 10)  # every handler is in at once
            return int(ctx.payload["n"])

        worker = AsyncWorker(factory, clean_table, {"fan": fan}, concurrency=12, prefetch=0)
        await worker.run(until_empty=True)
        assert worker.stats.completed == len(ids)

    run_async(body)
    assert threads == {threading.get_ident()}  # all on the loop's thread
    assert set(statuses(session_factory, clean_table, ids)) == {TaskStatus.COMPLETED}


def test_plain_functions_run_on_threads_without_blocking_async_handlers(
    run_async: Any, session_factory: Factory, clean_table: type[Any]
) -> None:
    [blocking_id] = enqueue_many(session_factory, clean_table, "blocking", 1)
    quick_ids = enqueue_many(session_factory, clean_table, "quick", 5)
    release = threading.Event()
    loop_threads: set[int] = set()
    blocking_threads: set[int] = set()

    def blocking(task: Any, ctx: TaskContext) -> str:
        blocking_threads.add(threading.get_ident())
        assert release.wait(10)  # blocks its thread, not the loop
        return "released"

    async def quick(task: Any, ctx: TaskContext) -> None:
        loop_threads.add(threading.get_ident())
        if ctx.payload["n"] == 4:
            release.set()  # reached while the blocking handler still holds its thread

    async def body(factory: Any) -> None:
        worker = AsyncWorker(
            factory, clean_table, {"blocking": blocking, "quick": quick}, concurrency=2
        )
        await worker.run(until_empty=True)

    run_async(body)
    assert blocking_threads and loop_threads and not blocking_threads & loop_threads
    assert set(statuses(session_factory, clean_table, [blocking_id, *quick_ids])) == {
        TaskStatus.COMPLETED
    }


def test_an_async_handler_past_its_timeout_is_cancelled_and_its_slot_freed(
    run_async: Any, session_factory: Factory, clean_table: type[Any]
) -> None:
    [hung] = enqueue_many(session_factory, clean_table, "hangs", 1)
    cancelled = threading.Event()

    async def hangs(task: Any, ctx: TaskContext) -> None:
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def body(factory: Any) -> None:
        ran_after = asyncio.Event()

        async def after(task: Any, ctx: TaskContext) -> str:
            ran_after.set()
            return "ran"

        worker = AsyncWorker(
            factory,
            clean_table,
            {"hangs": hangs, "after": after},
            concurrency=1,
            timeouts={"hangs": 0.3},
            poll_interval=0.05,
        )
        async with running(worker):
            assert await asyncio.to_thread(cancelled.wait, 10)
            # the one slot is free again: a new task runs at once
            await asyncio.to_thread(enqueue_many, session_factory, clean_table, "after", 1)
            await asyncio.wait_for(ran_after.wait(), 10)
        assert (worker.stats.timed_out, worker.stats.completed) == (1, 1)

    run_async(body)
    with session_factory() as session:
        task = TaskRepository(session, clean_table).get_task(hung)
        assert task is not None
        assert (task.status, task.retry_count) == (TaskStatus.PENDING, 1)
        assert "exceeded its timeout" in (task.error_message or "")


def test_progress_from_an_async_handler_is_written_without_blocking(
    run_async: Any, session_factory: Factory, clean_table: type[Any]
) -> None:
    [task_id] = enqueue_many(session_factory, clean_table, "report", 1)
    seen: list[int] = []

    async def report(task: Any, ctx: TaskContext) -> None:
        for percent in (10, 20, 30, 40, 50, 60, 70, 80, 90, 95):
            ctx.update_progress(percent)  # queued; returns at once
        while True:  # the last value lands (progress_interval=0: every value is written)
            progress = await asyncio.to_thread(current_progress)
            seen.append(progress)
            if progress == 95:
                return

    def current_progress() -> int:
        with session_factory() as session:
            task = TaskRepository(session, clean_table).get_task(task_id)
            return int(task.progress)  # type: ignore[union-attr]

    async def body(factory: Any) -> None:
        worker = AsyncWorker(factory, clean_table, {"report": report}, progress_interval=0)
        await asyncio.wait_for(worker.run(until_empty=True), 30)

    run_async(body)
    assert seen[-1] == 95 and seen == sorted(seen)  # written in order


def test_an_async_scoped_session_factory_leaves_no_session_behind(
    database_url: str, session_factory: Factory, clean_table: type[Any]
) -> None:
    """Given an ``async_scoped_session`` scoped to the asyncio task (as SQLAlchemy
    documents it), the worker makes sessions of its own from the scope's factory: each of
    its transactions runs in a task of its own, so sessions taken through the proxy would
    each stay in the registry, one per transaction, for as long as the worker lives."""
    ids = enqueue_many(session_factory, clean_table, "job", 3)
    made: weakref.WeakSet[AsyncSession] = weakref.WeakSet()
    count: list[int] = []

    class Tracked(AsyncSession):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            made.add(self)
            count.append(1)

    async def job(task: Any, ctx: TaskContext) -> str:
        ctx.update_progress(50)
        return "ok"

    async def main() -> int:
        engine = create_async_engine(async_url(database_url))
        scoped = async_scoped_session(
            async_sessionmaker(engine, class_=Tracked), scopefunc=asyncio.current_task
        )
        try:
            worker = AsyncWorker(scoped, clean_table, {"job": job}, listen=False)
            await asyncio.wait_for(worker.run(until_empty=True), 30)
            assert count, "the worker made its sessions from the scope's factory"
            gc.collect()
            return len(made)
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == 0
    assert statuses(session_factory, clean_table, ids) == [TaskStatus.COMPLETED] * 3


def test_cancelling_run_shuts_down_gracefully(
    run_async: Any, session_factory: Factory, clean_table: type[Any]
) -> None:
    [task_id] = enqueue_many(session_factory, clean_table, "slow", 1)
    started = threading.Event()

    async def slow(task: Any, ctx: TaskContext) -> str:
        started.set()
        while not ctx.should_stop():
            await asyncio.sleep(0.01)  # simulated work, checking for a stop request
        return "stopped cleanly"

    async def body(factory: Any) -> None:
        worker = AsyncWorker(factory, clean_table, {"slow": slow}, shutdown_grace=10)
        run = asyncio.ensure_future(worker.run())
        assert await asyncio.to_thread(started.wait, 10)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    run_async(body)
    with session_factory() as session:
        task = TaskRepository(session, clean_table).get_task(task_id)
        assert task is not None
        assert (task.status, task.result) == (TaskStatus.COMPLETED, "stopped cleanly")


def test_async_handlers_still_running_after_the_grace_period_are_cancelled(
    run_async: Any, session_factory: Factory, clean_table: type[Any]
) -> None:
    [task_id] = enqueue_many(session_factory, clean_table, "stubborn", 1)
    events: list[str] = []
    started = threading.Event()

    async def stubborn(task: Any, ctx: TaskContext) -> None:
        events.append("started")
        started.set()
        try:
            await asyncio.sleep(3600)  # ignores stop requests
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def body(factory: Any) -> None:
        worker = AsyncWorker(factory, clean_table, {"stubborn": stubborn}, shutdown_grace=0.2)
        async with running(worker):
            assert await asyncio.to_thread(started.wait, 10)
        assert worker.stats.released == 1

    began = time.monotonic()
    run_async(body)
    assert time.monotonic() - began < 10
    assert events == ["started", "cancelled"]
    with session_factory() as session:
        task = TaskRepository(session, clean_table).get_task(task_id)
        assert task is not None
        assert (task.status, task.retry_count) == (TaskStatus.PENDING, 0)


def test_the_wrong_kind_of_session_factory_or_handler_is_refused(
    session_factory: Factory, clean_table: type[Any]
) -> None:
    async def handler(task: Any, ctx: TaskContext) -> None:
        return None

    with pytest.raises(TypeError, match="async_sessionmaker"):
        AsyncWorker(session_factory, clean_table, {"job": handler})
    with pytest.raises(TypeError, match="AsyncWorker"):
        Worker(async_sessionmaker(), clean_table, {"job": lambda task, ctx: None})
    with pytest.raises(TypeError, match="async function"):
        Worker(session_factory, clean_table, {"job": handler})


def test_a_scoped_session_of_the_wrong_kind_is_refused(
    session_factory: Factory, clean_table: type[Any]
) -> None:
    """A scoped session stands for its factory, so one of the other kind is refused up
    front as that factory is, instead of a worker whose every turn fails."""
    with pytest.raises(TypeError, match="async_sessionmaker"):
        AsyncWorker(scoped_session(session_factory), clean_table, {"job": lambda t, c: None})
    scoped = async_scoped_session(async_sessionmaker(), scopefunc=threading.get_ident)
    with pytest.raises(TypeError, match="AsyncWorker"):
        Worker(scoped, clean_table, {"job": lambda task, ctx: None})


def test_the_daemon_thread_pool_reports_results_and_errors() -> None:
    pool = DaemonThreadPool(2, "test-pool")
    try:
        assert pool.submit(sum, [1, 2, 3]).result(5) == 6
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(5)
        assert all(
            thread.daemon for thread in threading.enumerate() if thread.name.startswith("test-pool")
        )
    finally:
        pool.shutdown()
    assert not any(thread.name.startswith("test-pool") for thread in threading.enumerate())


def task_row(factory: Factory, model: type[Any], task_id: int) -> Any:
    with factory() as session:
        task = TaskRepository(session, model).get_task(task_id)
        assert task is not None
        session.expunge(task)
    return task


def test_an_async_handler_raising_before_its_first_await_fails_its_attempt(
    run_async: Any, session_factory: Factory, clean_table: type[Any]
) -> None:
    [task_id] = enqueue_many(session_factory, clean_table, "odd", 1)

    async def raises_at_once(task: Any, ctx: TaskContext) -> None:
        raise TypeError("refused before any await")

    async def body(factory: Any) -> None:
        worker = AsyncWorker(factory, clean_table, {"odd": raises_at_once})
        await worker.run(until_empty=True)
        assert worker.stats.retried == 1

    run_async(body)
    task = task_row(session_factory, clean_table, task_id)
    assert (task.status, task.retry_count) == (TaskStatus.PENDING, 1)
    assert (task.error_message or "").startswith("TypeError: refused before any await")


def test_a_handler_ignoring_its_cancellation_does_not_hang_shutdown(
    run_async: Any, session_factory: Factory, clean_table: type[Any]
) -> None:
    [task_id] = enqueue_many(session_factory, clean_table, "stubborn", 1)
    started, let_go = threading.Event(), asyncio.Event()

    async def stubborn(task: Any, ctx: TaskContext) -> None:
        started.set()
        while not let_go.is_set():  # swallows every cancellation until the test is done
            with contextlib.suppress(asyncio.CancelledError):
                await let_go.wait()

    async def body(factory: Any) -> None:
        worker = AsyncWorker(factory, clean_table, {"stubborn": stubborn}, shutdown_grace=0.2)
        run = asyncio.ensure_future(worker.run())
        assert await asyncio.to_thread(started.wait, 10)
        worker.stop()
        try:
            await asyncio.wait_for(run, 15)  # returns: the handler is abandoned, not awaited
        finally:
            let_go.set()  # so that the test's own event loop can close
        assert worker.stats.released == 1

    run_async(body)
    task = task_row(session_factory, clean_table, task_id)
    assert (task.status, task.retry_count) == (TaskStatus.PENDING, 0)


def test_run_cancelled_while_an_outcome_waits_for_the_write_lock_loses_nothing(
    run_async: Any, session_factory: Factory, clean_table: type[Any]
) -> None:
    """White box: a lease renewal holds the write lock when ``run()`` is cancelled with
    a finished task's outcome in hand; it is written during the graceful stop."""
    [task_id] = enqueue_many(session_factory, clean_table, "job", 1)
    holder: dict[str, Any] = {}

    async def job(task: Any, ctx: TaskContext) -> str:
        worker, run = holder["worker"], holder["run"]
        await worker._write_lock.acquire()  # stands for a lease renewal in flight
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, run.cancel)  # e.g. Ctrl-C under asyncio.run
        loop.call_later(0.6, worker._write_lock.release)  # the renewal finishes
        return "done"

    async def body(factory: Any) -> None:
        worker = holder["worker"] = AsyncWorker(
            factory, clean_table, {"job": job}, poll_interval=0.05, lease_duration=30
        )
        run = holder["run"] = asyncio.ensure_future(worker.run())
        with pytest.raises(asyncio.CancelledError):
            await run

    run_async(body)
    task = task_row(session_factory, clean_table, task_id)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "done")


def test_the_app_failing_around_a_running_worker_hands_its_tasks_back(
    database_url: str, session_factory: Factory, clean_table: type[Any]
) -> None:
    """``asyncio.run`` cancels every task at once when the app's main coroutine fails:
    the running task goes back to ``pending`` with no retry used."""
    [task_id] = enqueue_many(session_factory, clean_table, "job", 1)
    started = threading.Event()
    running: list[asyncio.Task[None]] = []

    async def job(task: Any, ctx: TaskContext) -> str:
        started.set()
        await asyncio.sleep(3600)  # still running when the app fails
        return "unreachable"

    async def main() -> None:
        # no pool: each connection closes as the worker's graceful stop returns it
        engine = create_async_engine(async_url(database_url), poolclass=NullPool)
        worker = AsyncWorker(async_sessionmaker(engine), clean_table, {"job": job})
        running.append(asyncio.ensure_future(worker.run(install_signal_handlers=False)))
        assert await asyncio.to_thread(started.wait, 10)
        raise RuntimeError("the app fails")  # asyncio.run now cancels every task

    with pytest.raises(RuntimeError, match="the app fails"):
        asyncio.run(main())
    task = task_row(session_factory, clean_table, task_id)
    if sys.version_info >= (3, 11):
        assert (task.status, task.retry_count, task.error_message) == (TaskStatus.PENDING, 0, None)
    else:  # 3.10 cannot always tell a slot's cancellation from its handler's: whichever
        # task asyncio cancels first decides whether a retry is used
        assert task.status is TaskStatus.PENDING and task.retry_count in (0, 1)


def test_stop_from_a_signal_handler_on_the_loop_thread_wakes_the_worker_at_once(
    run_async: Any, clean_table: type[Any]
) -> None:
    async def body(factory: Any) -> None:
        worker = AsyncWorker(
            factory, clean_table, {"job": lambda task, ctx: None}, poll_interval=60
        )
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: worker.stop())
        try:
            run = asyncio.ensure_future(worker.run(install_signal_handlers=False))
            await asyncio.to_thread(worker.idle.wait, 10)
            os.kill(os.getpid(), signal.SIGUSR1)  # a host's own handler calls stop()
            await asyncio.wait_for(run, 5)  # not at the next 60 s poll
        finally:
            signal.signal(signal.SIGUSR1, previous)

    run_async(body)


def test_a_host_loop_signal_handler_is_left_in_place(
    run_async: Any, clean_table: type[Any]
) -> None:
    async def body(factory: Any) -> None:
        loop = asyncio.get_running_loop()
        heard = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR2, heard.set)  # the host's, e.g. aiohttp's
        try:
            worker = AsyncWorker(factory, clean_table, {"job": lambda task, ctx: None})
            await worker.run(until_empty=True)  # installs its own where it may
            os.kill(os.getpid(), signal.SIGUSR2)
            await asyncio.wait_for(heard.wait(), 5)  # the host still hears its signal
        finally:
            loop.remove_signal_handler(signal.SIGUSR2)

    run_async(body)


def test_progress_writes_never_block_the_loop(
    run_async: Any, database_url: str, session_factory: Factory, clean_table: type[Any]
) -> None:
    """The task's row is locked by another transaction, so every progress write waits:
    ``update_progress`` still returns at once and the loop keeps running."""
    [task_id] = enqueue_many(session_factory, clean_table, "report", 1)
    row_locked, release_row, returned_in = threading.Event(), threading.Event(), []

    def lock_the_row() -> None:
        with session_factory() as session:
            session.execute(
                text(f"SELECT 1 FROM {clean_table.__tablename__} WHERE id = :id FOR UPDATE"),
                {"id": task_id},
            )
            row_locked.set()
            assert release_row.wait(20)
            session.rollback()

    async def report(task: Any, ctx: TaskContext) -> str:
        locker = threading.Thread(target=lock_the_row)
        locker.start()
        assert await asyncio.to_thread(row_locked.wait, 10)
        ticks = 0
        began = time.perf_counter()
        for percent in range(1, 101):
            ctx.update_progress(percent)
        returned_in.append(time.perf_counter() - began)
        while ticks < 20:  # the loop runs on while the writes wait for the row lock
            await asyncio.sleep(0.005)
            ticks += 1
        release_row.set()
        await asyncio.to_thread(locker.join, 20)
        return "reported"

    async def body(factory: Any) -> None:
        worker = AsyncWorker(factory, clean_table, {"report": report}, progress_interval=0)
        await asyncio.wait_for(worker.run(until_empty=True), 30)

    run_async(body)
    assert returned_in and returned_in[0] < 0.5  # 100 reports, none waited for the database
    task = task_row(session_factory, clean_table, task_id)
    assert (task.status, task.progress) == (TaskStatus.COMPLETED, 100)


def test_cancelling_a_running_task_cancels_its_async_def_handler(
    run_async: Any, session_factory: Factory, clean_table: type[Any]
) -> None:
    [task_id] = enqueue_many(session_factory, clean_table, "forever", 1)
    started = threading.Event()

    async def body(factory: Any) -> None:
        cancelled = asyncio.Event()

        async def forever(task: Any, ctx: TaskContext) -> None:
            started.set()
            try:
                await asyncio.sleep(3600)  # never checks should_stop: only a cancel stops it
            except asyncio.CancelledError:
                cancelled.set()
                raise

        worker = AsyncWorker(factory, clean_table, {"forever": forever}, heartbeat_interval=0.2)
        async with running(worker):
            assert await asyncio.to_thread(started.wait, 10)
            async with factory() as session:
                repo = AsyncTaskRepository(session, clean_table)
                assert await repo.cancel_task(task_id) is True
                await session.commit()
            await asyncio.wait_for(cancelled.wait(), 10)  # at the next heartbeat
        assert worker.stats.lost_leases == 1 and worker.stats.failed == 0

    run_async(body)
    assert statuses(session_factory, clean_table, [task_id]) == [TaskStatus.CANCELLED]
