"""TaskContext: throttled progress that always lands, and stop requests."""

from __future__ import annotations

import threading
import uuid
from types import SimpleNamespace

import pytest

from sqlalchemy_taskqueue import TaskContext, TaskInterrupted
from sqlalchemy_taskqueue._validation import BoolArgumentError, require_int


def make_context(writer: object, interval: float = 0.0) -> tuple[TaskContext, threading.Event]:
    task = SimpleNamespace(
        id=7, type="export", payload={"k": 1}, retry_count=2, lease_token=uuid.uuid4()
    )
    stopping = threading.Event()
    return TaskContext(
        task, progress_writer=writer, progress_interval=interval, worker_stopping=stopping
    ), stopping  # type: ignore[arg-type]


def test_a_failed_progress_write_is_retried_at_the_next_flush() -> None:
    written: list[int] = []
    failures = [True]

    def writer(task_id: int, progress: int, token: uuid.UUID) -> bool:
        if failures:
            failures.pop()
            raise ConnectionError("database went away")
        written.append(progress)
        return True

    ctx, _ = make_context(writer)
    ctx.update_progress(30)  # fails, logged, does not raise
    assert written == []
    ctx.flush_progress(force=True)
    assert written == [30]


def test_throttling_keeps_the_latest_value() -> None:
    written: list[int] = []
    ctx, _ = make_context(
        lambda task_id, progress, token: written.append(progress) or True, interval=3600
    )
    for percent in (10, 20, 30):
        ctx.update_progress(percent)
    assert written == [10]
    ctx.flush_progress(force=True)
    assert written == [10, 30]


def test_context_fields_and_stop_requests() -> None:
    ctx, stopping = make_context(lambda *args: True)
    assert (ctx.task_id, ctx.task_type, ctx.payload, ctx.attempt) == (7, "export", {"k": 1}, 3)
    assert not ctx.should_stop()
    ctx.raise_if_stopping()
    stopping.set()
    assert ctx.should_stop() and ctx.stop_reason == "the worker is shutting down"
    with pytest.raises(TaskInterrupted, match="shutting down"):
        ctx.raise_if_stopping()


def test_a_lost_lease_asks_the_handler_to_stop() -> None:
    ctx, _ = make_context(lambda *args: False)
    ctx.update_progress(5)
    assert ctx.should_stop() and ctx.stop_reason == "the lease on this task was lost"


def test_a_value_reported_while_a_write_is_in_flight_lands_last() -> None:
    """A handler and a thread it started report progress at once: the older value's
    write must not land after the newer one."""
    written: list[int] = []
    writing_50 = threading.Event()
    finish_50 = threading.Event()

    def writer(task_id: int, progress: int, token: uuid.UUID) -> bool:
        if progress == 50:
            writing_50.set()
            assert finish_50.wait(10)
        written.append(progress)
        return True

    ctx, _ = make_context(writer)
    helper = threading.Thread(target=ctx.update_progress, args=(50,))
    helper.start()
    assert writing_50.wait(10)
    ctx.update_progress(60)  # the handler's own thread, while 50 is being written
    finish_50.set()
    helper.join(10)
    ctx.flush_progress(force=True)  # what the worker does when the attempt ends
    assert written[-1] == 60


@pytest.mark.parametrize(
    ("percent", "error", "message"),
    [
        (True, BoolArgumentError, "not a bool"),
        (1.5, TypeError, "must be an integer"),
        ("50", TypeError, "must be an integer"),
        (-1, ValueError, ">= 0"),
        (101, ValueError, "<= 100"),
    ],
)
def test_bad_progress_is_refused_as_the_repository_refuses_it(
    percent: object, error: type[Exception], message: str
) -> None:
    written: list[int] = []
    ctx, _ = make_context(lambda task_id, progress, token: written.append(progress) or True)
    with pytest.raises(error, match=message):
        ctx.update_progress(percent)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        require_int("progress", percent, minimum=0, maximum=100)  # the repository's rule
    ctx.flush_progress(force=True)
    assert written == []
