"""The same scenarios through sqlalchemy-taskqueue's public API."""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from datetime import timedelta
from typing import Any

from baseline import run_processes
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from sqlalchemy_taskqueue import HandlerRegistry, TaskContext, TaskMixin, TaskRepository, Worker
from sqlalchemy_taskqueue._concurrency import key_slots_table
from sqlalchemy_taskqueue.backends.postgresql import _statements as statements


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    __tablename__ = "bench_tasks"


def noop(task: Any, ctx: TaskContext) -> None:
    """The benchmark's handler: no work, so the queue's own cost is what is measured."""


def reset(engine: Engine) -> None:
    """Empty the queue: its tasks, and the slots of concurrency keys it used (a queue
    that has used keys claims through them from then on)."""
    slots = key_slots_table(Task.__table__).name
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {Task.__tablename__}, {slots} RESTART IDENTITY"))


def fill(engine: Engine, count: int, *, keys: int = 0) -> None:
    """``count`` pending no-op tasks in an emptied table, analysed as autovacuum would;
    with ``keys``, spread over that many concurrency keys of limit 1, in runs of 10
    tasks of one key (as a queue fills when each key's work arrives in small batches)."""
    reset(engine)
    with Session(engine) as session:
        repo = TaskRepository(session, Task)
        chunk = 10 if keys else 10_000
        for number, first in enumerate(range(0, count, chunk)):
            payloads = [{"n": n} for n in range(first, min(first + chunk, count))]
            if keys:
                repo.enqueue_many("noop", payloads, concurrency_key=f"key-{number % keys}")
            else:
                repo.enqueue_many("noop", payloads)
        session.commit()
    analyse(engine)


def analyse(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"VACUUM ANALYZE {Task.__tablename__}"))


def enqueue_one_by_one(engine: Engine, count: int) -> float:
    """Tasks per second, ``TaskRepository.enqueue`` in an ORM session, a commit each."""
    factory = sessionmaker(engine)
    started = time.perf_counter()
    for n in range(count):
        with factory() as session:
            TaskRepository(session, Task).enqueue("noop", {"n": n})
            session.commit()
    return count / (time.perf_counter() - started)


def enqueue_sqlalchemy_alone(engine: Engine, count: int) -> float:
    """Tasks per second for the hand-written loop's ``INSERT`` sent as bare SQL through a
    new ORM ``Session`` per transaction, a commit each: what SQLAlchemy itself costs, with
    no queue code at all (the floor under :func:`enqueue_one_by_one`)."""
    factory = sessionmaker(engine)
    insert = text(
        f"INSERT INTO {Task.__tablename__} (type, payload) "
        "VALUES (:type, CAST(:payload AS JSONB)) RETURNING id"
    )
    started = time.perf_counter()
    for n in range(count):
        with factory() as session:
            session.execute(insert, {"type": "noop", "payload": json.dumps({"n": n})}).scalar_one()
            session.commit()
    return count / (time.perf_counter() - started)


def enqueue_session_alone(engine: Engine, count: int) -> float:
    """Tasks per second for a new ORM ``Session`` per transaction that hands the
    hand-written loop's ``INSERT`` straight to psycopg2 on the Session's own connection, a
    commit each: the Session's bookkeeping (begin, connection checkout, commit, close)
    with no SQLAlchemy statement execution at all, the ceiling for any code that enqueues
    in an application's ``Session``."""
    factory = sessionmaker(engine)
    insert = f"INSERT INTO {Task.__tablename__} (type, payload) VALUES (%s, %s) RETURNING id"
    started = time.perf_counter()
    for n in range(count):
        with factory() as session:
            cursor = session.connection().connection.driver_connection.cursor()
            cursor.execute(insert, ("noop", json.dumps({"n": n})))
            cursor.fetchone()
            session.commit()
    return count / (time.perf_counter() - started)


def enqueue_bulk(engine: Engine, count: int, batch: int) -> float:
    """Tasks per second, ``enqueue_many`` of ``batch`` payloads and a commit each."""
    factory = sessionmaker(engine)
    started = time.perf_counter()
    for first in range(0, count, batch):
        with factory() as session:
            TaskRepository(session, Task).enqueue_many(
                "noop", [{"n": n} for n in range(first, min(first + batch, count))]
            )
            session.commit()
    return count / (time.perf_counter() - started)


def _work_until_empty(url: str, options: dict[str, Any], scheduled: bool) -> None:
    logging.basicConfig(level=logging.WARNING)  # the figures, not every worker's start and stop
    engine = create_engine(url, pool_size=options.get("concurrency", 4) + 4)
    registry = HandlerRegistry(Task)
    registry.add("noop", noop)
    if scheduled:  # fired by the worker as it drains: one more no-op task each second
        registry.schedule("noop", name="bench_tick", every="1s")
    Worker(sessionmaker(engine), Task, registry, **options).run(until_empty=True)
    engine.dispose()


def drain(
    url: str, count: int, *, processes: int, scheduled: bool = False, **options: Any
) -> float:
    """Tasks per second for ``processes`` worker processes (``Worker(**options)``), each
    carrying an every-second schedule when ``scheduled``."""
    return count / run_processes(_work_until_empty, (url, options, scheduled), processes)


def rate_limit(engine: Engine, limit: int | None) -> None:
    """Limit the no-op type to ``limit`` claims a second (``None``: lift the limit)."""
    with Session(engine) as session, session.begin():
        repo = TaskRepository(session, Task)
        if limit is None:
            repo.clear_rate_limit("noop")
        else:
            repo.set_rate_limit("noop", limit, per=timedelta(seconds=1))


def wake_latencies(engine: Engine, samples: int, spacing: float) -> list[float]:
    """Seconds from each enqueuing commit to its handler starting, with an idle worker
    (default settings: LISTEN/NOTIFY) and tasks enqueued ``spacing`` seconds apart.

    One warm-up task goes first, unmeasured, as for the other queues: the measured tasks
    find the worker idle after it has run one task, not starting up."""
    reset(engine)
    factory = sessionmaker(engine)
    started: dict[int, float] = {}
    warmed_up = threading.Event()
    all_started = threading.Event()

    def record(task: Any, ctx: TaskContext) -> None:
        if task.payload.get("warm_up"):
            warmed_up.set()
            return
        started[task.id] = time.perf_counter()
        if len(started) == samples:
            all_started.set()

    worker = Worker(factory, Task, {"noop": record})
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.listening.wait(10), "the worker did not start listening"
    with factory() as session:
        TaskRepository(session, Task).enqueue("noop", {"warm_up": True})
        session.commit()
    assert warmed_up.wait(10), "the warm-up task did not start"
    assert worker.idle.wait(10), "the worker did not go idle after the warm-up task"
    committed: dict[int, float] = {}
    for n in range(samples):
        with factory() as session:
            task_id = TaskRepository(session, Task).enqueue("noop", {"n": n})
            session.commit()
            committed[task_id] = time.perf_counter()
        time.sleep(spacing)  # the arrival schedule: one task every ``spacing`` seconds
    assert all_started.wait(30), "not every task started"
    worker.stop()
    thread.join()
    return [started[task_id] - at for task_id, at in committed.items()]


def claim_latency(engine: Engine, samples: int) -> float:
    """Median seconds for one ``dequeue`` and its commit."""
    factory = sessionmaker(engine)
    timings = []
    for _ in range(samples):
        with factory() as session:
            began = time.perf_counter()
            claimed = TaskRepository(session, Task).dequeue("noop")
            session.commit()
            timings.append(time.perf_counter() - began)
        assert claimed is not None, "the claim found nothing"
    return statistics.median(timings)


def add_finished_rows(engine: Engine, count: int) -> None:
    """``count`` completed tasks, as months of history would leave them."""
    with engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT INTO {Task.__tablename__} "
                "(type, payload, status, progress, started_at, completed_at) "
                "SELECT 'noop', jsonb_build_object('n', n), 'completed', 100, "
                "now() - interval '1 day', now() - interval '1 day' "
                "FROM generate_series(1, :count) AS n"
            ),
            {"count": count},
        )
    analyse(engine)


def claim_plan(engine: Engine, *, keyed: bool = False) -> str:
    """``EXPLAIN ANALYZE`` of the claim statement (``keyed``: of a queue that uses
    concurrency keys, claiming 4), rolled back."""
    stmt = statements.claim_statement(Task.__table__, type_filter="one", keyed=keyed)
    compiled = stmt.compile(dialect=engine.dialect)
    params = {
        **compiled.params,
        "task_type": "noop",
        "limit": 4 if keyed else 1,
        "lease": timedelta(seconds=60),
        "owner": "bench",
        "token": "00000000-0000-0000-0000-000000000000",
    }
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {compiled}", params
        ).all()
        connection.rollback()
    return "\n".join(row[0] for row in rows)


def progress_updates(engine: Engine, tasks: int, updates: int) -> float:
    """Progress writes per second from ``tasks`` running handlers (no throttle)."""
    reset(engine)
    factory = sessionmaker(engine)
    elapsed: list[float] = []
    lock = threading.Lock()

    def report(task: Any, ctx: TaskContext) -> None:
        began = time.perf_counter()
        for n in range(updates):
            ctx.update_progress(n % 100)
        with lock:
            elapsed.append(time.perf_counter() - began)

    with factory() as session:
        TaskRepository(session, Task).enqueue_many("noop", [{} for _ in range(tasks)])
        session.commit()
    worker = Worker(factory, Task, {"noop": report}, concurrency=tasks, progress_interval=0)
    worker.run(until_empty=True)
    return tasks * updates / max(elapsed)
