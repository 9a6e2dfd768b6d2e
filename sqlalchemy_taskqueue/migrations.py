"""Frozen, versioned Alembic operations for queue tables.

Use these in your own Alembic revisions instead of autogenerating the queue table, so
that the table a revision creates never changes when the library evolves.  Each helper
is frozen: a later schema change gets a new helper (``..._v2``) and an upgrade helper,
never an edit to an old one.  Nothing here imports the live model.

A revision for the default queue, plus an app column::

    import sqlalchemy as sa
    from sqlalchemy_taskqueue.migrations import create_task_table_v5, drop_task_table_v5

    def upgrade() -> None:
        create_task_table_v5(
            "tasks",
            sa.Column("project_id", sa.BigInteger, sa.ForeignKey("projects.id"), nullable=True),
        )

    def downgrade() -> None:
        drop_task_table_v5("tasks")

Version 5 (the current one) is the task table with its concurrency columns and its
``headers`` column, its schedules table, its controls table, its key slots table and its
worker registry; the tables match :class:`~sqlalchemy_taskqueue.TaskMixin` exactly, so
``alembic revision --autogenerate`` finds nothing to change afterwards.  A database made
at an earlier version moves up with :func:`upgrade_task_table_v1_to_v2`, then
:func:`upgrade_task_table_v2_to_v3`, :func:`upgrade_task_table_v3_to_v4` and
:func:`upgrade_task_table_v4_to_v5`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from sqlalchemy_taskqueue.backends import backend_for
from sqlalchemy_taskqueue.backends.base import Backend
from sqlalchemy_taskqueue.exceptions import optional_dependency

__all__ = [
    "create_controls_table_v1",
    "create_key_slots_table_v1",
    "create_schedules_table_v1",
    "create_task_table_v1",
    "create_task_table_v2",
    "create_task_table_v3",
    "create_task_table_v4",
    "create_task_table_v5",
    "create_workers_table_v1",
    "downgrade_task_table_v2_to_v1",
    "downgrade_task_table_v3_to_v2",
    "downgrade_task_table_v4_to_v3",
    "downgrade_task_table_v5_to_v4",
    "drop_controls_table_v1",
    "drop_key_slots_table_v1",
    "drop_schedules_table_v1",
    "drop_task_table_v1",
    "drop_task_table_v2",
    "drop_task_table_v3",
    "drop_task_table_v4",
    "drop_task_table_v5",
    "drop_workers_table_v1",
    "tune_task_table_v1",
    "untune_task_table_v1",
    "upgrade_task_table_v1_to_v2",
    "upgrade_task_table_v2_to_v3",
    "upgrade_task_table_v3_to_v4",
    "upgrade_task_table_v4_to_v5",
]

_STATUSES_V1 = "'pending', 'in_progress', 'completed', 'failed', 'cancelled'"
_ACTIVE_V1 = "'pending', 'in_progress'"
_FINISHED_V1 = "'completed', 'failed', 'cancelled'"


def _op() -> Any:
    with optional_dependency("migrations", "alembic", feature="sqlalchemy_taskqueue.migrations"):
        from alembic import op

    return op


def _backend() -> Backend:
    """The backend of the database the revision runs on (online or ``--sql``)."""
    return backend_for(_op().get_context().dialect)


def _json_v1() -> sa.types.TypeEngine[Any]:
    return _backend().json_type_v1()


def _now_v1() -> sa.TextClause:
    """The database clock as a server default (``now()`` on PostgreSQL)."""
    return _backend().server_now_v1()


def _id_type_v1() -> sa.types.TypeEngine[Any]:
    """``bigint``; SQLite numbers rows itself only in an ``INTEGER PRIMARY KEY``."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _partial_index_v1(
    table_name: str,
    name: str,
    columns: list[str],
    where: str,
    *,
    unique: bool = False,
    schema: str | None = None,
) -> None:
    _op().create_index(
        name,
        table_name,
        columns,
        unique=unique,
        schema=schema,
        **_backend().index_options_v1(where),
    )


def create_task_table_v1(table_name: str, *extra_columns: sa.Column[Any], **table_kw: Any) -> None:
    """Create a version-1 queue table called ``table_name`` with its constraints and indexes.

    :param extra_columns: the application's own columns (``sa.Column`` objects).
    :param table_kw: passed to ``op.create_table`` (``schema=``, ``comment=`` ...).

    Example::

        create_task_table_v1("tasks", sa.Column("project_id", sa.BigInteger))
    """
    if not isinstance(table_name, str) or not table_name:
        raise ValueError(f"table_name must be a non-empty string, got {table_name!r}")
    op = _op()
    now = _now_v1()
    op.create_table(
        table_name,
        sa.Column("id", _id_type_v1(), sa.Identity(always=False), primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("payload", _json_v1(), nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("progress", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("retry_count", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("max_retries", sa.Integer, nullable=False, server_default=sa.text("3")),
        sa.Column("dedupe_key", sa.Text, nullable=True),
        sa.Column("timeout_seconds", sa.Integer, nullable=True),
        sa.Column("result", _json_v1(), nullable=True),
        sa.Column("lease_owner", sa.Text, nullable=True),
        sa.Column("lease_token", sa.Uuid(as_uuid=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        *extra_columns,
        sa.CheckConstraint(f"status IN ({_STATUSES_V1})", name=f"ck_{table_name}_status"),
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name=f"ck_{table_name}_progress"),
        sa.CheckConstraint(
            "retry_count >= 0 AND max_retries >= 0", name=f"ck_{table_name}_retries"
        ),
        **table_kw,
    )
    _partial_index_v1(
        table_name,
        f"ix_{table_name}_claimable",
        ["priority", "run_at", "id"],
        "status = 'pending'",
        schema=table_kw.get("schema"),
    )
    _partial_index_v1(
        table_name,
        f"uq_{table_name}_active_dedupe",
        ["type", "dedupe_key"],
        f"dedupe_key IS NOT NULL AND status IN ({_ACTIVE_V1})",
        unique=True,
        schema=table_kw.get("schema"),
    )
    _partial_index_v1(
        table_name,
        f"ix_{table_name}_lease_expiry",
        ["lease_expires_at"],
        "status = 'in_progress'",
        schema=table_kw.get("schema"),
    )
    _partial_index_v1(
        table_name,
        f"ix_{table_name}_finished",
        ["completed_at"],
        f"status IN ({_FINISHED_V1})",
        schema=table_kw.get("schema"),
    )


def drop_task_table_v1(table_name: str, **table_kw: Any) -> None:
    """Drop a version-1 queue table (its indexes go with it).

    Example::

        drop_task_table_v1("tasks")
    """
    if not isinstance(table_name, str) or not table_name:
        raise ValueError(f"table_name must be a non-empty string, got {table_name!r}")
    _op().drop_table(table_name, **table_kw)


def create_schedules_table_v1(task_table_name: str, *, schema: str | None = None) -> None:
    """Create the version-1 schedules table of a queue (``<task table>_schedules``): the
    periodic schedules workers record and fire (see :mod:`sqlalchemy_taskqueue.scheduling`).

    Example::

        create_schedules_table_v1("tasks")
    """
    name = _schedules_name(task_table_name)
    now = _now_v1()
    _op().create_table(
        name,
        sa.Column("name", sa.Text, primary_key=True, comment="the schedule's unique name"),
        sa.Column("task_type", sa.Text, nullable=False),
        sa.Column("cron", sa.Text, nullable=True),
        sa.Column("every_seconds", sa.Float, nullable=True),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("missed", sa.Text, nullable=False),
        sa.Column("catch_up_seconds", sa.Float, nullable=False),
        sa.Column("overlap", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("payload", _json_v1(), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("max_retries", sa.Integer, nullable=False, server_default=sa.text("3")),
        sa.Column("columns", _json_v1(), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("next_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_task_id", sa.BigInteger, nullable=True),
        sa.Column("carried_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.CheckConstraint(
            "(cron IS NULL) <> (every_seconds IS NULL)", name=f"ck_{name}_cron_or_every"
        ),
        sa.CheckConstraint("missed IN ('latest', 'skip', 'all')", name=f"ck_{name}_missed"),
        schema=schema,
    )


def drop_schedules_table_v1(task_table_name: str, *, schema: str | None = None) -> None:
    """Drop a queue's version-1 schedules table.

    Example::

        drop_schedules_table_v1("tasks")
    """
    _op().drop_table(_schedules_name(task_table_name), schema=schema)


def create_task_table_v2(table_name: str, *extra_columns: sa.Column[Any], **table_kw: Any) -> None:
    """Create a version-2 queue: the version-1 task table and its schedules table.

    Takes what :func:`create_task_table_v1` takes.

    Example::

        create_task_table_v2("tasks", sa.Column("project_id", sa.BigInteger))
    """
    create_task_table_v1(table_name, *extra_columns, **table_kw)
    create_schedules_table_v1(table_name, schema=table_kw.get("schema"))


def drop_task_table_v2(table_name: str, **table_kw: Any) -> None:
    """Drop a version-2 queue (its schedules table, then its task table).

    Example::

        drop_task_table_v2("tasks")
    """
    drop_schedules_table_v1(table_name, schema=table_kw.get("schema"))
    drop_task_table_v1(table_name, **table_kw)


def upgrade_task_table_v1_to_v2(table_name: str, *, schema: str | None = None) -> None:
    """Upgrade a version-1 queue to version 2: add its schedules table (the task table
    and its rows are untouched; workers keep running meanwhile).

    Example::

        def upgrade() -> None:
            upgrade_task_table_v1_to_v2("tasks")
    """
    create_schedules_table_v1(table_name, schema=schema)


def downgrade_task_table_v2_to_v1(table_name: str, *, schema: str | None = None) -> None:
    """Undo :func:`upgrade_task_table_v1_to_v2` (the schedules and their state are lost).

    Example::

        def downgrade() -> None:
            downgrade_task_table_v2_to_v1("tasks")
    """
    drop_schedules_table_v1(table_name, schema=schema)


def _schedules_name(task_table_name: str) -> str:
    return _auxiliary_name(task_table_name, "_schedules")


def _auxiliary_name(task_table_name: str, suffix: str) -> str:
    _require_table_name(task_table_name)
    return f"{task_table_name}{suffix}"


def _require_table_name(table_name: str) -> None:
    if not isinstance(table_name, str) or not table_name:
        raise ValueError(f"table_name must be a non-empty string, got {table_name!r}")


def create_controls_table_v1(task_table_name: str, *, schema: str | None = None) -> None:
    """Create the version-1 controls table of a queue (``<task table>_controls``): the
    pauses and rate limits operators set per task type (and pauses of the whole queue).

    Example::

        create_controls_table_v1("tasks")
    """
    name = _auxiliary_name(task_table_name, "_controls")
    _op().create_table(
        name,
        sa.Column("task_type", sa.Text, primary_key=True, comment="'' for the whole queue"),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("rate_limit", sa.Integer, nullable=True),
        sa.Column("rate_period_seconds", sa.Float, nullable=True),
        sa.Column("rate_starts", _json_v1(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=_now_v1(),
        ),
        sa.CheckConstraint(
            "(rate_limit IS NULL) = (rate_period_seconds IS NULL)", name=f"ck_{name}_rate"
        ),
        schema=schema,
    )


def drop_controls_table_v1(task_table_name: str, *, schema: str | None = None) -> None:
    """Drop a queue's version-1 controls table.

    Example::

        drop_controls_table_v1("tasks")
    """
    _op().drop_table(_auxiliary_name(task_table_name, "_controls"), schema=schema)


def create_task_table_v3(table_name: str, *extra_columns: sa.Column[Any], **table_kw: Any) -> None:
    """Create a version-3 queue: the version-2 queue (task table and schedules table) and
    its controls table.

    Takes what :func:`create_task_table_v1` takes.

    Example::

        create_task_table_v3("tasks", sa.Column("project_id", sa.BigInteger))
    """
    create_task_table_v2(table_name, *extra_columns, **table_kw)
    create_controls_table_v1(table_name, schema=table_kw.get("schema"))


def drop_task_table_v3(table_name: str, **table_kw: Any) -> None:
    """Drop a version-3 queue (its controls and schedules tables, then its task table).

    Example::

        drop_task_table_v3("tasks")
    """
    drop_controls_table_v1(table_name, schema=table_kw.get("schema"))
    drop_task_table_v2(table_name, **table_kw)


def upgrade_task_table_v2_to_v3(table_name: str, *, schema: str | None = None) -> None:
    """Upgrade a version-2 queue to version 3: add its controls table (nothing else
    changes; workers of the previous release keep running meanwhile).

    Example::

        def upgrade() -> None:
            upgrade_task_table_v2_to_v3("tasks")
    """
    create_controls_table_v1(table_name, schema=schema)


def downgrade_task_table_v3_to_v2(table_name: str, *, schema: str | None = None) -> None:
    """Undo :func:`upgrade_task_table_v2_to_v3` (pauses and rate limits are lost).

    Example::

        def downgrade() -> None:
            downgrade_task_table_v3_to_v2("tasks")
    """
    drop_controls_table_v1(table_name, schema=schema)


def create_key_slots_table_v1(task_table_name: str, *, schema: str | None = None) -> None:
    """Create the version-1 key slots table of a queue (``<task table>_key_slots``): one
    row per slot of each concurrency key, naming the task that holds it.

    Example::

        create_key_slots_table_v1("tasks")
    """
    _op().create_table(
        _auxiliary_name(task_table_name, "_key_slots"),
        sa.Column("concurrency_key", sa.Text, primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("task_id", sa.BigInteger, nullable=True, comment="the task holding the slot"),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        schema=schema,
    )


def drop_key_slots_table_v1(task_table_name: str, *, schema: str | None = None) -> None:
    """Drop a queue's version-1 key slots table.

    Example::

        drop_key_slots_table_v1("tasks")
    """
    _op().drop_table(_auxiliary_name(task_table_name, "_key_slots"), schema=schema)


def create_workers_table_v1(task_table_name: str, *, schema: str | None = None) -> None:
    """Create the version-1 worker registry of a queue (``<task table>_workers``): one row
    per running worker, refreshed by its heartbeats.

    Example::

        create_workers_table_v1("tasks")
    """
    _op().create_table(
        _auxiliary_name(task_table_name, "_workers"),
        sa.Column("worker_id", sa.Text, primary_key=True, comment="its lease owner name"),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("task_types", _json_v1(), nullable=False),
        sa.Column("slots", sa.Integer, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=_now_v1(),
        ),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=schema,
    )


def drop_workers_table_v1(task_table_name: str, *, schema: str | None = None) -> None:
    """Drop a queue's version-1 worker registry.

    Example::

        drop_workers_table_v1("tasks")
    """
    _op().drop_table(_auxiliary_name(task_table_name, "_workers"), schema=schema)


_CONCURRENCY_CHECK_V4 = (
    "(concurrency_key IS NULL) = (concurrency_limit IS NULL) "
    "AND (concurrency_limit IS NULL OR concurrency_limit > 0)"
)


def create_task_table_v4(table_name: str, *extra_columns: sa.Column[Any], **table_kw: Any) -> None:
    """Create a version-4 queue: the version-3 queue upgraded as
    :func:`upgrade_task_table_v3_to_v4` does (concurrency columns, claim indexes, key
    slots table, worker registry).

    Takes what :func:`create_task_table_v1` takes.

    Example::

        create_task_table_v4("tasks", sa.Column("project_id", sa.BigInteger))
    """
    create_task_table_v3(table_name, *extra_columns, **table_kw)
    upgrade_task_table_v3_to_v4(table_name, schema=table_kw.get("schema"))


def drop_task_table_v4(table_name: str, **table_kw: Any) -> None:
    """Drop a version-4 queue (its auxiliary tables, then its task table).

    Example::

        drop_task_table_v4("tasks")
    """
    drop_workers_table_v1(table_name, schema=table_kw.get("schema"))
    drop_key_slots_table_v1(table_name, schema=table_kw.get("schema"))
    drop_task_table_v3(table_name, **table_kw)


def upgrade_task_table_v3_to_v4(table_name: str, *, schema: str | None = None) -> None:
    """Upgrade a version-3 queue to version 4: per-key concurrency limits and the worker
    registry.

    Adds the nullable columns ``concurrency_key`` and ``concurrency_limit`` with their
    check constraint, rebuilds the claim index ``ix_<table>_claimable`` over pending
    tasks without a key, adds ``ix_<table>_keyed_claimable`` over pending tasks with
    one, and creates the key slots table and the worker registry.  Existing tasks have no key and stay as they
    are.  Building the indexes locks the table for writes for a moment per hundred
    thousand rows; stop the workers of the previous release first (they would claim
    keyed tasks without taking a slot).

    Example::

        def upgrade() -> None:
            upgrade_task_table_v3_to_v4("tasks")
    """
    _require_table_name(table_name)
    op = _op()
    op.add_column(table_name, sa.Column("concurrency_key", sa.Text, nullable=True), schema=schema)
    op.add_column(
        table_name, sa.Column("concurrency_limit", sa.Integer, nullable=True), schema=schema
    )
    # in a batch: SQLite adds a constraint by copying the table (elsewhere an ALTER TABLE)
    with op.batch_alter_table(table_name, schema=schema) as batch:
        batch.create_check_constraint(f"ck_{table_name}_concurrency", _CONCURRENCY_CHECK_V4)
    op.drop_index(f"ix_{table_name}_claimable", table_name=table_name, schema=schema)
    for name, keyed in (
        (f"ix_{table_name}_claimable", "NULL"),
        (f"ix_{table_name}_keyed_claimable", "NOT NULL"),
    ):
        _partial_index_v1(
            table_name,
            name,
            ["priority", "run_at", "id"],
            f"status = 'pending' AND concurrency_key IS {keyed}",
            schema=schema,
        )
    create_key_slots_table_v1(table_name, schema=schema)
    create_workers_table_v1(table_name, schema=schema)


def downgrade_task_table_v4_to_v3(table_name: str, *, schema: str | None = None) -> None:
    """Undo :func:`upgrade_task_table_v3_to_v4`: concurrency keys and slots and the worker
    registry are lost (tasks that had a key become ordinary tasks).

    Example::

        def downgrade() -> None:
            downgrade_task_table_v4_to_v3("tasks")
    """
    _require_table_name(table_name)
    op = _op()
    drop_workers_table_v1(table_name, schema=schema)
    drop_key_slots_table_v1(table_name, schema=schema)
    op.drop_index(f"ix_{table_name}_keyed_claimable", table_name=table_name, schema=schema)
    op.drop_index(f"ix_{table_name}_claimable", table_name=table_name, schema=schema)
    _partial_index_v1(
        table_name,
        f"ix_{table_name}_claimable",
        ["priority", "run_at", "id"],
        "status = 'pending'",
        schema=schema,
    )
    with op.batch_alter_table(table_name, schema=schema) as batch:
        batch.drop_constraint(f"ck_{table_name}_concurrency", type_="check")
        batch.drop_column("concurrency_limit")
        batch.drop_column("concurrency_key")


def create_task_table_v5(table_name: str, *extra_columns: sa.Column[Any], **table_kw: Any) -> None:
    """Create a version-5 queue: the version-4 queue upgraded as
    :func:`upgrade_task_table_v4_to_v5` does (the ``headers`` column).

    Takes what :func:`create_task_table_v1` takes.

    Example::

        create_task_table_v5("tasks", sa.Column("project_id", sa.BigInteger))
    """
    create_task_table_v4(table_name, *extra_columns, **table_kw)
    upgrade_task_table_v4_to_v5(table_name, schema=table_kw.get("schema"))


def drop_task_table_v5(table_name: str, **table_kw: Any) -> None:
    """Drop a version-5 queue (its auxiliary tables, then its task table).

    Example::

        drop_task_table_v5("tasks")
    """
    drop_task_table_v4(table_name, **table_kw)


def upgrade_task_table_v4_to_v5(table_name: str, *, schema: str | None = None) -> None:
    """Upgrade a version-4 queue to version 5: the nullable JSON column ``headers``, which
    carries the trace context of a task's enqueue to the worker that runs it.

    Adding a nullable column without a default changes no row: it takes a moment
    whatever the table holds.  Workers of the previous release keep working meanwhile
    (they neither read nor write the column).

    Example::

        def upgrade() -> None:
            upgrade_task_table_v4_to_v5("tasks")
    """
    _require_table_name(table_name)
    _op().add_column(table_name, sa.Column("headers", _json_v1(), nullable=True), schema=schema)


def downgrade_task_table_v5_to_v4(table_name: str, *, schema: str | None = None) -> None:
    """Undo :func:`upgrade_task_table_v4_to_v5`: the tasks' headers (their trace
    contexts) are lost.

    Example::

        def downgrade() -> None:
            downgrade_task_table_v5_to_v4("tasks")
    """
    _require_table_name(table_name)
    _op().drop_column(table_name, "headers", schema=schema)


def tune_task_table_v1(table_name: str, *, schema: str | None = None) -> None:
    """Set the version-1 storage parameters of the database's backend on a queue table
    (nothing where the backend has none).

    On PostgreSQL ``fillfactor = 80`` leaves room on each page so that progress writes
    (``progress`` is never indexed) can be HOT updates, and the other updates (claims,
    heartbeats, outcomes change indexed columns) can still put the new row version on
    the same page; per-table autovacuum thresholds make vacuum and analyze keep up with
    a table whose rows change several times each.  Safe to run on a table in use (it
    takes a brief lock; new settings apply to pages written from then on).

    Example::

        def upgrade() -> None:
            tune_task_table_v1("tasks")
    """
    qualified = _qualified(table_name, schema)
    for statement in _backend().tune_statements_v1(qualified):
        _op().execute(statement)


def untune_task_table_v1(table_name: str, *, schema: str | None = None) -> None:
    """Reset what :func:`tune_task_table_v1` set, back to the server's defaults.

    Example::

        def downgrade() -> None:
            untune_task_table_v1("tasks")
    """
    qualified = _qualified(table_name, schema)
    for statement in _backend().untune_statements_v1(qualified):
        _op().execute(statement)


def _qualified(table_name: str, schema: str | None) -> str:
    if not isinstance(table_name, str) or not table_name:
        raise ValueError(f"table_name must be a non-empty string, got {table_name!r}")
    preparer = _op().get_context().dialect.identifier_preparer
    name = preparer.quote(table_name)
    return name if schema is None else f"{preparer.quote_schema(schema)}.{name}"
