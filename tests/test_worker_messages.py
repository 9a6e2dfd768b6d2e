"""What a person sees from a worker when something is wrong: a database that does not
answer, a table that is missing, tasks nobody handles, a handler that cannot be called,
and a worker run from Python in an application that configured no logging."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from processes import TESTS, wait_for
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from twins import TWINS, async_url

from sqlalchemy_taskqueue import (
    AsyncWorker,
    HandlerRegistry,
    TaskMixin,
    TaskQueueDatabaseError,
    TaskRepository,
    TaskTableError,
    Worker,
)
from sqlalchemy_taskqueue.worker import _base

UNREACHABLE = "postgresql://app:secret@127.0.0.1:1/queue"


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    __tablename__ = "message_tasks"


def done(task: Any, ctx: Any) -> None:
    return None


def run_twin(
    twin: str, url: str, handlers: Any, *, until_empty: bool = True, **options: Any
) -> Any:
    """Build the ``twin`` worker for ``url`` and run it (``until_empty``); returns it."""
    options = {"poll_interval": 0.05, "listen": False, **options}
    if twin == "sync":
        engine = create_engine(url)
        worker: Any = Worker(sessionmaker(engine), Task, handlers, **options)
        try:
            worker.run(until_empty=until_empty)
        finally:
            engine.dispose()
        return worker
    async_engine = create_async_engine(async_url(url))
    worker = AsyncWorker(async_sessionmaker(async_engine), Task, handlers, **options)

    async def work() -> None:
        try:
            await worker.run(until_empty=until_empty)
        finally:
            await async_engine.dispose()

    asyncio.run(work())
    return worker


@pytest.fixture
def tables(engine: Engine) -> Iterator[None]:
    Base.metadata.create_all(engine)
    yield
    Base.metadata.drop_all(engine)


# ---------------------------------------------------------------- a database that does not answer


@pytest.mark.parametrize("twin", TWINS)
def test_a_run_until_empty_gives_up_on_a_database_that_does_not_answer(
    twin: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_base, "UNTIL_EMPTY_PATIENCE", 0.5)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy_taskqueue")
    with pytest.raises(TaskQueueDatabaseError) as raised:
        run_twin(twin, UNREACHABLE, {"email": done})
    message = str(raised.value)
    assert message.startswith("the database at postgresql")
    assert ":***@127.0.0.1:1/queue did not answer for 0.5s, so the run until empty gives up: " in (
        message
    )
    assert "secret" not in message and "\n" not in message
    retries = [
        r for r in caplog.records if r.getMessage().startswith("worker.database_unavailable url=")
    ]
    assert retries, caplog.text
    for record in retries:  # one line each, at WARNING, naming the URL and the next delay
        assert record.levelno == logging.WARNING and record.exc_info is None
        text = record.getMessage()
        assert "\n" not in text and "secret" not in text and "retry_in=" in text
        assert "url=postgresql" in text and ":***@127.0.0.1:1/queue" in text
    # the tracebacks only at DEBUG
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.exc_info)
    assert "[SQL" not in caplog.text


def test_a_worker_keeps_retrying_a_database_that_does_not_answer(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Databases restart: a worker that is not draining the queue does not give up."""
    monkeypatch.setattr(_base, "UNTIL_EMPTY_PATIENCE", 0.01)
    caplog.set_level(logging.WARNING, logger="sqlalchemy_taskqueue")
    engine = create_engine(UNREACHABLE)
    worker = Worker(sessionmaker(engine), Task, {"email": done}, poll_interval=0.02, listen=False)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        wait_for(lambda: caplog.text.count("worker.database_unavailable") >= 4)
    finally:
        worker.stop()
        runner.join(timeout=10)
        engine.dispose()
    assert not runner.is_alive() and errors == []


# ---------------------------------------------------------------- a missing or unmigrated table


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("until_empty", [True, False])
def test_a_missing_table_ends_the_run_at_once_with_the_fix(
    twin: str, until_empty: bool, empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(TaskTableError) as raised:
        run_twin(twin, empty_database_url, {"email": done}, until_empty=until_empty)
    assert str(raised.value).startswith(
        "The queue table 'message_tasks' does not exist in the database. Create it: "
        "`alembic upgrade head` with a revision that calls "
        "sqlalchemy_taskqueue.migrations.create_task_table_v5('message_tasks')"
    )
    assert raised.value.table == "message_tasks"
    # said once, by the error; nothing logged it with a traceback on the way
    assert "does not exist" not in caplog.text and "Traceback" not in caplog.text


# ---------------------------------------------------------------- tasks nobody handles


@pytest.mark.parametrize("twin", TWINS)
def test_a_worker_names_pending_types_it_has_no_handler_for_once(
    twin: str,
    tables: None,
    session_factory: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with session_factory() as session:
        repo = TaskRepository(session, Task)
        repo.enqueue("email", {})
        repo.enqueue_many("report", [{}, {}])
        repo.enqueue("invoice", {})
        session.commit()
    url = str(session_factory.kw["bind"].url.render_as_string(hide_password=False))
    caplog.set_level(logging.INFO, logger="sqlalchemy_taskqueue")
    run_twin(twin, url, {"email": done})
    lines = [r for r in caplog.records if "worker.unhandled_types" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in lines] == [
        (
            logging.WARNING,
            "worker.unhandled_types types=invoice,report (pending tasks of these types wait "
            "for a worker with a handler for them; this one has none, and does not claim them)",
        )
    ]


def test_each_unhandled_type_is_named_once_per_worker(
    tables: None, session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    with session_factory() as session:
        TaskRepository(session, Task).enqueue("report", {})
        session.commit()
    caplog.set_level(logging.INFO, logger="sqlalchemy_taskqueue")
    worker = Worker(session_factory, Task, {"email": done}, poll_interval=0.05, listen=False)
    worker.run(until_empty=True)
    worker.run(until_empty=True)
    assert caplog.text.count("worker.unhandled_types") == 1


# ---------------------------------------------------------------- handlers that cannot be called


def one_argument(payload: Any) -> None:
    return None


class OneArgument:
    def __call__(self, payload: Any) -> None:
        return None


class TaskAndContext:
    def __call__(self, task: Any, ctx: Any) -> None:
        return None


def three(prefix: str, task: Any, ctx: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("handler", "shown", "reason"),
    [
        (one_argument, "one_argument", "too many positional arguments"),
        (OneArgument(), "OneArgument", "too many positional arguments"),
        (functools.partial(three, "a", "b"), "three", "too many positional arguments"),
        (lambda task, ctx, extra: None, "<lambda>", "missing a required argument: 'extra'"),
    ],
)
def test_a_handler_that_cannot_take_task_and_ctx_is_refused_at_registration(
    handler: Any, shown: str, reason: str
) -> None:
    expected = f"the handler for 'email' ({shown}) cannot be called as handler(task, ctx): {reason}"
    registry = HandlerRegistry(Task)
    with pytest.raises(TypeError) as decorated:
        registry.handler("email")(handler)
    assert str(decorated.value) == expected
    with pytest.raises(TypeError) as added:
        registry.add("email", handler)
    assert str(added.value) == expected
    assert "email" not in registry
    with pytest.raises(TypeError) as mapped:
        Worker(sessionmaker(), Task, {"email": handler})
    assert str(mapped.value) == expected


@pytest.mark.parametrize(
    "handler",
    [done, TaskAndContext(), functools.partial(three, "a"), lambda *args: None, print],
)
def test_handlers_that_take_task_and_ctx_are_accepted(handler: Any) -> None:
    registry = HandlerRegistry(Task)
    registry.add("email", handler)
    Worker(sessionmaker(), Task, {"email": handler})
    assert registry["email"] is handler


# ---------------------------------------------------------------- logging from Python

SCRIPT = """
import logging, sys
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker
from twins import async_url
from test_worker_messages import Base, Task, done
from sqlalchemy_taskqueue import AsyncWorker, Worker
import asyncio

url, twin, configure = sys.argv[1:]
if configure == "yes":
    logging.basicConfig(level=logging.WARNING)
engine = create_engine(url)
Base.metadata.create_all(engine)
try:
    if twin == "sync":
        Worker(sessionmaker(engine), Task, {"email": done}, listen=False).run(until_empty=True)
    else:
        async def work():
            async_engine = create_async_engine(async_url(url))
            await AsyncWorker(
                async_sessionmaker(async_engine), Task, {"email": done}, listen=False
            ).run(until_empty=True)
            await async_engine.dispose()
        asyncio.run(work())
finally:
    Base.metadata.drop_all(engine)
    engine.dispose()
package = logging.getLogger("sqlalchemy_taskqueue")
print("after run:", package.handlers, logging.getLevelName(package.level))
"""


def run_script(url: str, twin: str, configure: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), url, twin, configure],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{TESTS.parent}"},
        check=False,
    )


@pytest.mark.parametrize("twin", TWINS)
def test_a_worker_run_from_python_logs_when_the_app_configured_no_logging(
    twin: str, empty_database_url: str
) -> None:
    result = run_script(empty_database_url, twin, "no")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(
        " level=INFO logger=sqlalchemy_taskqueue.worker worker.started owner=" in line
        for line in lines
    ), result.stderr
    assert any("worker.stopped completed=0" in line for line in lines), result.stderr
    # removed again when run() returns; the root logger was never touched
    assert result.stdout == "after run: [] NOTSET\n"


@pytest.mark.parametrize("twin", TWINS)
def test_logging_configured_by_the_app_wins(twin: str, empty_database_url: str) -> None:
    result = run_script(empty_database_url, twin, "yes")
    assert result.returncode == 0, result.stderr
    assert "worker.started" not in result.stderr  # INFO: below the app's WARNING
    assert result.stdout == "after run: [] NOTSET\n"
