"""What a person sees from ``taskqueue`` when something is wrong: exit code and text, run
as a real process (or through click's runner) against throwaway databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from click.testing import CliRunner
from processes import TESTS
from sqlalchemy import Column, Integer, MetaData, Table, create_engine
from sqlalchemy.orm import DeclarativeBase, Session

from sqlalchemy_taskqueue import TaskMixin, TaskRepository
from sqlalchemy_taskqueue.cli import cli
from sqlalchemy_taskqueue.worker import _base

UNREACHABLE = "postgresql://app:secret@127.0.0.1:1/queue"


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    __tablename__ = "tasks"


def invoke(url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, list(args), env={"TASKQUEUE_DATABASE_URL": url}, catch_exceptions=False
    )
    return result.exit_code, result.output


def run_python(code: str, *, url: str = UNREACHABLE) -> subprocess.CompletedProcess[str]:
    """``code`` in a new interpreter, with the test app importable."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(TESTS), "TASKQUEUE_DATABASE_URL": url},
        check=False,
    )


COMMANDS = [
    ["stats"],
    ["stuck"],
    ["failed"],
    ["show", "1"],
    ["retry", "1"],
    ["cancel", "1"],
    ["cleanup", "--older-than", "1d"],
    ["cleanup", "--older-than", "1d", "--dry-run"],
    ["enqueue", "email"],
]


# ---------------------------------------------------------------- a missing or unmigrated table


MISSING = (
    "Error: The queue table 'tasks' does not exist in the database. Create it: "
    "`alembic upgrade head` with a revision that calls "
    "sqlalchemy_taskqueue.migrations.create_task_table_v5('tasks')"
)
UNMIGRATED = (
    "Error: The queue table 'tasks' in the database lacks what the queue needs: column 'type'"
)


@pytest.mark.parametrize("table", ["missing", "unmigrated"])
@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: " ".join(args))
def test_every_command_names_a_missing_or_unmigrated_table_and_the_fix(
    args: list[str], table: str, empty_database_url: str
) -> None:
    if table == "unmigrated":  # a table without the queue's columns
        engine = create_engine(empty_database_url)
        Table("tasks", MetaData(), Column("id", Integer, primary_key=True)).create(engine)
        engine.dispose()
    code, output = invoke(empty_database_url, *args)
    assert code == 1
    assert output.startswith(MISSING if table == "missing" else UNMIGRATED)
    assert "`alembic upgrade head`" in output
    assert output.count("\n") == 1 and "Traceback" not in output


@pytest.mark.parametrize("use_async", [False, True])
def test_the_worker_exits_at_once_naming_a_missing_table(
    use_async: bool, empty_database_url: str
) -> None:
    args = ["worker", "queue_app:tasks", *(["--async"] if use_async else [])]
    result = run_python(
        f"from sqlalchemy_taskqueue.cli import main; main({args!r})", url=empty_database_url
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "does not exist" in line]
    assert errors == [
        "Error: The queue table 'proc_tasks' does not exist in the database. Create it: "
        "`alembic upgrade head` with a revision that calls "
        "sqlalchemy_taskqueue.migrations.create_task_table_v5('proc_tasks') "
        "(or Base.metadata.create_all(engine) without Alembic)."
    ]
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- a database that does not answer


def test_a_worker_says_once_per_retry_that_the_database_does_not_answer_then_gives_up() -> None:
    result = run_python(
        "import sqlalchemy_taskqueue.worker._base as base; base.UNTIL_EMPTY_PATIENCE = 1.0\n"
        "from sqlalchemy_taskqueue.cli import main\n"
        "main(['worker', 'queue_app:tasks', '--until-empty', '--poll-interval', '0.1s'])"
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr and "[SQL" not in result.stderr
    assert "secret" not in result.stderr
    retries = [line for line in lines if "worker.database_unavailable" in line]
    assert retries
    for line in retries:
        assert " level=WARNING " in line
        assert "url=postgresql+psycopg2://app:***@127.0.0.1:1/queue retry_in=" in line
        assert 'error=OperationalError: connection to server at "127.0.0.1", port 1 failed' in line
    assert lines[-1] == (
        "Error: the database at postgresql+psycopg2://app:***@127.0.0.1:1/queue did not answer "
        "for 1s, so the run until empty gives up: OperationalError: connection to server at "
        '"127.0.0.1", port 1 failed: Connection refused'
    )


def test_a_batch_run_gives_up_after_the_documented_patience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_base, "UNTIL_EMPTY_PATIENCE", 0.3)
    code, output = invoke(
        "postgresql://nobody@127.0.0.1:1/none",
        "worker",
        "queue_app:tasks",
        "--until-empty",
        "--no-listen",
        "--poll-interval",
        "0.01",
    )
    assert code == 1
    assert output.startswith(
        "Error: the database at postgresql+psycopg2://nobody@127.0.0.1:1/none did not answer "
        "for 0.3s, so the run until empty gives up: OperationalError: "
    )


def test_an_operator_command_says_in_one_line_that_the_database_does_not_answer() -> None:
    code, output = invoke(UNREACHABLE, "stats")
    assert code == 1
    assert output.startswith(
        "Error: cannot use the queue at postgresql+psycopg2://app:***@127.0.0.1:1/queue "
        "(table tasks): "
    )
    assert output.count("\n") == 1 and "secret" not in output


# ---------------------------------------------------------------- missing extras


def test_the_command_line_without_its_extra_names_it() -> None:
    result = run_python(
        "import sys; sys.modules['click'] = None\n"
        "from sqlalchemy_taskqueue.cli import main\nmain(['stats'])"
    )
    assert result.returncode == 2
    assert result.stderr == (
        "taskqueue: the taskqueue command needs the 'cli' extra (click is not installed): "
        "pip install 'sqlalchemy-taskqueue[cli]'\n"
    )


@pytest.mark.parametrize(
    ("module", "option", "extra"),
    [("prometheus_client", "--metrics-port", "metrics"), ("asyncpg", "--async", "async")],
)
def test_a_worker_option_without_its_extra_names_it(module: str, option: str, extra: str) -> None:
    args = ["worker", "queue_app:tasks", option, *(["9"] if option == "--metrics-port" else [])]
    result = run_python(
        f"import sys; sys.modules[{module!r}] = None\n"
        f"from sqlalchemy_taskqueue.cli import main\nmain({args!r})"
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"Error: {option} needs the '{extra}' extra ({module} is not installed): "
        f"pip install 'sqlalchemy-taskqueue[{extra}]'"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("module", "code", "message"),
    [
        (
            "alembic",
            "from sqlalchemy_taskqueue.migrations import create_task_table_v5\n"
            "create_task_table_v5('tasks')",
            "sqlalchemy_taskqueue.migrations needs the 'migrations' extra (alembic is not installed): "
            "pip install 'sqlalchemy-taskqueue[migrations]'",
        ),
        (
            "prometheus_client",
            "import sqlalchemy_taskqueue.contrib.prometheus",
            "sqlalchemy_taskqueue.contrib.prometheus needs the 'metrics' extra "
            "(prometheus_client is not installed): pip install 'sqlalchemy-taskqueue[metrics]'",
        ),
        (
            "cronsim",
            "from sqlalchemy_taskqueue import HandlerRegistry\n"
            "HandlerRegistry().schedule('report', cron='0 3 * * *')",
            "a cron schedule needs the 'periodic' extra (cronsim is not installed): "
            "pip install 'sqlalchemy-taskqueue[periodic]'",
        ),
    ],
)
def test_a_library_feature_without_its_extra_names_it(module: str, code: str, message: str) -> None:
    result = run_python(
        f"import sys; sys.modules[{module!r}] = None\n"
        "from sqlalchemy_taskqueue.exceptions import MissingExtraError\n"
        f"try:\n    {code.replace(chr(10), chr(10) + '    ')}\n"
        "except MissingExtraError as exc:\n    print(exc)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == message + "\n"


# ---------------------------------------------------------------- tasks nobody handles


@pytest.fixture
def queue_url(empty_database_url: str) -> str:
    engine = create_engine(empty_database_url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        repo = TaskRepository(session, Task)
        repo.enqueue("orphan", {})
        claimed_type = repo.enqueue("email", {})
        repo.enqueue("email", {})
        session.commit()
        assert repo.dequeue("email").id == claimed_type  # type: ignore[union-attr]
        # a worker with handlers for both types is running (it just has not claimed)
        repo._record_worker(
            {
                "worker_id": "w:1:x",
                "host": "w",
                "pid": 1,
                "task_types": ["email", "orphan"],
                "slots": 1,
                "version": "1",
            },
            timedelta(minutes=5),
        )
        session.commit()
    engine.dispose()
    return empty_database_url


def test_stats_marks_types_no_worker_has_claimed_lately(queue_url: str) -> None:
    code, output = invoke(queue_url, "stats")
    assert code == 0
    assert "orphan (unclaimed)" in output and "email (unclaimed)" not in output
    assert (
        "(unclaimed): ready tasks, none claimed in the last hour: is a worker with a handler "
        "for this type running?"
    ) in output
    code, output = invoke(queue_url, "stats", "--json")
    assert code == 0 and json.loads(output)["unclaimed_types"] == ["orphan"]
