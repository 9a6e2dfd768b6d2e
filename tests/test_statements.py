"""SQL shape, compiled per dialect without a database."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import create_engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session

from sqlalchemy_taskqueue import TaskMixin, TaskRepository, UnsupportedDialectError, statements
from sqlalchemy_taskqueue.backoff import DEFAULT_BACKOFF


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    __tablename__ = "tasks"


TABLE = Task.__table__


PSYCOPG2 = postgresql.psycopg2.dialect()  # type: ignore[attr-defined]


def pg(stmt: object) -> str:
    return " ".join(str(stmt.compile(dialect=PSYCOPG2)).split())  # type: ignore[attr-defined]


def test_claim_is_one_statement_with_skip_locked_in_priority_order() -> None:
    sql = pg(
        statements.claim_statement(
            TABLE,
            task_types=["a", "b"],
            limit=5,
            lease=timedelta(seconds=30),
            owner="w",
            token=uuid.uuid4(),
        )
    )
    assert sql.startswith(
        "WITH claimable AS (SELECT tasks.id AS id FROM tasks WHERE tasks.status ="
    )
    assert "ORDER BY tasks.priority, tasks.run_at, tasks.id" in sql
    assert "LIMIT %(param_1)s FOR UPDATE SKIP LOCKED)" in sql
    assert (
        "UPDATE tasks SET status=" in sql and "FROM claimable WHERE tasks.id = claimable.id" in sql
    )
    assert "tasks.run_at <= now()" in sql
    assert "tasks.type IN (__[POSTCOMPILE_type_1])" in sql
    assert "RETURNING tasks.id, tasks.type, tasks.payload" in sql


def test_claim_without_types_does_not_filter_by_type() -> None:
    sql = pg(
        statements.claim_statement(
            TABLE,
            task_types=None,
            limit=1,
            lease=timedelta(seconds=1),
            owner="w",
            token=uuid.uuid4(),
        )
    )
    assert "tasks.type" not in sql.split("RETURNING")[0]


def test_enqueue_announces_in_the_same_statement() -> None:
    sql = pg(
        statements.insert_statement(TABLE, {"type": "a", "payload": {}}, channel="taskqueue_tasks")
    )
    assert sql.startswith("WITH inserted AS (INSERT INTO tasks")
    assert "pg_notify(" in sql


def test_enqueue_if_not_exists_uses_the_partial_unique_index() -> None:
    sql = pg(
        statements.insert_if_absent_statement(
            TABLE, {"type": "a", "payload": {}, "dedupe_key": "k"}, channel=None
        )
    )
    assert (
        "ON CONFLICT (type, dedupe_key) WHERE dedupe_key IS NOT NULL AND "
        "status IN ('pending', 'in_progress') DO NOTHING RETURNING tasks.id"
    ) in sql


def test_fail_is_one_atomic_update_with_backoff() -> None:
    sql = pg(
        statements.fail_statement(TABLE, 1, "x", lease_token=uuid.uuid4(), backoff=DEFAULT_BACKOFF)
    )
    assert sql.count("UPDATE") == 1
    assert "CASE WHEN" in sql and "tasks.retry_count < tasks.max_retries" in sql
    assert "power(" in sql and "random()" in sql
    assert "tasks.lease_token = %(lease_token_1)s" in sql


def test_rescue_and_purge_skip_locked_rows() -> None:
    rescue = pg(statements.rescue_statement(TABLE, limit=10))
    assert "tasks.lease_expires_at < now()" in rescue and "FOR UPDATE SKIP LOCKED" in rescue
    purge = pg(statements.purge_statement(TABLE, older_than=timedelta(days=7), batch_size=500))
    assert purge.startswith("DELETE FROM tasks WHERE tasks.id IN (SELECT tasks.id")
    assert "FOR UPDATE SKIP LOCKED" in purge


def test_heartbeat_renews_all_leases_in_one_statement() -> None:
    leases = [(1, uuid.uuid4()), (2, uuid.uuid4())]
    sql = pg(statements.renew_leases_statement(TABLE, leases, timedelta(seconds=60)))
    assert "(tasks.id, tasks.lease_token) IN" in sql
    assert "SET lease_expires_at=(now() + make_interval(" in sql


def test_progress_only_touches_the_progress_column() -> None:
    sql = pg(statements.progress_statement(TABLE, 1, 50, lease_token=None))
    assert "SET progress=%(progress)s WHERE" in sql


def test_sqlite_is_refused_with_a_clear_error() -> None:
    assert "SKIP LOCKED" not in str(
        statements.claim_statement(
            TABLE,
            task_types=None,
            limit=1,
            lease=timedelta(seconds=1),
            owner="w",
            token=uuid.uuid4(),
        ).compile(dialect=sqlite.dialect())
    )
    engine = create_engine("sqlite://")
    with Session(engine) as session, pytest.raises(UnsupportedDialectError, match="sqlite"):
        TaskRepository(session, Task)
