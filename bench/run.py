"""Throughput and latency benchmark: sqlalchemy-taskqueue against the seed's design.

The baseline is the queue of the original Go design ported literally to SQLAlchemy, as
an application would write it from that document: ORM ``session.add`` to enqueue, a
``SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1`` then ``UPDATE`` to dequeue, one
transaction per completion, and worker loops that sleep when the queue is empty.  Both
run in the same process, against the same server, one after the other, and the report
prints the ratio (higher is better for throughput, lower for latency).

Run: ``make bench`` (``TASKQUEUE_DATABASE_URL`` or a local/embedded server), or
``python bench/run.py --tasks 20000 --workers 8``.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, create_engine, select, text, update
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from sqlalchemy_taskqueue import TaskMixin, TaskRepository, TaskStatus, Worker
from sqlalchemy_taskqueue.embedded import DATABASE_URL_ENV, mask_password, resolve_database_url
from sqlalchemy_taskqueue.testing import throwaway_database


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    __tablename__ = "bench_tasks"


# --------------------------------------------------------------------------- baseline


def seed_enqueue(session: Session, task_type: str, payload: Any) -> int:
    task = Task(type=task_type, payload=payload, status=TaskStatus.PENDING)
    session.add(task)
    session.flush()
    return task.id


def seed_dequeue(session: Session, task_type: str) -> Task | None:
    task = session.scalars(
        select(Task)
        .where(Task.status == TaskStatus.PENDING, Task.type == task_type)
        .order_by(Task.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if task is None:
        return None
    task.status = TaskStatus.IN_PROGRESS
    task.started_at = datetime.now(timezone.utc)
    session.flush()
    return task


def seed_complete(session: Session, task_id: int) -> None:
    session.execute(
        update(Task)
        .where(Task.id == task_id)
        .values(status=TaskStatus.COMPLETED, progress=100, completed_at=datetime.now(timezone.utc))
    )


def seed_workers(
    factory: sessionmaker[Session],
    threads: int,
    idle_sleep: float,
    stop: threading.Event,
    on_task: Callable[[int], None],
) -> list[threading.Thread]:
    def loop() -> None:
        while not stop.is_set():
            with factory() as session:
                task = seed_dequeue(session, "noop")
                session.commit()
                task_id = task.id if task is not None else None
            if task_id is None:
                stop.wait(idle_sleep)
                continue
            on_task(task_id)
            with factory() as session:
                seed_complete(session, task_id)
                session.commit()

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return workers


# --------------------------------------------------------------------------- scenarios


def reset(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {Task.__tablename__} RESTART IDENTITY"))


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def enqueue_one_by_one(engine: Engine, count: int, ours: bool) -> float:
    factory = sessionmaker(engine)

    def run() -> None:
        for n in range(count):
            with factory() as session:
                if ours:
                    TaskRepository(session, Task).enqueue("noop", {"n": n})
                else:
                    seed_enqueue(session, "noop", {"n": n})
                session.commit()

    reset(engine)
    return count / timed(run)


def enqueue_bulk(engine: Engine, count: int, ours: bool) -> float:
    factory = sessionmaker(engine)
    payloads = [{"n": n} for n in range(count)]

    def run() -> None:
        with factory() as session:
            if ours:
                TaskRepository(session, Task).enqueue_many("noop", payloads)
            else:
                session.add_all(
                    Task(type="noop", payload=p, status=TaskStatus.PENDING) for p in payloads
                )
            session.commit()

    reset(engine)
    return count / timed(run)


def fill(engine: Engine, count: int) -> None:
    reset(engine)
    with Session(engine) as session:
        TaskRepository(session, Task).enqueue_many("noop", [{"n": n} for n in range(count)])
        session.commit()


def drain_ours(engine: Engine, count: int, workers: int, prefetch: int = 0) -> float:
    fill(engine, count)
    factory = sessionmaker(engine)
    worker = Worker(
        factory,
        Task,
        {"noop": lambda task, ctx: None},
        concurrency=workers,
        prefetch=prefetch,
        poll_interval=0.05,
    )
    return count / timed(lambda: worker.run(until_empty=True))


def drain_seed(engine: Engine, count: int, workers: int) -> float:
    fill(engine, count)
    factory = sessionmaker(engine)
    done = threading.Semaphore(0)
    stop = threading.Event()

    def run() -> None:
        threads = seed_workers(factory, workers, 0.05, stop, lambda task_id: done.release())
        for _ in range(count):
            done.acquire()
        stop.set()
        for thread in threads:
            thread.join()

    return count / timed(run)


def wake_latency(engine: Engine, samples: int, ours: bool) -> float:
    """Median seconds from the enqueuing commit to the handler starting, idle workers."""
    reset(engine)
    factory = sessionmaker(engine)
    started: dict[int, float] = {}
    arrived = threading.Event()

    def on_task(task_id: int) -> None:
        started[task_id] = time.perf_counter()
        arrived.set()

    stop = threading.Event()
    if ours:
        worker = Worker(
            factory,
            Task,
            {"noop": lambda task, ctx: on_task(task.id)},
            concurrency=1,
            poll_interval=5,
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        worker.listening.wait(10)
    else:
        # the seed's sample loop sleeps 5 s when the queue is empty
        seed_workers(factory, 1, 5.0, stop, on_task)
    latencies = []
    for n in range(samples):
        if ours:
            worker.idle.wait(10)
        else:
            time.sleep(0.2)  # let the loop go idle, as between real requests
        arrived.clear()
        with factory() as session:
            task_id = (
                TaskRepository(session, Task).enqueue
                if ours
                else lambda t, p: seed_enqueue(session, t, p)
            )("noop", {"n": n})
            session.commit()
            committed = time.perf_counter()
        arrived.wait(15)
        latencies.append(started[task_id] - committed)
    if ours:
        worker.stop()
        thread.join()
    stop.set()
    return statistics.median(latencies)


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per throughput scenario")
    parser.add_argument("--workers", type=int, default=4, help="worker slots (threads)")
    parser.add_argument("--samples", type=int, default=5, help="wake-up latency samples")
    args = parser.parse_args()

    server_url = resolve_database_url("TASKQUEUE_BENCH_DATABASE_URL", DATABASE_URL_ENV)
    with throwaway_database(server_url, "taskqueue_bench") as url:
        engine = create_engine(url, pool_size=args.workers + 8)
        Base.metadata.create_all(engine)
        print(f"server: {mask_password(server_url)}  tasks: {args.tasks}  slots: {args.workers}")
        rows = []
        try:
            for label, unit, measure, higher_is_better in (
                (
                    "enqueue, one transaction each",
                    "tasks/s",
                    lambda ours: enqueue_one_by_one(engine, args.tasks // 5, ours),
                    True,
                ),
                (
                    "enqueue, one batch",
                    "tasks/s",
                    lambda ours: enqueue_bulk(engine, args.tasks * 4, ours),
                    True,
                ),
                (
                    "process no-op tasks",
                    "tasks/s",
                    lambda ours: (
                        drain_ours(engine, args.tasks, args.workers)
                        if ours
                        else drain_seed(engine, args.tasks, args.workers)
                    ),
                    True,
                ),
                (
                    "  ... with prefetch 3 x slots",
                    "tasks/s",
                    lambda ours: (
                        drain_ours(engine, args.tasks, args.workers, 3 * args.workers)
                        if ours
                        else drain_seed(engine, args.tasks, args.workers)
                    ),
                    True,
                ),
                (
                    "idle wake-up latency (median)",
                    "ms",
                    lambda ours: 1000 * wake_latency(engine, args.samples, ours),
                    False,
                ),
            ):
                baseline = measure(False)
                ours = measure(True)
                ratio = ours / baseline if higher_is_better else baseline / ours
                rows.append((label, unit, baseline, ours, ratio))
        finally:
            engine.dispose()
    print(f"{'scenario':<32} {'unit':>8} {'seed port':>12} {'taskqueue':>12} {'ratio':>8}")
    for label, unit, baseline, ours, ratio in rows:
        print(f"{label:<32} {unit:>8} {baseline:>12.1f} {ours:>12.1f} {ratio:>7.2f}x")
    print("ratio: how many times better sqlalchemy-taskqueue is than the seed port (same run)")


if __name__ == "__main__":
    main()
