"""A running worker and concurrency keys: a key never runs more tasks at once than its
limit while other keys run beside it; a worker prefetches no more of a key than its
limit; the queue's first keyed task is claimed at once."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from processes import wait_for
from sqlalchemy import func, select
from twins import running
from worker_harness import Factory, Gate, MakeWorker

from sqlalchemy_taskqueue import TaskContext, TaskRepository


class KeyedLoad:
    """A handler that counts, per key, how many of its tasks run at once, and holds each
    task until a few tasks of other keys have started too (or a short while passes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.most_at_once = 0
        self.done = 0
        self.started = threading.Condition(self.lock)

    def __call__(self, task: Any, ctx: TaskContext) -> None:
        key = task.concurrency_key
        with self.lock:
            self.running[key] += 1
            self.most[key] = max(self.most[key], self.running[key])
            self.most_at_once = max(self.most_at_once, sum(self.running.values()))
            self.started.notify_all()
            # overlap with other keys' tasks: wait (bounded) for company
            self.started.wait_for(lambda: sum(self.running.values()) >= 3, timeout=0.2)
            self.running[key] -= 1
            self.done += 1


def test_each_key_stays_within_its_limit_while_keys_run_side_by_side(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    load = KeyedLoad()
    with session_factory.begin() as session:
        repo = TaskRepository(session, clean_table)
        for n in range(8):  # interleaved, as a real queue fills
            repo.enqueue("sync", {"n": n}, concurrency_key="one", concurrency_limit=1)
            repo.enqueue("sync", {"n": n}, concurrency_key="two", concurrency_limit=2)
            repo.enqueue("sync", {"n": n})
    worker = make_worker(session_factory, clean_table, {"sync": load}, concurrency=6)
    worker.run(until_empty=True)
    assert load.done == 24
    assert load.most["one"] == 1 and load.most["two"] == 2
    assert load.most_at_once >= 3


def test_a_worker_prefetches_no_more_of_a_key_than_its_limit(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """With its one slot busy and prefetch on, the worker claims tasks ahead, a keyed task
    among them, but never more of a key than the key's limit: a prefetched keyed task
    holds its key's slot while it waits for the worker's slot."""
    gate = Gate()
    with session_factory.begin() as session:
        repo = TaskRepository(session, clean_table)
        repo.enqueue("gate", {})
        repo.enqueue_many("sync", [{}, {}, {}], concurrency_key="k")
        repo.enqueue_many("plain", [{}, {}])
    ran: list[str] = []
    handlers = {
        "gate": gate,
        "sync": lambda task, ctx: ran.append("sync"),
        "plain": lambda task, ctx: ran.append("plain"),
    }
    worker = make_worker(session_factory, clean_table, handlers, concurrency=1, prefetch=5)

    def in_progress(keyed: bool) -> int:
        table = clean_table.__table__
        has_key = (
            table.c.concurrency_key.is_not(None) if keyed else table.c.concurrency_key.is_(None)
        )
        with session_factory() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(table)
                    .where(table.c.status == "in_progress", has_key)
                )
                or 0
            )

    with running(worker):
        assert gate.started.wait(10)
        wait_for(lambda: in_progress(keyed=False) == 3)  # the gate and both plain tasks
        assert in_progress(keyed=True) <= 1
        gate.proceed.set()
        wait_for(lambda: len(ran) == 5)
    assert sorted(ran) == ["plain", "plain", "sync", "sync", "sync"]


def test_a_worker_started_before_the_first_keyed_task_claims_it_without_delay(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """The worker learns that the queue uses keys when a turn finds nothing to claim,
    not only at its next rescue (an hour away here)."""
    done = threading.Event()
    worker = make_worker(
        session_factory,
        clean_table,
        {"sync": lambda task, ctx: done.set()},
        rescue_interval=3600,
    )
    with running(worker):
        wait_for(worker.idle.is_set)
        with session_factory.begin() as session:
            TaskRepository(session, clean_table).enqueue("sync", {}, concurrency_key="first")
        assert done.wait(10)
