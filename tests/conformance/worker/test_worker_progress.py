"""Progress that handlers report (``ctx.update_progress``): visible to other sessions
while the handler runs, written throttled but the last value always lands (within
the progress interval), kept by a task that fails, reset for its retry; bad values
are refused to the handler."""

from __future__ import annotations

import threading
from typing import Any

from processes import wait_for
from twins import running
from worker_harness import Factory, MakeWorker, enqueue, fetch, wait_until_stopped

from sqlalchemy_taskqueue import HandlerRegistry, TaskContext, TaskRepository, TaskStatus


def test_progress_is_visible_from_another_session_while_the_handler_runs(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    reported = threading.Event()
    proceed = threading.Event()

    def export(task: Any, ctx: TaskContext) -> str:
        ctx.update_progress(40)
        reported.set()
        assert proceed.wait(10)
        return "done"

    task_id = enqueue(session_factory, clean_table, "export")
    with running(make_worker(session_factory, clean_table, {"export": export})):
        assert reported.wait(10)
        with session_factory() as session:
            progress = TaskRepository(session, clean_table).get_task_progress("export")
        assert progress == 40
        proceed.set()
        wait_for(
            lambda: fetch(session_factory, clean_table, task_id).status is TaskStatus.COMPLETED
        )


def test_progress_writes_are_throttled_and_the_last_value_lands(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    reported = threading.Event()
    proceed = threading.Event()

    def export(task: Any, ctx: TaskContext) -> None:
        for percent in range(1, 91):
            ctx.update_progress(percent)
        reported.set()
        assert proceed.wait(10)

    task_id = enqueue(session_factory, clean_table, "export")
    worker = make_worker(session_factory, clean_table, {"export": export}, progress_interval=0.2)
    with running(worker):
        assert reported.wait(10)
        # the first value was written at once; the supervisor flushes the latest one
        wait_for(lambda: fetch(session_factory, clean_table, task_id).progress == 90)
        proceed.set()


def test_a_throttled_value_lands_within_the_progress_interval_not_the_heartbeat(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    reported = threading.Event()
    proceed = threading.Event()

    def export(task: Any, ctx: TaskContext) -> None:
        ctx.update_progress(10)  # written at once
        ctx.update_progress(60)  # throttled: the supervisor writes it
        reported.set()
        assert proceed.wait(30)

    task_id = enqueue(session_factory, clean_table, "export")
    # heartbeats every 30 s: the value must not wait for the next one
    worker = make_worker(
        session_factory, clean_table, {"export": export}, lease_duration=120, progress_interval=0.2
    )
    with running(worker):
        assert reported.wait(10)
        try:
            wait_for(lambda: fetch(session_factory, clean_table, task_id).progress == 60, 5)
        finally:
            proceed.set()


def test_a_failed_task_keeps_the_last_progress_it_reported(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def broken(task: Any, ctx: TaskContext) -> None:
        ctx.update_progress(10)  # written at once
        ctx.update_progress(60)  # throttled: still waiting to be written
        raise ValueError("row 61 is not a number")

    def hung(task: Any, ctx: TaskContext) -> None:
        ctx.update_progress(10)
        ctx.update_progress(70)
        wait_until_stopped(task, ctx)

    registry = HandlerRegistry(clean_table)
    registry.add("broken", broken)
    # long enough for the handler to report 70 first, even on a loaded machine
    registry.add("hung", hung, timeout=1.5)
    failed = enqueue(session_factory, clean_table, "broken", max_retries=0)
    timed_out = enqueue(session_factory, clean_table, "hung", max_retries=0)
    worker = make_worker(session_factory, clean_table, registry, progress_interval=3600)
    worker.run(until_empty=True)
    # a failed task shows how far it got: the last value reported, not the last written
    task = fetch(session_factory, clean_table, failed)
    assert (task.status, task.progress) == (TaskStatus.FAILED, 60)
    task = fetch(session_factory, clean_table, timed_out)
    assert (task.status, task.progress) == (TaskStatus.FAILED, 70)


def test_a_retried_task_starts_again_from_zero_progress(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def flaky(task: Any, ctx: TaskContext) -> None:
        ctx.update_progress(70)
        raise RuntimeError("half way")

    task_id = enqueue(session_factory, clean_table, "flaky", max_retries=1)
    make_worker(session_factory, clean_table, {"flaky": flaky}).run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.progress) == (TaskStatus.PENDING, 0)


def test_progress_rejects_bad_values(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    errors: list[str] = []

    def export(task: Any, ctx: TaskContext) -> None:
        for bad in (101, -1, True, "50"):
            try:
                ctx.update_progress(bad)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                errors.append(type(exc).__name__)

    enqueue(session_factory, clean_table, "export")
    make_worker(session_factory, clean_table, {"export": export}).run(until_empty=True)
    assert errors == ["ValueError", "ValueError", "BoolArgumentError", "TypeError"]
