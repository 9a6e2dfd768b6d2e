"""The same scenarios through pgqueuer's own API, when it is installed (``bench`` extra).

pgqueuer keeps its jobs in tables of its own (installed into the benchmark's database by
``Queries.install()``), uses asyncpg, and is measured with its documented settings: the
defaults (``batch_size=10``) and, as its best tuning, two processes with
``batch_size=100``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from baseline import dsn, run_processes

try:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode
except ImportError:  # pragma: no cover - depends on the installed extras
    asyncpg = None

PAYLOAD = b'{"n": 0}'
DEFAULT_BATCH = 10  # QueueManager.run's default batch_size
BEST_BATCH = 100
SETTINGS = f"defaults: batch_size={DEFAULT_BATCH}; best: batch_size={BEST_BATCH}"


def available() -> bool:
    return asyncpg is not None


async def _queries(url: str) -> tuple[Any, Any]:
    connection = await asyncpg.connect(dsn(url))
    return connection, Queries(AsyncpgDriver(connection))


def install(url: str) -> None:
    async def go() -> None:
        connection, queries = await _queries(url)
        await queries.install()
        await connection.close()

    asyncio.run(go())


def reset(url: str) -> None:
    async def go() -> None:
        connection = await asyncpg.connect(dsn(url))
        await connection.execute("TRUNCATE pgqueuer, pgqueuer_log")
        await connection.close()

    asyncio.run(go())


def enqueue_one_by_one(url: str, count: int) -> float:
    async def go() -> float:
        connection, queries = await _queries(url)
        started = time.perf_counter()
        for _ in range(count):
            await queries.enqueue("noop", PAYLOAD)
        elapsed = time.perf_counter() - started
        await connection.close()
        return count / elapsed

    return asyncio.run(go())


def enqueue_bulk(url: str, count: int, batch: int) -> float:
    async def go() -> float:
        connection, queries = await _queries(url)
        started = time.perf_counter()
        for first in range(0, count, batch):
            size = min(batch, count - first)
            await queries.enqueue(["noop"] * size, [PAYLOAD] * size, [0] * size)
        elapsed = time.perf_counter() - started
        await connection.close()
        return count / elapsed

    return asyncio.run(go())


def _drain(url: str, batch_size: int) -> None:
    async def go() -> None:
        connection = await asyncpg.connect(dsn(url))
        manager = QueueManager(Queries(AsyncpgDriver(connection)))

        @manager.entrypoint("noop")
        async def noop(job: Any) -> None:
            """No work."""

        await manager.run(batch_size=batch_size, mode=QueueExecutionMode.drain)
        await connection.close()

    asyncio.run(go())


def drain(url: str, count: int, *, processes: int, batch_size: int) -> float:
    return count / run_processes(_drain, (url, batch_size), processes)


def fill(url: str, count: int) -> None:
    """``count`` queued no-op jobs in emptied tables."""
    reset(url)
    enqueue_bulk(url, count, 1000)


def drain_defaults(url: str, count: int) -> float:
    """Tasks per second, one process with pgqueuer's defaults (``fill`` first)."""
    return drain(url, count, processes=1, batch_size=DEFAULT_BATCH)


def drain_best(url: str, count: int, processes: int) -> float:
    """Tasks per second, ``processes`` processes with its best tuning (``fill`` first)."""
    return drain(url, count, processes=processes, batch_size=BEST_BATCH)


def wake_latencies(url: str, samples: int, spacing: float) -> list[float]:
    """Seconds from each enqueue (autocommit) to its entrypoint starting, idle worker.

    pgqueuer offers no readiness signal, so one warm-up job goes first: once its
    entrypoint has run, the worker is idle in ``LISTEN`` and the measured jobs follow.
    """
    reset(url)
    started: dict[int, float] = {}
    warmed_up = threading.Event()
    all_started = threading.Event()
    loop = asyncio.new_event_loop()
    manager: Any = None

    async def work() -> None:
        nonlocal manager
        connection = await asyncpg.connect(dsn(url))
        manager = QueueManager(Queries(AsyncpgDriver(connection)))

        @manager.entrypoint("noop")
        async def noop(job: Any) -> None:
            started[int(job.id)] = time.perf_counter()
            warmed_up.set()
            if len(started) == samples + 1:
                all_started.set()

        await manager.run()
        await connection.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(work(),), daemon=True)
    thread.start()

    async def produce() -> dict[int, float]:
        connection, queries = await _queries(url)
        await queries.enqueue("noop", PAYLOAD)  # the warm-up job
        if not await asyncio.to_thread(warmed_up.wait, 30):
            raise RuntimeError("the pgqueuer worker did not start")
        committed: dict[int, float] = {}
        for _ in range(samples):
            [job_id] = await queries.enqueue("noop", PAYLOAD)
            committed[int(job_id)] = time.perf_counter()
            await asyncio.sleep(spacing)  # the arrival schedule
        await connection.close()
        return committed

    committed = asyncio.run(produce())
    finished = all_started.wait(30)
    loop.call_soon_threadsafe(manager.shutdown.set)
    thread.join(30)
    if not finished:
        raise RuntimeError(f"pgqueuer started {len(started) - 1} of {samples} jobs")
    return [started[job_id] - at for job_id, at in committed.items()]
