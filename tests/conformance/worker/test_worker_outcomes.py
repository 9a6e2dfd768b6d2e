"""What a worker writes when a handler is done: the result it returns; for an exception
a failed attempt, retried with backoff while retries remain and recorded by the
exception's type and message, even a message that cannot be printed or stored as is
(``SystemExit`` included); a result that is not JSON, or nests too deep, fails the
task for good.  An outcome the database refuses blocks none of the others."""

from __future__ import annotations

from typing import Any

from backends import instant
from sqlalchemy import text
from worker_harness import Factory, MakeWorker, completions_refused, enqueue, fetch

from sqlalchemy_taskqueue import TaskContext, TaskStatus


def test_handlers_run_and_results_are_stored(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    seen: list[tuple[int, Any, int]] = []

    def export(task: Any, ctx: TaskContext) -> dict[str, Any]:
        seen.append((ctx.task_id, ctx.payload, ctx.attempt))
        assert task.id == ctx.task_id and task.status is TaskStatus.IN_PROGRESS
        return {"rows": ctx.payload["n"] * 10}

    ids = [enqueue(session_factory, clean_table, "export", {"n": n}) for n in range(5)]
    worker = make_worker(session_factory, clean_table, {"export": export}, concurrency=3)
    worker.run(until_empty=True)
    assert sorted(seen) == [(task_id, {"n": n}, 1) for n, task_id in enumerate(ids)]
    for n, task_id in enumerate(ids):
        task = fetch(session_factory, clean_table, task_id)
        assert (task.status, task.result, task.progress) == (
            TaskStatus.COMPLETED,
            {"rows": n * 10},
            100,
        )
        assert task.lease_owner == worker.owner
    assert worker.stats.completed == 5


def test_a_handler_exception_fails_the_attempt_with_backoff(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def broken(task: Any, ctx: TaskContext) -> None:
        raise ValueError("row 7 is not a number")

    retried = enqueue(session_factory, clean_table, "broken", max_retries=2)
    final = enqueue(session_factory, clean_table, "broken", max_retries=0)
    worker = make_worker(session_factory, clean_table, {"broken": broken})
    worker.run(until_empty=True)  # returns: the retry is scheduled, not slept for
    task = fetch(session_factory, clean_table, retried)
    assert task.status is TaskStatus.PENDING and task.retry_count == 1
    assert task.error_message == "ValueError: row 7 is not a number"
    with session_factory() as session:
        assert session.scalar(
            text(
                f"SELECT run_at > {instant(session)} FROM {clean_table.__tablename__} "
                f"WHERE id = {retried}"
            )
        )
    task = fetch(session_factory, clean_table, final)
    assert (
        task.status is TaskStatus.FAILED
        and task.error_message == "ValueError: row 7 is not a number"
    )
    assert (worker.stats.retried, worker.stats.failed) == (1, 1)


def test_an_exception_without_a_message_is_recorded_by_its_type(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def bare(task: Any, ctx: TaskContext) -> None:
        raise RuntimeError()

    task_id = enqueue(session_factory, clean_table, "bare", max_retries=0)
    make_worker(session_factory, clean_table, {"bare": bare}).run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.error_message) == (TaskStatus.FAILED, "RuntimeError")


def test_an_exception_message_postgresql_cannot_store_is_escaped(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def odd(task: Any, ctx: TaskContext) -> None:
        raise ValueError("lone " + chr(0xD800) + " surrogate and a nul " + chr(0))

    bad = enqueue(session_factory, clean_table, "odd", max_retries=0)
    good = enqueue(session_factory, clean_table, "good")
    worker = make_worker(session_factory, clean_table, {"odd": odd, "good": lambda task, ctx: 1})
    worker.run(until_empty=True)
    failed = fetch(session_factory, clean_table, bad)
    assert failed.status is TaskStatus.FAILED
    assert failed.error_message == "ValueError: lone \\ud800 surrogate and a nul \\x00"
    assert fetch(session_factory, clean_table, good).status is TaskStatus.COMPLETED


class Unprintable(Exception):
    """An exception whose ``str()`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


def test_an_exception_that_cannot_be_printed_still_fails_the_attempt(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def odd(task: Any, ctx: TaskContext) -> None:
        raise Unprintable

    task_id = enqueue(session_factory, clean_table, "odd", max_retries=0)
    worker = make_worker(session_factory, clean_table, {"odd": odd})
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error_message == "Unprintable: <exception str() failed>"
    assert worker.stats.failed == 1


def test_a_handler_calling_sys_exit_fails_its_attempt(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    import sys

    def exits(task: Any, ctx: TaskContext) -> None:
        sys.exit(3)

    task_id = enqueue(session_factory, clean_table, "exits", max_retries=0)
    worker = make_worker(session_factory, clean_table, {"exits": exits})
    worker.run(until_empty=True)  # returns: the slot survived and the task is settled
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.error_message) == (TaskStatus.FAILED, "SystemExit: 3")


def test_a_result_that_is_not_json_fails_the_task(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    task_id = enqueue(session_factory, clean_table, "odd")
    make_worker(session_factory, clean_table, {"odd": lambda task, ctx: object()}).run(
        until_empty=True
    )
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED and "not JSON" in (task.error_message or "")


def test_a_result_nested_too_deep_for_json_fails_the_task(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def deep(task: Any, ctx: TaskContext) -> Any:
        result: Any = []
        for _ in range(100_000):
            result = [result]
        return result

    task_id = enqueue(session_factory, clean_table, "deep")
    worker = make_worker(session_factory, clean_table, {"deep": deep})
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED  # not retried: the same result would come back
    assert task.error_message == (
        "ValueError: the handler's result cannot be stored: result nests arrays and "
        "objects more than 64 levels deep (MAX_JSON_DEPTH)"
    )
    assert worker.stats.failed == 1


def test_an_outcome_the_database_refuses_does_not_block_the_others(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any], engine: Any
) -> None:
    refused = enqueue(session_factory, clean_table, "job", {"refuse": True})
    accepted = [enqueue(session_factory, clean_table, "job", {"n": n}) for n in range(3)]
    with completions_refused(engine, clean_table, "storage quota exceeded", refuse_key="refuse"):
        worker = make_worker(
            session_factory, clean_table, {"job": lambda task, ctx: "ok"}, concurrency=4
        )
        worker.run(until_empty=True)
    assert [fetch(session_factory, clean_table, i).status for i in accepted] == [
        TaskStatus.COMPLETED
    ] * 3
    # the refused one keeps its lease until it expires; then any worker rescues it
    stuck = fetch(session_factory, clean_table, refused)
    assert stuck.status is TaskStatus.IN_PROGRESS and stuck.lease_owner == worker.owner
    assert worker.stats.completed == 3
