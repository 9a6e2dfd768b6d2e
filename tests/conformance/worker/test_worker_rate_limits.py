"""A running worker and rate limits: it claims a limited type only within its budget,
wakes when the budget frees, and learns of new limits within its rescue interval."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from processes import wait_for
from twins import running
from worker_harness import Factory, MakeWorker

from sqlalchemy_taskqueue import TaskRepository


def test_a_worker_claims_a_limited_type_only_within_its_budget(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    ran: list[int] = []
    lock = threading.Lock()

    def webhook(task: Any, ctx: Any) -> None:
        with lock:
            ran.append(task.id)

    with session_factory.begin() as session:
        repo = TaskRepository(session, clean_table)
        repo.enqueue_many("webhook", [{"n": n} for n in range(10)])
        repo.enqueue_many("email", [{"n": n} for n in range(5)])
        repo.set_rate_limit("webhook", 4, per=timedelta(hours=1))
    worker = make_worker(
        session_factory,
        clean_table,
        {"webhook": webhook, "email": lambda task, ctx: None},
        rescue_interval=0.2,
    )

    def pending(task_type: str) -> int:
        with session_factory() as session:
            counts = TaskRepository(session, clean_table).status_counts()
            return sum(
                c.count for c in counts if c.task_type == task_type and c.status == "pending"
            )

    with running(worker):
        wait_for(lambda: len(ran) == 4 and pending("email") == 0)
        wait_for(worker.idle.is_set)
        assert len(ran) == 4 and pending("webhook") == 6
        with session_factory.begin() as session:
            TaskRepository(session, clean_table).clear_rate_limit("webhook")
        # the worker learns of it at its next rescue (0.2 s here) and drains the rest
        wait_for(lambda: len(ran) == 10)


def test_a_run_until_empty_waits_for_the_budget_instead_of_stopping_early(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    with session_factory.begin() as session:
        repo = TaskRepository(session, clean_table)
        repo.enqueue_many("webhook", [{"n": n} for n in range(5)])
        repo.set_rate_limit("webhook", 2, per=timedelta(seconds=1))
    ran: list[int] = []
    worker = make_worker(session_factory, clean_table, {"webhook": lambda t, c: ran.append(t.id)})
    worker.run(until_empty=True)  # 2, then 2 a second later, then the last one
    assert len(ran) == 5
