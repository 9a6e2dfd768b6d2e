"""The controls table: operators' flow controls of a queue, one row per task type.

``<task table>_controls`` (``tasks_controls``) belongs to the task model's ``MetaData``,
like the schedules table, and is created by
:func:`~sqlalchemy_taskqueue.migrations.create_controls_table_v1`.  A row says whether
claims of its type are paused; the row of the empty type name stands for the whole
queue (task types are never empty).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Table,
    Text,
    false,
    text,
)

from sqlalchemy_taskqueue._schema import auxiliary_table, require_auxiliary_table

__all__ = [
    "CONTROLS_SUFFIX",
    "QUEUE_WIDE",
    "WHOLE_QUEUE",
    "controls_table",
    "controls_table_name",
    "require_controls_table",
]

#: The controls table of a task table ``tasks`` is ``tasks_controls``.
CONTROLS_SUFFIX = "_controls"
#: The ``task_type`` of the row that controls the whole queue.
QUEUE_WIDE = ""
#: How :meth:`~sqlalchemy_taskqueue.TaskRepository.paused` names a pause of the whole queue.
WHOLE_QUEUE = "*"


def controls_table_name(task_table_name: str) -> str:
    """The name of the controls table that goes with a task table.

    >>> controls_table_name("tasks")
    'tasks_controls'
    """
    return f"{task_table_name}{CONTROLS_SUFFIX}"


def controls_table(task_table: Table) -> Table:
    """The controls table of ``task_table``, declared in its ``MetaData`` (once).

    Example::

        controls_table(Task.__table__).name  # 'tasks_controls'
    """
    return auxiliary_table(
        task_table,
        CONTROLS_SUFFIX,
        lambda name: [
            Column("task_type", Text, primary_key=True, comment="'' for the whole queue"),
            Column("paused", Boolean, nullable=False, server_default=false()),
            Column(
                "updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
            ),
        ],
    )


def require_controls_table(connection: Connection, task_table: Table) -> None:
    """:class:`~sqlalchemy_taskqueue.exceptions.TaskTableError` with the fix, unless the
    controls table of ``task_table`` exists in the database (a queue created before
    version 3 has none until it is upgraded).

    Example::

        with engine.connect() as connection:
            require_controls_table(connection, Task.__table__)
    """
    require_auxiliary_table(
        connection,
        controls_table(task_table),
        task_table,
        lacking="pauses",
        upgrade="upgrade_task_table_v2_to_v3",
    )
