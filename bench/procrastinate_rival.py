"""The same scenarios through procrastinate's own API, when it is installed (``bench`` extra).

procrastinate keeps its jobs in tables of its own (installed into the benchmark's database
with ``App.schema_manager.apply_schema_async()``) and uses psycopg 3 through
``PsycopgConnector``.  Jobs are deferred with ``App.configure_task(...).defer_async`` and
``batch_defer_async``, and drained with ``App.run_worker_async(wait=False)``, which stops
once the queue is empty.  The task is a no-op ``async def`` (procrastinate runs sync tasks
in a thread; its docs recommend async tasks for concurrency).  Settings, from its docs:
the defaults (one process, ``concurrency=1``, the connector's default pool) and, as its
best tuning, several processes each with ``concurrency=N`` and a pool of ``N + 1``
connections ("the shorter your average job execution time, the more your pool will need
to contain as many connections as your concurrency (plus one)").
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from baseline import connect, dsn, run_processes

try:
    from procrastinate import App, PsycopgConnector
except ImportError:  # pragma: no cover - depends on the installed extras
    App = None

TASK = "noop"
# Two processes with concurrency 1, 2, 4, 8 and 16 on the 2-core development machine:
# 2 and 4 led (about 870-940 tasks/s on 8,000 jobs), 8 and 16 were a little slower.
BEST_CONCURRENCY = 4
SETTINGS = (
    "defaults: concurrency=1, default pool; "
    f"best: concurrency={BEST_CONCURRENCY}, pool of {BEST_CONCURRENCY + 1} per process"
)
# The channel a worker with no ``queues`` listens on (procrastinate.manager).
CHANNEL = "procrastinate_any_queue_v1"


def available() -> bool:
    return App is not None


def _app(url: str, **pool: Any) -> Any:
    """An ``App`` on the benchmark database; ``pool``: psycopg_pool arguments."""
    return App(connector=PsycopgConnector(conninfo=dsn(url), **pool))


def install(url: str) -> None:
    async def go() -> None:
        async with _app(url).open_async() as app:
            await app.schema_manager.apply_schema_async()

    asyncio.run(go())


def reset(url: str) -> None:
    connection = connect(url)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers, "
            "procrastinate_periodic_defers"
        )
    connection.commit()
    connection.close()


def _analyse(url: str) -> None:
    connection = connect(url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE procrastinate_jobs")
    connection.close()


def enqueue_one_by_one(url: str, count: int) -> float:
    """Tasks per second, one ``defer_async`` (its own transaction) each."""

    async def go() -> float:
        async with _app(url).open_async() as app:
            deferrer = app.configure_task(TASK)
            started = time.perf_counter()
            for n in range(count):
                await deferrer.defer_async(n=n)
            return count / (time.perf_counter() - started)

    return asyncio.run(go())


async def _batch_defer(app: Any, count: int, batch: int) -> None:
    deferrer = app.configure_task(TASK)
    for first in range(0, count, batch):
        await deferrer.batch_defer_async(
            *({"n": n} for n in range(first, min(first + batch, count)))
        )


def enqueue_bulk(url: str, count: int, batch: int) -> float:
    """Tasks per second, one ``batch_defer_async`` of ``batch`` jobs each."""

    async def go() -> float:
        async with _app(url).open_async() as app:
            started = time.perf_counter()
            await _batch_defer(app, count, batch)
            return count / (time.perf_counter() - started)

    return asyncio.run(go())


def fill(url: str, count: int) -> None:
    """``count`` waiting no-op jobs in emptied tables, analysed as autovacuum would."""
    reset(url)

    async def go() -> None:
        async with _app(url).open_async() as app:
            await _batch_defer(app, count, 1000)

    asyncio.run(go())
    _analyse(url)


def _work_until_empty(url: str, concurrency: int, pool_size: int | None) -> None:
    pool = {} if pool_size is None else {"min_size": pool_size, "max_size": pool_size}

    async def go() -> None:
        app = _app(url, **pool)

        @app.task(name=TASK)
        async def noop(n: int) -> None:
            """No work."""

        async with app.open_async():
            await app.run_worker_async(wait=False, concurrency=concurrency)

    asyncio.run(go())


def _drain(url: str, count: int, processes: int, concurrency: int, pool_size: int | None) -> float:
    elapsed = run_processes(_work_until_empty, (url, concurrency, pool_size), processes)
    done = _count_succeeded(url)
    if done != count:
        raise RuntimeError(f"procrastinate finished {done} of {count} jobs")
    return count / elapsed


def drain_defaults(url: str, count: int) -> float:
    """Tasks per second, one worker with procrastinate's defaults (``fill`` first)."""
    return _drain(url, count, 1, 1, None)


def drain_best(url: str, count: int, processes: int) -> float:
    """Tasks per second, ``processes`` workers with ``concurrency=BEST_CONCURRENCY`` and a
    pool of ``BEST_CONCURRENCY + 1`` connections each (``fill`` first)."""
    return _drain(url, count, processes, BEST_CONCURRENCY, BEST_CONCURRENCY + 1)


def _scalar(url: str, query: str) -> Any:
    """The one value ``query`` returns, on a connection of its own."""
    connection = connect(url)
    with connection.cursor() as cursor:
        cursor.execute(query)
        [value] = cursor.fetchone()
    connection.close()
    return value


def _count_succeeded(url: str) -> int:
    return int(_scalar(url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"))


def _server_time(url: str) -> Any:
    return _scalar(url, "SELECT clock_timestamp()")


def _wait_for_listener(url: str, since: Any, timeout: float) -> None:
    """Wait until a session of this database opened after ``since`` listens on ``CHANNEL``.

    procrastinate offers no readiness signal, but its worker listens on a connection of its
    own whose last statement stays ``LISTEN`` (idle, autocommit) until the first
    notification or 30 s of silence, so ``pg_stat_activity`` shows when it is ready.
    """
    connection = connect(url)
    connection.autocommit = True
    deadline = time.monotonic() + timeout
    try:
        with connection.cursor() as cursor:
            while True:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_start >= %s AND state = 'idle' AND query LIKE %s",
                    (since, f'LISTEN "{CHANNEL}"%'),
                )
                if cursor.fetchone()[0]:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError("the procrastinate worker did not start listening")
                time.sleep(0.005)  # between polls of the database state
    finally:
        connection.close()


def wake_latencies(url: str, samples: int, spacing: float) -> list[float]:
    """Seconds from each ``defer_async`` returning (committed) to its task starting, with an
    idle worker (defaults: LISTEN/NOTIFY, ``concurrency=1``); one warm-up job goes
    first, unmeasured, as for the other queues."""
    reset(url)
    started: dict[int, float] = {}
    warmed_up = threading.Event()
    all_started = threading.Event()
    loop = asyncio.new_event_loop()
    worker: asyncio.Task[None] | None = None

    async def work() -> None:
        nonlocal worker
        app = _app(url)

        @app.task(name=TASK)
        async def record(n: int) -> None:
            if n < 0:  # the warm-up job
                warmed_up.set()
                return
            started[n] = time.perf_counter()
            if len(started) == samples:
                all_started.set()

        async with app.open_async():
            # run as a task so that it can be stopped the documented way: task.cancel()
            worker = asyncio.create_task(app.run_worker_async(install_signal_handlers=False))
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    thread = threading.Thread(target=loop.run_until_complete, args=(work(),), daemon=True)
    since = _server_time(url)
    thread.start()
    _wait_for_listener(url, since, 10)

    async def produce() -> dict[int, float]:
        committed: dict[int, float] = {}
        async with _app(url).open_async() as app:
            deferrer = app.configure_task(TASK)
            await deferrer.defer_async(n=-1)  # the warm-up job, not measured
            if not await asyncio.to_thread(warmed_up.wait, 30):
                raise RuntimeError("the procrastinate worker did not run its warm-up job")
            for n in range(samples):
                await deferrer.defer_async(n=n)
                committed[n] = time.perf_counter()
                await asyncio.sleep(spacing)  # the arrival schedule
        return committed

    committed = asyncio.run(produce())
    finished = all_started.wait(30)
    assert worker is not None
    loop.call_soon_threadsafe(worker.cancel)
    thread.join(30)
    loop.close()
    if not finished:
        raise RuntimeError(f"procrastinate started {len(started)} of {samples} jobs")
    return [started[n] - at for n, at in committed.items()]
