"""Timeouts: an attempt that runs longer than its type's timeout, or the task's own,
fails (and is retried while retries remain); an attempt that returns after its
timeout changes nothing, not even the lease of the retry running meanwhile."""

from __future__ import annotations

import threading
import time
from typing import Any

from processes import wait_for
from twins import running
from worker_harness import Factory, MakeWorker, enqueue, fetch, wait_until_stopped

from sqlalchemy_taskqueue import HandlerRegistry, TaskContext, TaskStatus


def test_a_per_type_timeout_fails_the_attempt(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    registry = HandlerRegistry(clean_table)
    registry.add("slow", wait_until_stopped, timeout=0.3)
    task_id = enqueue(session_factory, clean_table, "slow", max_retries=0)
    worker = make_worker(session_factory, clean_table, registry)
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error_message == "TimeoutError: the attempt exceeded its timeout of 0.3s"
    assert task.result is None  # the late result was discarded
    assert worker.stats.timed_out == 1


def test_a_per_task_timeout_overrides_the_type(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    task_id = enqueue(session_factory, clean_table, "slow", max_retries=1, timeout_seconds=1)
    worker = make_worker(
        session_factory, clean_table, {"slow": wait_until_stopped}, timeouts={"slow": 3600}
    )
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.PENDING and task.retry_count == 1
    assert task.error_message == "TimeoutError: the attempt exceeded its timeout of 1s"


def test_a_late_timed_out_attempt_does_not_drop_the_retry_it_overlaps(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """Attempt 1 times out but keeps running; the same worker runs attempt 2 meanwhile.
    When attempt 1 finally returns, attempt 2 must keep its lease (heartbeats)."""
    second_started = threading.Event()
    release_first = threading.Event()
    seen_late: list[bool] = []

    def job(task: Any, ctx: TaskContext) -> str:
        if ctx.attempt == 1:
            assert release_first.wait(10)  # ignores its timeout
            seen_late.append(True)
            return "first (late)"
        second_started.set()
        release_first.set()
        deadline = time.monotonic() + 1.6  # longer than the 1 s lease: needs heartbeats
        while time.monotonic() < deadline:
            time.sleep(0.02)
        return "second"

    from sqlalchemy_taskqueue import BackoffPolicy

    task_id = enqueue(session_factory, clean_table, "job", max_retries=1, timeout_seconds=2)
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": job},
        concurrency=2,
        lease_duration=1,
        backoff=BackoffPolicy(base_seconds=0.01, jitter=0),
    )
    with running(worker):
        assert second_started.wait(15)
        wait_for(
            lambda: fetch(session_factory, clean_table, task_id).status is TaskStatus.COMPLETED
        )
    task = fetch(session_factory, clean_table, task_id)
    assert (task.result, task.retry_count) == ("second", 1)
    assert seen_late == [True]
    assert (worker.stats.lost_leases, worker.stats.rescued) == (0, 0)
