"""Stopping a worker: ``stop()`` or SIGTERM lets running tasks finish within the grace
period and hands the unfinished ones back without using a retry; it installs signal
handlers only when asked, and restores them; a stopped worker can run again.  A
handler raising ``TaskInterrupted`` outside a shutdown fails its attempt."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from processes import wait_for
from twins import running
from worker_harness import Factory, Gate, MakeWorker, enqueue, fetch

from sqlalchemy_taskqueue import TaskContext, TaskInterrupted, TaskStatus


def test_stop_lets_a_running_task_finish_within_the_grace_period(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    slow = Gate("finished")
    task_id = enqueue(session_factory, clean_table, "slow")
    worker = make_worker(session_factory, clean_table, {"slow": slow}, shutdown_grace=10)
    with running(worker) as thread:
        assert slow.started.wait(10)
        worker.stop()
        slow.proceed.set()
        thread.join(10)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "finished")


def test_unfinished_tasks_are_handed_back_without_using_a_retry(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    stubborn = Gate("too late")
    task_id = enqueue(session_factory, clean_table, "stubborn")
    worker = make_worker(session_factory, clean_table, {"stubborn": stubborn}, shutdown_grace=0.2)
    with running(worker) as thread:
        assert stubborn.started.wait(10)
        worker.stop()
        thread.join(10)
        assert not thread.is_alive()
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.retry_count, task.lease_token) == (TaskStatus.PENDING, 0, None)
    stubborn.proceed.set()  # the handler returns later; its result is discarded
    wait_for(lambda: worker.stats.released == 1)
    assert fetch(session_factory, clean_table, task_id).status is TaskStatus.PENDING


def test_a_cooperative_handler_is_handed_back_when_it_stops(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    started = threading.Event()

    def cooperative(task: Any, ctx: TaskContext) -> None:
        started.set()
        while True:
            ctx.raise_if_stopping()
            time.sleep(0.01)  # the handler's own work loop

    task_id = enqueue(session_factory, clean_table, "coop")
    worker = make_worker(session_factory, clean_table, {"coop": cooperative}, shutdown_grace=10)
    with running(worker) as thread:
        assert started.wait(10)
        worker.stop()
        thread.join(10)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.retry_count) == (TaskStatus.PENDING, 0)
    assert worker.stats.released == 1


def test_signal_handlers_are_left_alone_when_the_host_handles_signals(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    during: list[Any] = []
    enqueue(session_factory, clean_table, "job")
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": lambda task, ctx: during.append(signal.getsignal(signal.SIGTERM))},
    )
    worker.run(until_empty=True, install_signal_handlers=False)
    assert during == [previous]


def test_sigterm_on_the_main_thread_stops_gracefully_and_restores_the_handler(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def job(task: Any, ctx: TaskContext) -> str:
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill <pid>` does to a worker
        wait_for(ctx.should_stop, timeout=10)  # the worker heard it ...
        return "finished"  # ... and lets the running task finish

    task_id = enqueue(session_factory, clean_table, "job")
    worker = make_worker(session_factory, clean_table, {"job": job}, shutdown_grace=10)
    worker.run()  # returns once the signal's graceful shutdown is done
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "finished")
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_worker_can_run_again_after_stop(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    worker = make_worker(session_factory, clean_table, {"job": lambda task, ctx: "ok"})
    with running(worker):
        wait_for(worker.idle.is_set)
    task_id = enqueue(session_factory, clean_table, "job")
    worker.run(until_empty=True)
    assert fetch(session_factory, clean_table, task_id).status is TaskStatus.COMPLETED


def test_interrupted_without_shutdown_counts_as_a_failed_attempt(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def gives_up(task: Any, ctx: TaskContext) -> None:
        raise TaskInterrupted("upstream asked to stop")

    task_id = enqueue(session_factory, clean_table, "x", max_retries=0)
    make_worker(session_factory, clean_table, {"x": gives_up}).run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED and "upstream asked to stop" in (
        task.error_message or ""
    )
