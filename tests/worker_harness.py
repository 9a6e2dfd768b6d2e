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
    for_good: bool = False,
    refuse_key: str | None = None,
) -> Iterator[None]:
    """While in the block, the database refuses to mark a task of ``model`` completed
    (one whose payload has ``refuse_key``, or any) with ``message``: a trigger, as a
    storage quota would refuse it (an error worth retrying), or ``for_good`` as a value
    over a limit of the database would (PostgreSQL's SQLSTATE class 54; SQLite's
    ``string or blob too big``)."""
    table = model.__tablename__
    if engine.dialect.name == "sqlite":
        when = "NEW.status = 'completed'"
        if refuse_key is not None:
            when += f" AND json_extract(NEW.payload, '$.{refuse_key}') IS NOT NULL"
        refusal = "zeroblob(2000000000)" if for_good else f"RAISE(ABORT, '{message}')"
        create = [
            f"CREATE TRIGGER refuse BEFORE UPDATE ON {table} FOR EACH ROW WHEN {when} "
            f"BEGIN SELECT {refusal}; END"
        ]
        drop = ["DROP TRIGGER refuse"]
    else:
        errcode = "program_limit_exceeded" if for_good else "raise_exception"
        refuse = "TRUE" if refuse_key is None else f"NEW.payload ? '{refuse_key}'"
        create = [
            "CREATE FUNCTION refuse_completion() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF NEW.status = 'completed' AND ({refuse}) THEN "
            f"RAISE EXCEPTION '{message}' USING ERRCODE = '{errcode}'; "
            "END IF; RETURN NEW; END $$",
            f"CREATE TRIGGER refuse BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION refuse_completion()",
        ]
        drop = [f"DROP TRIGGER refuse ON {table}", "DROP FUNCTION refuse_completion()"]
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            # a pooled connection may hold the schema as it was before an earlier test
            # dropped the trigger; a read of the schema table brings it up to date
            connection.execute(text("SELECT count(*) FROM sqlite_master"))
        for statement in create:
            connection.execute(text(statement))
    try:
        yield
    finally:
        with engine.begin() as connection:
            for statement in drop:
                connection.execute(text(statement))
