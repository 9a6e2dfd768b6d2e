"""Hostile and oversized input: clear errors, nothing written, nothing executed."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import BigInteger, Column, Table, Text, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, registry

from sqlalchemy_taskqueue import (
    TaskMixin,
    TaskRepository,
    TaskStatus,
    Worker,
)
from sqlalchemy_taskqueue._validation import MAX_DEDUPE_KEY_BYTES, RUN_AT_PAST_LIMIT
from sqlalchemy_taskqueue.cli import cli

Repo = TaskRepository[Any]
HOSTILE = "'; DROP TABLE tasks; --"


def row_count(session: Session, model: type[Any]) -> int:
    session.rollback()
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


# ---------------------------------------------------------------- payload size


def test_payloads_over_the_default_limit_are_refused(repo: Repo, session: Session) -> None:
    big = {"blob": "x" * (1024 * 1024)}
    with pytest.raises(ValueError, match=r"over the limit of 1048576 \(max_payload_bytes\)"):
        repo.enqueue("a", big)
    with pytest.raises(ValueError, match="max_payload_bytes"):
        repo.enqueue_many("a", [{}, big])
    with pytest.raises(ValueError, match="max_payload_bytes"):
        repo.enqueue_if_not_exists("a", big)
    assert row_count(session, repo.model) == 0


def test_the_payload_limit_is_configurable(session: Session, clean_table: type[Any]) -> None:
    small = TaskRepository(session, clean_table, max_payload_bytes=64)
    small.enqueue("a", {"fits": "x" * 40})
    with pytest.raises(ValueError, match="over the limit of 64"):
        small.enqueue("a", {"too": "x" * 60})
    # the limit is per payload: a batch larger than it as a whole is fine ...
    ids = small.enqueue_many("a", [{"fits": "x" * 40} for _ in range(10)])
    # ... and the payload over it is named, wherever it is in the batch
    with pytest.raises(ValueError, match=r"payload #7 is .* over the limit of 64"):
        small.enqueue_many("a", [{"n": n} for n in range(7)] + [{"too": "x" * 60}])
    with pytest.raises(ValueError, match="payload #1 contains a NUL"):
        small.enqueue_many("a", [{}, {"nul": "a\x00b"}])
    unlimited = TaskRepository(session, clean_table, max_payload_bytes=None)
    unlimited.enqueue("a", {"blob": "x" * (2 * 1024 * 1024)})
    session.commit()
    assert row_count(session, clean_table) == 2 + len(ids)
    assert [small.get_task(task_id).payload for task_id in ids] == [{"fits": "x" * 40}] * 10  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("limit", "error"), [(0, ValueError), (-1, ValueError), ("1MB", TypeError), (True, TypeError)]
)
def test_bad_payload_limits_are_refused(
    session: Session, clean_table: type[Any], limit: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="max_payload_bytes"):
        TaskRepository(session, clean_table, max_payload_bytes=limit)


# ---------------------------------------------------------------- other values


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "non-empty"),
        (7, "non-empty string"),
        ("nul\x00key", "NUL"),
        ("k" * (MAX_DEDUPE_KEY_BYTES + 1), "at most 1024 bytes"),
        ("é" * 600, "at most 1024 bytes"),  # 600 characters, 1200 bytes
    ],
)
def test_bad_dedupe_keys_are_refused(repo: Repo, session: Session, key: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        repo.enqueue_if_not_exists("a", {}, dedupe_key=key)
    assert row_count(session, repo.model) == 0


def test_run_at_limits_allow_a_recent_past_and_a_distant_future(
    repo: Repo, session: Session
) -> None:
    now = datetime.now(timezone.utc)
    recent = repo.enqueue("a", {}, run_at=now - RUN_AT_PAST_LIMIT + timedelta(hours=1))
    distant = repo.enqueue("a", {}, run_at=now + timedelta(days=3650))
    session.commit()
    assert repo.dequeue("a").id == recent  # type: ignore[union-attr]
    assert repo.dequeue("a") is None  # ``distant`` is not due for ten years
    assert repo.get_task(distant) is not None


# ---------------------------------------------------------------- bound parameters


def test_hostile_strings_are_stored_as_data(
    repo: Repo, session: Session, clean_table: type[Any]
) -> None:
    payload = {HOSTILE: HOSTILE, "nested": [{f"{HOSTILE}\\": "x"}]}
    task_id = repo.enqueue(HOSTILE, payload)
    unique_id, created = repo.enqueue_if_not_exists(HOSTILE, {}, dedupe_key=HOSTILE)
    session.commit()
    assert created
    table_names = inspect(session.connection()).get_table_names()
    assert clean_table.__tablename__ in table_names
    task = repo.get_task(task_id)
    assert task is not None and (task.type, task.payload) == (HOSTILE, payload)
    assert repo.get_task_progress(HOSTILE, **{HOSTILE: HOSTILE}) == 0
    claimed = repo.dequeue_many(HOSTILE, limit=5)
    assert {t.id for t in claimed} == {task_id, unique_id}
    for claimed_task in claimed:
        repo.fail_task(claimed_task.id, HOSTILE, retry=False)
    session.commit()
    failures = repo.recent_failures(task_type=HOSTILE)
    assert {failure.error_message for failure in failures} == {HOSTILE}
    counts = {(row.task_type, row.status): row.count for row in repo.status_counts()}
    assert counts == {(HOSTILE, TaskStatus.FAILED): 2}


def test_hostile_strings_through_the_cli(
    database_url: str, repo: Repo, session: Session, clean_table: type[Any]
) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "enqueue",
            HOSTILE,
            "--payload",
            f'{{"{HOSTILE}": 1}}',
            "--table",
            clean_table.__tablename__,
        ],
        env={"TASKQUEUE_DATABASE_URL": database_url},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    task = repo.get_task(int(result.output.split()[-1]))
    assert task is not None and (task.type, task.payload) == (HOSTILE, {HOSTILE: 1})
    for bad_table in (HOSTILE, "tasks; DROP TABLE x"):
        result = CliRunner().invoke(
            cli,
            ["stats", "--table", bad_table],
            env={"TASKQUEUE_DATABASE_URL": database_url},
            catch_exceptions=False,
        )
        assert result.exit_code != 0
        assert "Traceback" not in result.output
    assert clean_table.__tablename__ in inspect(session.connection()).get_table_names()


# ---------------------------------------------------------------- models


def test_a_model_missing_columns_and_indexes_is_refused_at_repository_creation(
    session: Session,
) -> None:
    mapper_registry = registry()
    legacy = Table(
        "legacy_tasks",
        mapper_registry.metadata,
        Column("id", BigInteger, primary_key=True),
        Column("type", Text),
    )

    class Legacy(TaskMixin):
        pass

    mapper_registry.map_imperatively(Legacy, legacy)
    with pytest.raises(TypeError) as raised:
        TaskRepository(session, Legacy)
    message = str(raised.value)
    assert "Legacy (table 'legacy_tasks') lacks what the queue needs" in message
    for missing in (
        "column 'payload'",
        "column 'lease_token'",
        "index 'ix_legacy_tasks_claimable'",
    ):
        assert missing in message
    assert "column 'type'" not in message


def test_a_legacy_model_without_the_mixin_is_told_what_it_lacks(session: Session) -> None:
    """An app's own task model, declared without ``TaskMixin``: the error names the
    mixin and every column and index its table lacks, not only the mixin."""
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    class LegacyJob(Base):
        __tablename__ = "legacy_jobs"
        id = Column(BigInteger, primary_key=True)
        type = Column(Text)
        payload = Column(Text)

    with pytest.raises(TypeError) as raised:
        TaskRepository(session, LegacyJob)
    message = str(raised.value)
    assert "TaskMixin" in message
    assert "LegacyJob (table 'legacy_jobs') lacks what the queue needs" in message
    for missing in ("column 'status'", "column 'lease_token'", "index 'ix_legacy_jobs_claimable'"):
        assert missing in message
    assert "column 'payload'" not in message


def test_a_model_that_removes_a_library_column_is_refused_when_declared() -> None:
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    with pytest.raises(TypeError, match="lacks what the queue needs: column 'result'"):

        class NoResult(TaskMixin, Base):
            __tablename__ = "no_result_tasks"
            result = None  # type: ignore[assignment]


# ---------------------------------------------------------------- what runs


def test_the_worker_runs_registered_handlers_only(
    session_factory: Any, clean_table: type[Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    with session_factory() as session:
        repo = TaskRepository(session, clean_table)
        named = [
            repo.enqueue(name, {"command": f"touch {marker}", "handler": "os:system"})
            for name in ("os.system", "os:system", "builtins.eval", "__import__")
        ]
        ok = repo.enqueue("job", {"handler": "os:system", "command": f"touch {marker}"})
        session.commit()
    calls: list[Any] = []
    worker = Worker(
        session_factory, clean_table, {"job": lambda task, ctx: calls.append(task.payload)}
    )
    worker.run(until_empty=True)
    # task data names no code: other types are not even claimed, and "job" ran its handler
    assert not marker.exists()
    assert calls == [{"handler": "os:system", "command": f"touch {marker}"}]
    with session_factory() as session:
        repo = TaskRepository(session, clean_table)
        assert repo.get_task(ok).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
        assert {repo.get_task(i).status for i in named} == {TaskStatus.PENDING}  # type: ignore[union-attr]

    # a worker told to claim a type it has no handler for fails such tasks, runs nothing
    with caplog.at_level(logging.WARNING, logger="sqlalchemy_taskqueue"):
        stray = Worker(
            session_factory,
            clean_table,
            {"job": lambda task, ctx: calls.append(task.payload)},
            task_types=["os.system"],
        )
    assert "worker.no_handler" in caplog.text
    stray.run(until_empty=True)
    assert not marker.exists() and len(calls) == 1
    with session_factory() as session:
        repo = TaskRepository(session, clean_table)
        task = repo.get_task(named[0])
        assert task is not None
        assert task.status is TaskStatus.FAILED  # permanently: retrying cannot help
        assert task.error_message == "no handler is registered for task type 'os.system'"


# ---------------------------------------------------------------- secrets

SECRET = "s3cret-pa55word"


def taskqueue(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``taskqueue`` command in a child process (its logging set up as in production)."""
    return subprocess.run(
        [sys.executable, "-m", "sqlalchemy_taskqueue.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@127.0.0.1:1/app",  # nothing listens there
        f"postgresql://app:{SECRET}@127.0.0.1:notaport/app",  # unparsable
        f"mysql://app:{SECRET}@127.0.0.1/app",  # not PostgreSQL
        f"postgresql+nodriver://app:{SECRET}@127.0.0.1/app",  # no such driver
        f"postgresql+pg8000://app:{SECRET}@127.0.0.1/app",  # a driver that is not installed
        f"postgresql://app@127.0.0.1:1/app?password={SECRET}",  # the password as a parameter
    ],
)
@pytest.mark.parametrize(
    "command",
    [["stats"], ["worker", "queue_app:tasks", "--until-empty", "--poll-interval", "0.05s"]],
)
def test_database_urls_are_masked_in_errors(url: str, command: list[str]) -> None:
    result = taskqueue("--database-url", url, *command)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # a clear last word (the worker also logs each failed attempt, traceback included)
    assert output.strip().splitlines()[-1].startswith("Error: ")
    assert SECRET not in output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:first-half@second-half@127.0.0.1:1/app",
        "postgresql://app:first-half@second:half@127.0.0.1:1/app",  # the port unparsable
    ],
)
@pytest.mark.parametrize("command", [["stats"], ["worker", "queue_app:tasks", "--until-empty"]])
def test_a_password_with_an_unencoded_at_is_refused_and_never_printed(
    url: str, command: list[str]
) -> None:
    """The password ends at its first '@' for SQLAlchemy, which printed the rest as part
    of the host ('app:***@second-half@127.0.0.1'), and libpq echoed it in "could not
    translate host name"."""
    result = taskqueue("--database-url", url, *command)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "holds an '@' that is not percent-encoded; write each '@' in it as %40" in output
    assert "postgresql://app:***@127.0.0.1:1/app" in output
    assert "first" not in output and "half" not in output


def test_a_working_password_url_never_reaches_the_logs(database_url: str, engine: Any) -> None:
    from queue_app import Base

    # the test server trusts local connections, so any password is accepted
    url = make_url(database_url).set(password=SECRET).render_as_string(hide_password=False)
    Base.metadata.create_all(engine)
    try:
        result = taskqueue(
            "--database-url",
            url,
            "worker",
            "queue_app:tasks",
            "--until-empty",
            "--log-level",
            "debug",
        )
        assert result.returncode == 0, result.stderr
        assert "worker.started" in result.stderr
        stats = taskqueue("--database-url", url, "stats", "--table", "proc_tasks", "--json")
        assert stats.returncode == 0, stats.stderr
        assert SECRET not in result.stdout + result.stderr + stats.stdout + stats.stderr
    finally:
        Base.metadata.drop_all(engine)


def test_the_type_length_limit_applies_to_new_tasks_only(repo: Repo, session: Session) -> None:
    long_type = "t" * 300
    with pytest.raises(ValueError, match="at most 255 characters"):
        repo.enqueue(long_type, {})
    # reads and claims by name still work (for rows written before the limit, say)
    assert repo.dequeue_many(long_type, limit=1) == []
    assert repo.get_task_progress(long_type) is None
