"""What the worker tests share: tasks enqueued and read back in sessions of their own,
the ``make_worker`` fixture (every worker twin, polling quickly, with short leases)
and handlers that wait for the test.

``make_worker`` is not found by pytest here: the ``conftest.py`` of each folder whose
worker tests use it imports it (``conformance/``, ``postgresql/``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskContext, TaskRepository

Factory = sessionmaker[Session]


def enqueue(
    factory: Factory, model: type[Any], task_type: str, payload: Any = None, **kw: Any
) -> int:
    with factory() as session:
        task_id = TaskRepository(session, model).enqueue(task_type, payload or {}, **kw)
        session.commit()
    return task_id


def fetch(factory: Factory, model: type[Any], task_id: int) -> Any:
    with factory() as session:
        task = TaskRepository(session, model).get_task(task_id)
        assert task is not None
        session.expunge(task)
    return task


MakeWorker = Callable[..., Any]


@pytest.fixture
def make_worker(new_worker: MakeWorker) -> MakeWorker:
    """``new_worker`` with quick polls and short leases: every test here runs against
    both twins."""

    def configured(factory: Any, model: type[Any], handlers: Any, **kw: Any) -> Any:
        kw.setdefault("poll_interval", 0.05)
        kw.setdefault("lease_duration", 5)
        return new_worker(factory, model, handlers, **kw)

    configured.twin = new_worker.twin  # type: ignore[attr-defined]
    return configured


class Gate:
    """A handler that says it started, then waits (ignoring stop requests) for the test
    to let it finish."""

    def __init__(self, result: Any = "ok") -> None:
        self.started = threading.Event()
        self.proceed = threading.Event()
        self.result = result
        self.stop_seen: list[bool] = []

    def __call__(self, task: Any, ctx: TaskContext) -> Any:
        self.started.set()
        assert self.proceed.wait(10)
        self.stop_seen.append(ctx.should_stop())
        return self.result


def wait_until_stopped(task: Any, ctx: TaskContext) -> str:
    while not ctx.should_stop():
        time.sleep(0.01)  # the handler's own work loop
    return "finished late"


@contextmanager
def completions_refused(
    engine: Engine,
    model: type[Any],
    message: str,
    *,
    errcode: str = "raise_exception",
    refuse: str = "TRUE",
) -> Iterator[None]:
    """While in the block, the database refuses to mark a task of ``model`` completed
    (when ``refuse``, an SQL condition on ``NEW``, holds) with ``message`` and the
    SQLSTATE condition ``errcode``: a trigger, as a storage quota or a value over a limit
    of the database would refuse it."""
    table = model.__tablename__
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE FUNCTION refuse_completion() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN IF NEW.status = 'completed' AND ({refuse}) THEN "
                f"RAISE EXCEPTION '{message}' USING ERRCODE = '{errcode}'; "
                "END IF; RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                f"CREATE TRIGGER refuse BEFORE UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse_completion()"
            )
        )
    try:
        yield
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TRIGGER refuse ON {table}"))
            connection.execute(text("DROP FUNCTION refuse_completion()"))
