"""SQL shape, compiled per dialect without a database."""

from __future__ import annotations

import re

import sqlalchemy.dialects.postgresql.psycopg2
from sqlalchemy.orm import DeclarativeBase

from sqlalchemy_taskqueue import TaskMixin
from sqlalchemy_taskqueue.backends.postgresql import _statements as statements
from sqlalchemy_taskqueue.backoff import DEFAULT_BACKOFF


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    __tablename__ = "tasks"


TABLE = Task.__table__
PSYCOPG2 = sqlalchemy.dialects.postgresql.psycopg2.dialect()  # type: ignore[no-untyped-call]


def pg(stmt: object) -> str:
    return " ".join(str(stmt.compile(dialect=PSYCOPG2)).split())  # type: ignore[attr-defined]


def test_claim_is_one_statement_with_skip_locked_in_priority_order() -> None:
    sql = pg(statements.claim_statement(TABLE, type_filter="many"))
    assert sql.startswith("UPDATE tasks SET status=")
    assert "WHERE tasks.id = ANY (array((SELECT tasks.id FROM tasks WHERE tasks.status =" in sql
    assert "ORDER BY tasks.priority, tasks.run_at, tasks.id" in sql
    assert "LIMIT %(limit)s FOR UPDATE SKIP LOCKED))) RETURNING" in sql
    assert "tasks.run_at <= now()" in sql
    assert "tasks.type IN (__[POSTCOMPILE_task_types])" in sql
    assert "lease_expires_at=(now() + %(lease)s)" in sql
    # documents come back as text, decoded row by row (JSONDocumentType)
    assert "RETURNING tasks.id, tasks.type, CAST(tasks.payload AS TEXT) AS payload" in sql


def test_claim_type_filters() -> None:
    any_type = pg(statements.claim_statement(TABLE, type_filter="any")).split("RETURNING")[0]
    assert "tasks.type = " not in any_type  # only the paused types are left out
    assert "tasks.type NOT IN (SELECT tasks_controls.task_type" in any_type
    assert "tasks.type = %(task_type)s" in pg(statements.claim_statement(TABLE, type_filter="one"))


def test_hot_statements_are_built_once() -> None:
    assert statements.claim_statement(TABLE, type_filter="one") is statements.claim_statement(
        TABLE, type_filter="one"
    )
    columns = ("payload", "type")
    assert statements.insert_statement(TABLE, columns, channel="c") is statements.insert_statement(
        TABLE, columns, channel="c"
    )


def test_enqueue_announces_in_the_same_statement() -> None:
    sql = pg(statements.insert_statement(TABLE, ("payload", "type"), channel="taskqueue_tasks"))
    assert sql.startswith("INSERT INTO tasks (type, payload, ")
    # newer SQLAlchemy (2.0.40 on) renders the JSONB bind cast; 2.0.10-2.0.30 leave it to
    # PostgreSQL, which infers it from the column
    assert re.search(r"VALUES \(%\(type\)s, %\(payload\)s(::JSONB)?, ", sql)
    assert "RETURNING tasks.id, pg_notify(" in sql
    delayed = pg(
        statements.insert_statement(TABLE, ("payload", "type"), channel=None, delayed=True)
    )
    assert "(now() + %(run_delay)s)" in delayed and not delayed.startswith("WITH")


def test_enqueue_writes_constant_defaults_and_channel_into_the_sql() -> None:
    assert statements.constant_defaults(TABLE) == {
        "status": "pending",
        "progress": 0,
        "priority": 0,
        "retry_count": 0,
        "max_retries": 3,
    }
    columns = ("payload", "priority", "type")
    sql = pg(statements.insert_statement(TABLE, columns, channel="c", payload_text=True))
    assert (
        "VALUES (%(type)s, CAST(%(payload)s AS JSONB), 'pending', 0, %(priority)s, 0, 3) "
        "RETURNING tasks.id, pg_notify('c', '')"
    ) in sql
    quoted = pg(statements.insert_statement(TABLE, columns, channel="it's%"))
    assert "pg_notify('it''s%%', '')" in quoted
    escaped = pg(statements.insert_statement(TABLE, columns, channel="back\\slash"))
    assert "pg_notify(%(param_1)s, '')" in escaped


def test_enqueue_if_not_exists_uses_the_partial_unique_index() -> None:
    sql = pg(
        statements.insert_if_absent_statement(
            TABLE, ("dedupe_key", "payload", "type"), channel=None
        )
    )
    assert (
        "ON CONFLICT (type, dedupe_key) WHERE dedupe_key IS NOT NULL AND "
        "status IN ('pending', 'in_progress') DO NOTHING RETURNING tasks.id"
    ) in sql


def test_fail_is_one_atomic_update_with_backoff() -> None:
    sql = pg(statements.fail_statement(TABLE, fenced=True, backoff=DEFAULT_BACKOFF))
    assert sql.count("UPDATE tasks ") == 1  # and the update of its key slot, if it holds one
    assert "CASE WHEN" in sql and "tasks.retry_count < tasks.max_retries" in sql
    assert "power(" in sql and "random()" in sql
    assert "tasks.lease_token = %(token)s" in sql
    assert (
        "tasks.lease_token"
        not in pg(statements.fail_statement(TABLE, fenced=False, backoff=DEFAULT_BACKOFF)).split(
            "WHERE"
        )[1]
    )


def test_batched_completion_and_heartbeat_use_unnest() -> None:
    complete = pg(statements.complete_many_statement(TABLE))
    assert "FROM unnest(%(ids)s::BIGINT[], CAST(%(tokens)s::TEXT[] AS UUID[]), " in complete
    assert "CAST(%(results)s::TEXT[] AS JSONB[])) AS leases(id, token, result)" in complete
    assert "tasks.lease_token = leases.token" in complete and "result=leases.result" in complete
    heartbeat = pg(statements.renew_leases_statement(TABLE))
    assert "SET lease_expires_at=(now() + %(lease)s) FROM unnest(" in heartbeat


def test_rescue_and_purge_skip_locked_rows() -> None:
    rescue = pg(statements.rescue_statement(TABLE, limit=10))
    assert "tasks.lease_expires_at < now()" in rescue and "FOR UPDATE SKIP LOCKED" in rescue
    assert "WHERE tasks.id = ANY (array((SELECT tasks.id FROM tasks WHERE" in rescue
    from datetime import timedelta

    purge = pg(statements.purge_statement(TABLE, older_than=timedelta(days=7), batch_size=500))
    assert purge.startswith("DELETE FROM tasks WHERE tasks.id = ANY (array((SELECT tasks.id")
    assert "FOR UPDATE SKIP LOCKED" in purge


def test_progress_only_touches_the_progress_column() -> None:
    sql = pg(statements.progress_statement(TABLE, fenced=False))
    assert "SET progress=%(new_progress)s WHERE" in sql


def test_unclaimed_types_reads_ready_tasks_and_recent_claims_per_type() -> None:
    from datetime import timedelta

    sql = pg(statements.unclaimed_types_statement(TABLE, since=timedelta(hours=1)))
    assert sql.startswith("SELECT tasks.type FROM tasks WHERE tasks.status = %(status_1)s")
    assert "tasks.run_at <= now() GROUP BY tasks.type HAVING NOT (EXISTS (SELECT claimed.id" in sql
    assert "claimed.type = tasks.type" in sql
    assert "claimed.started_at >= now() - %(" in sql
    assert sql.endswith("ORDER BY tasks.type")
