"""Building a worker: bad options, handlers, models, owners and handler registries are
refused with a clear error, and a run that fails to start leaves the worker able to
run again; ``HandlerRegistry``; a ``scoped_session`` given as the session factory
never lends the worker the session a handler holds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from backends import only_on
from conftest import declare_task_model
from sqlalchemy import select
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.orm import scoped_session, sessionmaker
from worker_harness import Factory, MakeWorker, enqueue, fetch

from sqlalchemy_taskqueue import HandlerRegistry, TaskContext, TaskRepository, TaskStatus, Worker


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"concurrency": "4"}, TypeError, "concurrency"),
        ({"lease_duration": 0}, ValueError, "lease_duration"),
        ({"lease_duration": -5}, ValueError, "lease_duration"),
        ({"poll_interval": timedelta(0)}, ValueError, "poll_interval"),
        ({"poll_interval": "1s"}, TypeError, "poll_interval"),
        ({"default_timeout": -1}, ValueError, "default_timeout"),
        ({"timeouts": {"job": 0}}, ValueError, "timeout of 'job'"),
        ({"timeouts": {"nope": 5}}, ValueError, "nope"),
        ({"heartbeat_interval": 10, "lease_duration": 5}, ValueError, "heartbeat_interval"),
        ({"shutdown_grace": -1}, ValueError, "shutdown_grace"),
        ({"task_types": []}, ValueError, "task_types"),
        ({"task_types": 5}, TypeError, "task_types must be a task type, a sequence"),
        ({"listen": "yes"}, TypeError, "listen"),
        ({"prefetch": -1}, ValueError, "prefetch"),
        ({"prefetch": 1.5}, TypeError, "prefetch"),
        # values that round to nothing, or hoard the queue in one process
        ({"lease_duration": 1e-9}, ValueError, "lease_duration must be at least a microsecond"),
        ({"lease_duration": 0.5}, ValueError, "lease_duration must be at least 1 second"),
        ({"poll_interval": 1e-9}, ValueError, "poll_interval must be at least a microsecond"),
        ({"task_types": ["job\x00"]}, ValueError, "task_type contains a NUL"),
        ({"concurrency": 1001}, ValueError, "concurrency must be <= 1000"),
        ({"prefetch": 10_001}, ValueError, "prefetch must be <= 10000"),
        ({"max_result_bytes": 0}, ValueError, "max_result_bytes"),
    ],
)
def test_bad_configuration_is_rejected(
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        make_worker(session_factory, clean_table, {"job": lambda task, ctx: None}, **kwargs)


def test_a_run_that_fails_to_start_leaves_the_worker_able_to_run_again(
    clean_table: type[Any],
) -> None:
    """Starting the listener fails (here: sessions bound to no database); the error is
    the caller's to see, and the worker is not left marked as running."""
    worker = Worker(sessionmaker(), clean_table, {"job": lambda task, ctx: None})
    for _ in range(2):
        with pytest.raises(UnboundExecutionError):
            worker.run(until_empty=True, install_signal_handlers=False)


def test_bad_handlers_and_models_are_rejected(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    with pytest.raises(TypeError, match="'job' is not callable"):
        make_worker(session_factory, clean_table, {"job": "not a function"})
    with pytest.raises(TypeError, match="mapping"):
        make_worker(session_factory, clean_table, [lambda task, ctx: None])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TaskMixin"):
        make_worker(session_factory, dict, {"job": lambda task, ctx: None})  # type: ignore[type-var]
    with pytest.raises(TypeError, match="session_factory"):
        make_worker(None, clean_table, {"job": lambda task, ctx: None})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_types"):
        make_worker(session_factory, clean_table, {})


def test_owner_and_registry_model_are_validated(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    with pytest.raises(ValueError, match="owner"):
        make_worker(session_factory, clean_table, {"job": lambda task, ctx: None}, owner="")
    with pytest.raises(ValueError, match="owner"):
        make_worker(session_factory, clean_table, {"job": lambda task, ctx: None}, owner=123)  # type: ignore[arg-type]
    other = HandlerRegistry(declare_task_model("tasks_other_registry"))
    other.add("job", lambda task, ctx: None)
    with pytest.raises(ValueError, match="registered for"):
        make_worker(session_factory, clean_table, other)


def test_handler_registry(clean_table: type[Any]) -> None:
    registry = HandlerRegistry(clean_table)

    @registry.handler("email", timeout=timedelta(seconds=30))
    def email(task: Any, ctx: TaskContext) -> None:
        return None

    assert registry["email"] is email and list(registry) == ["email"] and len(registry) == 1
    spec = registry.spec("email")
    assert spec is not None and spec.timeout_seconds == 30
    with pytest.raises(ValueError, match="already registered"):
        registry.add("email", email)
    with pytest.raises(TypeError, match="not callable"):
        registry.add("sms", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_type"):
        registry.add("", email)
    with pytest.raises(TypeError, match="TaskMixin"):
        HandlerRegistry(object)


@only_on(
    "postgresql",
    reason="a handler holding SQLite's one write lock would block its own progress write",
)
def test_a_scoped_session_factory_never_lends_the_worker_a_handlers_session(
    session_factory: Factory, clean_table: type[Any]
) -> None:
    """Given a ``scoped_session`` (Flask-SQLAlchemy's ``db.session``), the worker makes
    sessions of its own from the scope's factory: a progress write must not commit (and
    close) the session the handler's thread holds through the same proxy."""
    scoped = scoped_session(session_factory)
    task_id = enqueue(session_factory, clean_table, "job")
    still_open: list[bool] = []

    def job(task: Any, ctx: TaskContext) -> str:
        TaskRepository(scoped, clean_table).enqueue("side", {})  # the handler's own work
        ctx.update_progress(50)
        ctx.flush_progress(force=True)
        still_open.append(scoped().in_transaction())  # not committed by the write
        scoped.rollback()  # the handler changes its mind
        scoped.remove()
        return "ok"

    worker = Worker(scoped, clean_table, {"job": job}, concurrency=1, listen=False)
    worker.run(until_empty=True, install_signal_handlers=False)
    assert still_open == [True]
    assert fetch(session_factory, clean_table, task_id).status == TaskStatus.COMPLETED
    with session_factory() as session:
        types = session.scalars(select(clean_table.type)).all()
    assert types == ["job"], "the handler's rolled-back enqueue was committed"
