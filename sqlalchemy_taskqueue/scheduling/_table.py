"""The schedules table: one row per periodic schedule, named after the task table.

The table belongs to the task model's ``MetaData`` (it is declared with the model), so
``Base.metadata.create_all(engine)`` creates it and Alembic's autogenerate sees it; a
migration creates it with :func:`~sqlalchemy_taskqueue.migrations.create_schedules_table_v1`.
Each row holds what the code declared (so operators can list and run a schedule without
the handlers' code) and the firing state: the next fire time, the last one and its task.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Float,
    Integer,
    Table,
    Text,
    false,
    text,
)

from sqlalchemy_taskqueue._json import JSONDocument
from sqlalchemy_taskqueue._schema import auxiliary_table, require_auxiliary_table
from sqlalchemy_taskqueue._timestamps import DatabaseNow, Timestamp

__all__ = [
    "SCHEDULES_SUFFIX",
    "require_schedules_table",
    "schedules_table",
    "schedules_table_name",
]

#: The schedules table of a task table ``tasks`` is ``tasks_schedules``.
SCHEDULES_SUFFIX = "_schedules"


def schedules_table_name(task_table_name: str) -> str:
    """The name of the schedules table that goes with a task table.

    >>> schedules_table_name("tasks")
    'tasks_schedules'
    """
    return f"{task_table_name}{SCHEDULES_SUFFIX}"


def schedules_table(task_table: Table) -> Table:
    """The schedules table of ``task_table``, declared in its ``MetaData`` (once).

    Example::

        schedules_table(Task.__table__).name  # 'tasks_schedules'
    """
    return auxiliary_table(
        task_table,
        SCHEDULES_SUFFIX,
        lambda name: [
            Column("name", Text, primary_key=True, comment="the schedule's unique name"),
            Column("task_type", Text, nullable=False),
            Column("cron", Text, nullable=True),
            Column("every_seconds", Float, nullable=True),
            Column("timezone", Text, nullable=False),
            Column("missed", Text, nullable=False),
            Column("catch_up_seconds", Float, nullable=False),
            Column("overlap", Boolean, nullable=False, server_default=false()),
            Column("payload", JSONDocument, nullable=False),
            Column("priority", Integer, nullable=False, server_default=text("0")),
            Column("max_retries", Integer, nullable=False, server_default=text("3")),
            Column("columns", JSONDocument, nullable=False),
            Column("paused", Boolean, nullable=False, server_default=false()),
            Column("next_fire_at", Timestamp, nullable=True),
            Column("last_fire_at", Timestamp, nullable=True),
            Column("last_task_id", BigInteger, nullable=True),
            Column("carried_at", Timestamp, nullable=True),
            Column("created_at", Timestamp, nullable=False, server_default=DatabaseNow()),
            CheckConstraint(
                "(cron IS NULL) <> (every_seconds IS NULL)", name=f"ck_{name}_cron_or_every"
            ),
            CheckConstraint("missed IN ('latest', 'skip', 'all')", name=f"ck_{name}_missed"),
        ],
    )


def require_schedules_table(connection: Connection, task_table: Table) -> None:
    """:class:`~sqlalchemy_taskqueue.exceptions.TaskTableError` with the fix, unless the
    schedules table of ``task_table`` exists in the database (a queue created before
    version 2 has none until it is upgraded).

    Example::

        with engine.connect() as connection:
            require_schedules_table(connection, Task.__table__)
    """
    require_auxiliary_table(
        connection,
        schedules_table(task_table),
        task_table,
        lacking="periodic tasks",
        upgrade="upgrade_task_table_v1_to_v2",
    )
