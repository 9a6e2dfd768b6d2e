"""The table as it is in the database, checked where the queue starts using it.

A model is checked when it is declared; the live table may still be missing, or lack
columns or indexes (a migration not applied).  Workers check it once at start and the
``taskqueue`` commands before they run, naming what is missing and the fix.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import declare_task_model
from processes import WorkerProcess
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskRepository, TaskStatus, TaskTableError, Worker
from sqlalchemy_taskqueue.cli import cli


@pytest.fixture
def unmigrated(engine: Engine) -> Iterator[type[Any]]:
    """A task table whose last migration was not applied: it lacks the ``result``
    column and the unique dedupe index, and has a plain unique index in its place (the
    case that made ``enqueue_if_not_exists`` blame REPEATABLE READ)."""
    model = declare_task_model("live_unmigrated")
    model.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE live_unmigrated DROP COLUMN result"))
        connection.execute(text("DROP INDEX uq_live_unmigrated_active_dedupe"))
        connection.execute(
            text("CREATE UNIQUE INDEX live_unmigrated_key ON live_unmigrated (type, dedupe_key)")
        )
    yield model
    model.metadata.drop_all(engine)


def run_briefly(worker: Any) -> BaseException | None:
    """Run a long-running worker (not ``until_empty``) on a thread: what its ``run()``
    raised, or a failure if it was still running after 60 s (then it is stopped)."""
    raised: list[BaseException] = []

    def body() -> None:
        try:
            worker.run()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=60)
    if thread.is_alive():
        worker.stop()
        thread.join(timeout=30)
        pytest.fail("the worker kept running on an unusable table")
    return raised[0] if raised else None


def test_a_worker_on_a_missing_table_stops_at_once_naming_it(
    new_worker: Any, session_factory: sessionmaker[Session]
) -> None:
    model = declare_task_model("live_never_created")
    worker = new_worker(session_factory, model, {"job": lambda task, ctx: None}, poll_interval=0.05)
    raised = run_briefly(worker)
    assert isinstance(raised, TaskTableError), raised
    assert raised.table == "live_never_created" and raised.missing is None
    message = str(raised)
    assert "'live_never_created' does not exist" in message
    assert "alembic upgrade head" in message
    assert "create_task_table_v5('live_never_created')" in message


def test_a_worker_on_an_unmigrated_table_names_what_is_missing(
    new_worker: Any, session_factory: sessionmaker[Session], unmigrated: type[Any], engine: Engine
) -> None:
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO live_unmigrated (type, payload) VALUES ('job', '{}')"))
    worker = new_worker(
        session_factory, unmigrated, {"job": lambda task, ctx: None}, poll_interval=0.05
    )
    raised = run_briefly(worker)
    assert isinstance(raised, TaskTableError), raised
    assert raised.missing == ["column 'result'", "index 'uq_live_unmigrated_active_dedupe'"]
    assert "lacks what the queue needs: column 'result', index" in str(raised)
    assert "alembic upgrade head" in str(raised)
    with engine.connect() as connection:  # nothing was claimed
        status = connection.execute(text("SELECT status FROM live_unmigrated")).scalar_one()
    assert status == TaskStatus.PENDING


def test_the_table_is_checked_once_per_run_not_per_turn(
    session_factory: sessionmaker[Session], clean_table: type[Any], engine: Engine
) -> None:
    with session_factory() as session:
        TaskRepository(session, clean_table).enqueue_many("job", [{}, {}, {}])
        session.commit()
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        # one slot, no prefetch: a turn per task
        worker = one_slot_worker(session_factory, clean_table)
        worker.run(until_empty=True)
        worker.run(until_empty=True)  # a second run checks again
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert worker.stats.completed == 3
    index_reads = [s for s in statements if "pg_catalog.pg_index" in s]
    claims = [s for s in statements if "FOR UPDATE SKIP LOCKED" in s]
    assert len(index_reads) == 2 and len(claims) > 3


def one_slot_worker(session_factory: sessionmaker[Session], model: type[Any]) -> Worker[Any]:
    return Worker(
        session_factory,
        model,
        {"job": lambda task, ctx: None},
        concurrency=1,
        prefetch=0,
        listen=False,
        poll_interval=0.05,
    )


def test_enqueue_if_not_exists_names_the_missing_index(
    session_factory: sessionmaker[Session], unmigrated: type[Any]
) -> None:
    with session_factory() as session:  # closed (rolled back) before the table is dropped
        # without the partial unique index, a finished task's key conflicts for ever
        session.execute(
            text(
                "INSERT INTO live_unmigrated (type, payload, status, dedupe_key) "
                "VALUES ('job', '{}', 'completed', 'k')"
            )
        )
        repo = TaskRepository(session, unmigrated)
        with pytest.raises(TaskTableError, match="index 'uq_live_unmigrated_active_dedupe'"):
            repo.enqueue_if_not_exists("job", {}, dedupe_key="k")


def cli_run(database_url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, list(args), env={"TASKQUEUE_DATABASE_URL": database_url}, catch_exceptions=False
    )
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["stuck"],
        ["failed"],
        ["show", "1"],
        ["retry", "1"],
        ["cancel", "1"],
        ["cleanup", "--older-than", "1d"],
        ["enqueue", "job"],
    ],
)
def test_every_command_names_a_missing_table_and_the_fix(
    database_url: str, command: list[str]
) -> None:
    code, output = cli_run(database_url, *command, "--table", "live_no_such_table")
    assert code == 1
    assert "The queue table 'live_no_such_table' does not exist" in output
    assert "alembic upgrade head" in output and "Traceback" not in output


def test_a_command_on_an_unmigrated_table_names_what_is_missing_and_writes_nothing(
    database_url: str, unmigrated: type[Any], engine: Engine
) -> None:
    code, output = cli_run(database_url, "enqueue", "job", "--unique", "--table", "live_unmigrated")
    assert code == 1
    assert "column 'result', index 'uq_live_unmigrated_active_dedupe'" in output
    assert "alembic upgrade head" in output
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM live_unmigrated")).scalar_one() == 0


@pytest.mark.parametrize("options", [[], ["--async"]], ids=["sync", "async"])
def test_the_worker_command_exits_at_once_on_a_missing_table(
    empty_database_url: str, tmp_path: Path, options: list[str]
) -> None:
    # a long-running worker (no --until-empty): it used to retry for ever
    process = WorkerProcess(empty_database_url, tmp_path / "worker.log", *options)
    try:
        code = process.wait(timeout=60)
    finally:
        process.kill()
    output = process.output()
    assert code == 1, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("Error: The queue table 'proc_tasks' does not exist")
    assert "alembic upgrade head" in last
