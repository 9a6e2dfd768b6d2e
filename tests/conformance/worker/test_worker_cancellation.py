"""An operator cancels a running task: the worker finds its lease revoked at the next
heartbeat, tells the handler to stop, discards its outcome and never retries it."""

from __future__ import annotations

import threading
import time
from typing import Any

from processes import wait_for
from twins import running
from worker_harness import Factory, MakeWorker, enqueue, fetch

from sqlalchemy_taskqueue import TaskContext, TaskRepository, TaskStatus

HEARTBEAT = 0.2


def test_a_cancelled_running_task_stops_within_a_heartbeat_and_stays_cancelled(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    started, stopped = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def long_job(task: Any, ctx: TaskContext) -> str:
        started.set()
        while not ctx.should_stop():
            time.sleep(0.01)  # simulated work, checking for a stop request
        seen["reason"] = ctx.stop_reason
        stopped.set()
        return "finished anyway"  # discarded: the lease is gone

    worker = make_worker(
        session_factory,
        clean_table,
        {"long": long_job},
        heartbeat_interval=HEARTBEAT,
        lease_duration=5,
    )
    task_id = enqueue(session_factory, clean_table, "long", max_retries=3)
    with running(worker):
        assert started.wait(10)
        with session_factory.begin() as session:
            assert TaskRepository(session, clean_table).cancel_task(task_id) is True
        cancelled_at = time.monotonic()
        assert stopped.wait(10)
        waited = time.monotonic() - cancelled_at
        wait_for(lambda: worker.stats.lost_leases == 1)
    assert waited < HEARTBEAT + 2.0  # one heartbeat, with slack for a loaded machine
    assert "lease" in (seen["reason"] or "")
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.result, task.retry_count) == (TaskStatus.CANCELLED, None, 0)
    assert task.lease_token is None
    assert worker.stats.completed == 0 and worker.stats.retried == 0
