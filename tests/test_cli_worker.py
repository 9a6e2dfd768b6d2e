"""``taskqueue worker``: loading the app, arguments, errors and a real run."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from queue_app import Base, Task
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskRepository, TaskStatus
from sqlalchemy_taskqueue.cli import cli


@pytest.fixture
def app_tables(engine: Engine) -> Iterator[None]:
    Base.metadata.create_all(engine)
    yield
    Base.metadata.drop_all(engine)


def invoke(*args: str, url: str | None = None) -> tuple[int, str]:
    env = {"TASKQUEUE_DATABASE_URL": url} if url else {}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def test_help_documents_every_option() -> None:
    code, output = invoke("worker", "--help")
    assert code == 0
    for option in (
        "--database-url",
        "--concurrency",
        "--types",
        "--lease",
        "--poll-interval",
        "--grace",
        "--prefetch",
        "--timeout",
        "--no-listen",
        "--until-empty",
        "--model",
        "--async",
        "TASKQUEUE_DATABASE_URL",
    ):
        assert option in output


def test_the_worker_command_processes_tasks(
    app_tables: None, database_url: str, session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        ids = TaskRepository(session, Task).enqueue_many("count", [{"n": 1}, {"n": 2}])
        session.commit()
    code, _ = invoke(
        "worker", "queue_app:tasks", "--until-empty", "--types", "count", url=database_url
    )
    assert code == 0
    with session_factory() as session:
        repo = TaskRepository(session, Task)
        assert [repo.get_task(task_id).status for task_id in ids] == [TaskStatus.COMPLETED] * 2  # type: ignore[union-attr]


def test_the_async_worker_runs_with_libpq_url_parameters(
    app_tables: None,
    database_url: str,
    session_factory: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``--async`` through asyncpg on a URL carrying libpq parameters (moved to the
    names asyncpg takes), the way managed PostgreSQL URLs come."""
    with session_factory() as session:
        ids = TaskRepository(session, Task).enqueue_many("count", [{"n": 1}, {"n": 2}])
        session.commit()
    url = make_url(database_url).update_query_dict(
        {"sslmode": "disable", "application_name": "tq-cli", "connect_timeout": "5"}
    )
    with caplog.at_level(logging.INFO, logger="sqlalchemy_taskqueue.worker"):
        code, output = invoke(
            "worker",
            "queue_app:tasks",
            "--until-empty",
            "--async",
            "--types",
            "count",
            url=url.render_as_string(hide_password=False),
        )
    assert code == 0, output
    assert "async=True" in caplog.text
    with session_factory() as session:
        repo = TaskRepository(session, Task)
        assert [repo.get_task(task_id).status for task_id in ids] == [TaskStatus.COMPLETED] * 2  # type: ignore[union-attr]


def test_a_url_parameter_asyncpg_cannot_take_is_a_usage_error() -> None:
    code, output = invoke(
        "worker",
        "queue_app:tasks",
        "--async",
        url="postgresql://nobody@127.0.0.1:1/none?krbsrvname=x&keepalives=1",
    )
    assert code == 2 and "'keepalives' has no asyncpg equivalent" in output


def test_the_password_is_masked_in_the_log(
    app_tables: None, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_url(database_url).set(password="hunter2").render_as_string(hide_password=False)
    # trust authentication ignores the password, so the worker runs normally
    with caplog.at_level(logging.INFO):
        code, output = invoke("worker", "queue_app:tasks", "--until-empty", url=url)
    assert code == 0
    assert "hunter2" not in output + caplog.text
    assert ":***@" in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "queue_app"], "MODULE:ATTR"),
        (["worker", "no_such_module_xyz:tasks"], "cannot import"),
        (["worker", "queue_app:missing"], "no attribute"),
        (["worker", "queue_app:Task"], "not a HandlerRegistry"),
        (["worker", "queue_app:tasks", "--lease", "soon"], "invalid duration"),
        (["worker", "queue_app:tasks", "--concurrency", "0"], "0"),
        (["worker", "queue_app:tasks", "--concurrency", "1001"], "1<=x<=1000"),
        (["worker", "queue_app:tasks", "--prefetch", "1000000000"], "0<=x<=10000"),
        (["worker", "queue_app:tasks", "--lease", "0.5s"], "at least 1 second"),
        (["worker", "queue_app:tasks", "--types", ","], "at least one task type"),
        (["worker", "queue_app:tasks", "--model", "queue_app:Execution"], "TaskMixin"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_clear_message(args: list[str], message: str) -> None:
    code, output = invoke(*args, url="postgresql://nobody@127.0.0.1:1/none")
    assert code == 2
    assert message in output


def test_an_unparsable_database_url_is_a_usage_error() -> None:
    for args in (["worker", "queue_app:tasks"], ["stats"]):
        code, output = invoke(*args, url="not a url at all")
        assert code == 2 and "--database-url" in output and "is not a database URL" in output


def test_a_missing_database_url_is_reported() -> None:
    code, output = invoke("worker", "queue_app:tasks")
    assert code == 2 and "TASKQUEUE_DATABASE_URL" in output


def test_a_metrics_port_in_use_is_reported_clearly() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, output = invoke(
            "worker",
            "queue_app:tasks",
            "--metrics-port",
            str(port),
            url="postgresql://nobody@127.0.0.1:1/none",
        )
    assert code == 2
    assert "--metrics-port" in output and str(port) in output and "in use" in output
