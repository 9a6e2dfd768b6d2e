"""OpenTelemetry: an enqueue records its trace context with the task; each attempt runs
in a span of its own, linked to the enqueue, carrying the task's id, type, attempt and
outcome, with events for a scheduled retry and a lost lease; the handler's own spans
are its children.  Recorded with the SDK's in-memory exporter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from processes import wait_for
from twins import running
from worker_harness import Factory, MakeWorker, enqueue, fetch

from sqlalchemy_taskqueue import TaskContext, TaskRepository, TaskStatus

trace = pytest.importorskip("opentelemetry.trace", reason="the otel extra is not installed")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="session", autouse=True)
def tracer_provider() -> Iterator[Any]:
    """The SDK as an application sets it up, exporting to memory (a process has one
    global provider: set once, for every backend's pass over this module, and stopped
    exporting when the run is done)."""
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    yield provider
    provider.shutdown()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def runs(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("taskqueue.run ")]


def test_an_enqueue_records_the_current_trace_context(
    spans: InMemorySpanExporter, session_factory: Factory, clean_table: type[Any]
) -> None:
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("request") as request:
        traced = enqueue(session_factory, clean_table, "email")
        with session_factory() as session:
            bulk = TaskRepository(session, clean_table).enqueue_many("email", [{}, {}])
            session.commit()
    untraced = enqueue(session_factory, clean_table, "email")
    trace_id = format(request.get_span_context().trace_id, "032x")
    for task_id in (traced, *bulk):
        headers = fetch(session_factory, clean_table, task_id).headers
        assert headers["traceparent"].split("-")[1] == trace_id
    assert fetch(session_factory, clean_table, untraced).headers is None


def test_each_attempt_runs_in_a_span_linked_to_its_enqueue(
    spans: InMemorySpanExporter,
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
) -> None:
    tracer = trace.get_tracer("app")

    def export(task: Any, ctx: TaskContext) -> str:
        with tracer.start_as_current_span("write rows"):
            return "done"

    with tracer.start_as_current_span("request") as request:
        task_id = enqueue(session_factory, clean_table, "export")
    make_worker(session_factory, clean_table, {"export": export}).run(until_empty=True)
    [run] = runs(spans)
    assert run.name == "taskqueue.run export"
    assert run.kind is trace.SpanKind.CONSUMER
    assert run.parent is None  # a trace of its own, linked to the enqueue
    assert [link.context.span_id for link in run.links] == [request.get_span_context().span_id]
    assert dict(run.attributes) == {
        "taskqueue.task_id": task_id,
        "taskqueue.task_type": "export",
        "taskqueue.attempt": 1,
        "taskqueue.outcome": "completed",
    }
    [child] = [s for s in spans.get_finished_spans() if s.name == "write rows"]
    assert child.parent is not None and child.parent.span_id == run.context.span_id
    assert run.status.status_code is trace.StatusCode.UNSET


def test_a_task_enqueued_outside_a_trace_still_gets_a_span(
    spans: InMemorySpanExporter,
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
) -> None:
    enqueue(session_factory, clean_table, "export")
    make_worker(session_factory, clean_table, {"export": lambda task, ctx: None}).run(
        until_empty=True
    )
    [run] = runs(spans)
    assert run.links == () or list(run.links) == []
    assert run.attributes["taskqueue.outcome"] == "completed"


def test_a_retry_and_a_final_failure_are_recorded(
    spans: InMemorySpanExporter,
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
) -> None:
    def broken(task: Any, ctx: TaskContext) -> None:
        raise ValueError("row 7 is not a number")

    retried = enqueue(session_factory, clean_table, "broken", max_retries=1)
    failed = enqueue(session_factory, clean_table, "broken", max_retries=0)
    make_worker(session_factory, clean_table, {"broken": broken}).run(until_empty=True)
    by_task = {s.attributes["taskqueue.task_id"]: s for s in runs(spans)}
    retry = by_task[retried]
    assert retry.attributes["taskqueue.outcome"] == "retried"
    assert [e.name for e in retry.events] == ["taskqueue.retry_scheduled"]
    assert retry.events[0].attributes["taskqueue.error"] == "ValueError: row 7 is not a number"
    assert retry.status.status_code is trace.StatusCode.ERROR
    final = by_task[failed]
    assert final.attributes["taskqueue.outcome"] == "failed"
    assert final.status.status_code is trace.StatusCode.ERROR
    assert final.status.description == "ValueError: row 7 is not a number"


def test_a_lost_lease_is_recorded(
    spans: InMemorySpanExporter,
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
) -> None:
    started, stopped = threading.Event(), threading.Event()

    def long_job(task: Any, ctx: TaskContext) -> None:
        started.set()
        while not ctx.should_stop():
            time.sleep(0.01)  # the handler's own work loop
        stopped.set()

    worker = make_worker(session_factory, clean_table, {"long": long_job}, heartbeat_interval=0.2)
    task_id = enqueue(session_factory, clean_table, "long")
    with running(worker):
        assert started.wait(10)
        with session_factory.begin() as session:
            assert TaskRepository(session, clean_table).cancel_task(task_id)
        assert stopped.wait(10)
        wait_for(lambda: len(runs(spans)) == 1)
    [run] = runs(spans)
    assert run.attributes["taskqueue.outcome"] == "lease_lost"
    assert [e.name for e in run.events] == ["taskqueue.lease_lost"]
    assert fetch(session_factory, clean_table, task_id).status is TaskStatus.CANCELLED


def test_a_timed_out_attempt_is_recorded_as_failed(
    spans: InMemorySpanExporter,
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
) -> None:
    def slow(task: Any, ctx: TaskContext) -> None:
        while not ctx.should_stop():
            time.sleep(0.01)  # the handler's own work loop, stopping when asked

    task_id = enqueue(session_factory, clean_table, "slow", max_retries=0, timeout_seconds=1)
    make_worker(session_factory, clean_table, {"slow": slow}).run(until_empty=True)
    [run] = runs(spans)
    assert run.attributes["taskqueue.outcome"] == "failed"
    assert run.status.status_code is trace.StatusCode.ERROR
    assert "timeout" in (run.status.description or "")
    assert fetch(session_factory, clean_table, task_id).status is TaskStatus.FAILED


def test_a_coroutine_returned_by_a_plain_handler_runs_in_the_span(
    spans: InMemorySpanExporter,
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
) -> None:
    if make_worker.twin == "sync":  # type: ignore[attr-defined]
        pytest.skip("the threaded worker does not await what a handler returns")
    tracer = trace.get_tracer("app")

    async def work() -> str:
        with tracer.start_as_current_span("awaited work"):
            return "done"

    def deferring(task: Any, ctx: TaskContext) -> Any:
        return work()  # a plain function handing back a coroutine

    enqueue(session_factory, clean_table, "deferring")
    make_worker(session_factory, clean_table, {"deferring": deferring}).run(until_empty=True)
    [run] = runs(spans)
    [child] = [s for s in spans.get_finished_spans() if s.name == "awaited work"]
    assert child.parent is not None and child.parent.span_id == run.context.span_id
