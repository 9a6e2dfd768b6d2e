"""Shared fixtures: one throw-away PostgreSQL database per test run.

The server comes from ``TASKQUEUE_TEST_DATABASE_URL`` / ``TASKQUEUE_DATABASE_URL``, then
PostgreSQL on 127.0.0.1:5432, then an embedded server (``.taskqueue-pg/``).  A fresh
database is created for the run and dropped at the end, so nothing is left behind.
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from backends import engine_for, skip_unless_backend
from sqlalchemy import Engine, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from sqlalchemy_taskqueue import TaskMixin, TaskRepository
from sqlalchemy_taskqueue._concurrency import key_slots_table
from sqlalchemy_taskqueue._controls import controls_table
from sqlalchemy_taskqueue._registry import workers_table
from sqlalchemy_taskqueue._urls import DATABASE_URL_ENV, TEST_DATABASE_URL_ENV
from sqlalchemy_taskqueue.contrib.testing import resolve_database_url, throwaway_database
from sqlalchemy_taskqueue.scheduling._table import schedules_table

# a sitecustomize for worker processes with a skewed clock: never import it here
collect_ignore = ["faults/skewed_clock"]

# the tests' shared steps assert too: report their failures as a test's own
pytest.register_assert_rewrite("repository_harness", "worker_harness")


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, None, None]:
    """Run the test body in SQLAlchemy's greenlet bridge when a fixture gave it an async
    session (``twins.async_session_for``), so sync test code does async I/O."""
    loop = getattr(pyfuncitem, "async_twin_loop", None)
    if loop is None:
        yield
        return
    from sqlalchemy.util import greenlet_spawn

    test = pyfuncitem.obj

    @functools.wraps(test)
    def in_greenlet(**kwargs: Any) -> Any:
        return loop.run_until_complete(greenlet_spawn(test, **kwargs))

    pyfuncitem.obj = in_greenlet
    try:
        yield
    finally:
        pyfuncitem.obj = test


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a conformance test marked ``only_on`` on the other databases."""
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("database_url") if callspec is not None else None
    if backend is not None:
        skip_unless_backend(item, backend)


@pytest.fixture(scope="session")
def server_url() -> str:
    return resolve_database_url(TEST_DATABASE_URL_ENV, DATABASE_URL_ENV)


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A database created for this test run, dropped afterwards."""
    with throwaway_database(server_url) as url:
        yield url


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A database of the test's own (for migrations and schema comparisons)."""
    with throwaway_database(server_url) as url:
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    yield from engine_for(database_url)


@pytest.fixture(scope="session")
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine)


def declare_task_model(table_name: str, **columns: Any) -> type[Any]:
    """A fresh declarative base and task model (one per test module)."""

    class Base(DeclarativeBase):
        pass

    namespace: dict[str, Any] = {"__tablename__": table_name, **columns}
    return type(f"Task_{table_name}", (TaskMixin, Base), namespace)


def with_tables(engine: Engine, model: type[Any]) -> Iterator[type[Any]]:
    """For a fixture: ``model`` with its metadata's tables created, dropped afterwards."""
    model.metadata.create_all(engine)
    yield model
    model.metadata.drop_all(engine)


@pytest.fixture(scope="module")
def task_model(request: pytest.FixtureRequest, engine: Engine) -> Iterator[type[Any]]:
    """A task table private to the test module, dropped when the module is done."""
    table_name = f"tasks_{request.module.__name__.rsplit('.', 1)[-1]}"
    model = declare_task_model(table_name)
    model.metadata.create_all(engine)
    yield model
    model.metadata.drop_all(engine)


@pytest.fixture
def clean_table(task_model: type[Any], engine: Engine) -> type[Any]:
    """The module's task model, with its table (and the queue's auxiliary tables: its
    schedules, pauses and limits) emptied before the test."""
    empty_tables(engine, queue_tables(task_model))
    return task_model


def empty_tables(engine: Engine, tables: list[Any]) -> None:
    """Delete every row of ``tables``; new rows are numbered from 1 again."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":  # rowids restart above the largest one left
            for table in tables:
                connection.execute(table.delete())
            return
        names = ", ".join(table.name for table in tables)
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))


def queue_tables(model: type[Any]) -> list[Any]:
    """The task table of ``model`` and the auxiliary tables of its queue."""
    table = model.__table__
    return [
        table,
        schedules_table(table),
        controls_table(table),
        key_slots_table(table),
        workers_table(table),
    ]


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture
def repo(session: Session, clean_table: type[Any]) -> TaskRepository[Any]:
    return TaskRepository(session, clean_table)


@pytest.fixture(params=["sync", "async", "async-def"])
def new_worker(request: pytest.FixtureRequest) -> Any:
    """``new_worker(session_factory, model, handlers, **options)``: a ``Worker``, or an
    ``AsyncWorker`` over asyncpg driven like one (``twins.AsyncWorkerRunner``), running
    the test's handlers on its threads (``async``) or as coroutines (``async-def``); a
    test taking this fixture runs against every one."""
    from twins import worker_maker

    return worker_maker(request.param)


@pytest.fixture
def run(database_url: str, clean_table: type[Any]) -> Any:
    """``run(*args)``: the ``taskqueue`` command on the test's queue (its database and
    table from the environment, as an operator's shell would give them); its exit code
    and output."""
    from click.testing import CliRunner

    from sqlalchemy_taskqueue.cli import cli

    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            cli,
            args,
            env={
                "TASKQUEUE_DATABASE_URL": database_url,
                "TASKQUEUE_TABLE": clean_table.__tablename__,
            },
        )
        return result.exit_code, result.output

    return invoke
