"""OpenTelemetry tracing, when the ``otel`` extra is installed (``opentelemetry-api``;
your application configures the SDK and its exporters).

An enqueue made while a span is being recorded stores that span's context with the task
(the W3C ``traceparent``/``tracestate`` headers, in the task's ``headers`` column).  The
worker runs each attempt in a span of its own, ``taskqueue.run <type>``: a new trace
*linked* to the enqueue's span (the task may run much later, and more than once), with
the task's id, type and attempt, its outcome, and events for a scheduled retry and a
lost lease.  Spans the handler starts are children of that span.

Without the package, or while no span is being recorded, none of this costs more than a
check: nothing is stored and no span is started.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError:  # the otel extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

__all__ = [
    "TRACER_NAME",
    "await_in_span",
    "call_in_span",
    "enqueue_headers",
    "finish_span",
    "in_span",
    "start_attempt_span",
]

#: The instrumentation scope of the library's spans.
TRACER_NAME = "sqlalchemy_taskqueue"

_R = TypeVar("_R")
#: The outcomes that end an attempt's span as an error.
_ERRORS = frozenset({"failed", "retried"})


def enqueue_headers() -> dict[str, str] | None:
    """The headers to store with a task enqueued now: the current span's trace context,
    or ``None`` (no OpenTelemetry, or no span being recorded).

    Example::

        values["headers"] = enqueue_headers()
    """
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


@functools.lru_cache(maxsize=8)
def _tracer(provider: Any) -> Any:
    return provider.get_tracer(TRACER_NAME)


def start_attempt_span(task: Any, attempt: int) -> Any:
    """Start the span of one attempt of ``task``: a new trace, linked to the span that
    enqueued the task when its headers carry one.  ``None`` without OpenTelemetry or
    while the application has set no tracer provider (then there is nothing to record,
    and nothing is spent).

    Example::

        span = start_attempt_span(task, 1)
    """
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    links = []
    headers = getattr(task, "headers", None)
    if isinstance(headers, dict) and headers:
        carrier = {str(key): str(value) for key, value in headers.items()}
        enqueued = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        if enqueued.is_valid:
            links.append(Link(enqueued, {"taskqueue.link": "enqueue"}))
    return _tracer(provider).start_span(
        f"taskqueue.run {task.type}",
        context=otel_context.Context(),  # a root: the worker's own context is not its parent
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "taskqueue.task_id": int(task.id),
            "taskqueue.task_type": str(task.type),
            "taskqueue.attempt": attempt,
        },
    )


@contextlib.contextmanager
def in_span(span: Any) -> Iterator[None]:
    """Make ``span`` the current span for the block (nothing when it is ``None``).

    Example::

        with in_span(span):
            handler(task, ctx)
    """
    if span is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


def call_in_span(span: Any, function: Callable[..., _R], *args: Any) -> _R:
    """``function(*args)`` with ``span`` current (in the thread that calls it).

    Example::

        result = call_in_span(span, handler, task, ctx)
    """
    if span is None:  # the common case, spared the context manager
        return function(*args)
    with in_span(span):
        return function(*args)


def await_in_span(span: Any, awaitable: Awaitable[_R]) -> Awaitable[_R]:
    """``awaitable``, to be awaited with ``span`` current (as it is, without a span).

    Example::

        result = await await_in_span(span, handler(task, ctx))
    """
    if span is None:
        return awaitable
    return _awaited_in_span(span, awaitable)


async def _awaited_in_span(span: Any, awaitable: Awaitable[_R]) -> _R:
    with in_span(span):
        return await awaitable


def finish_span(span: Any, outcome: str, message: str = "") -> None:
    """End an attempt's span with its ``outcome`` (``completed``, ``retried``,
    ``failed``, ``released``, ``lease_lost``, ...), recording a retry or a lost lease as
    an event and a failure as the span's error status.

    Example::

        finish_span(span, "retried", "ValueError: bad row")
    """
    if span is None:
        return
    span.set_attribute("taskqueue.outcome", outcome)
    if outcome == "retried":
        span.add_event("taskqueue.retry_scheduled", {"taskqueue.error": message})
    elif outcome == "lease_lost":
        span.add_event("taskqueue.lease_lost")
    if outcome in _ERRORS:
        span.set_status(Status(StatusCode.ERROR, message))
    span.end()
