"""The controls table: operators' flow controls of a queue, one row per task type.

``<task table>_controls`` (``tasks_controls``) belongs to the task model's ``MetaData``,
like the schedules table, and is created by
:func:`~sqlalchemy_taskqueue.migrations.create_controls_table_v1`.  A row says whether
claims of its type are paused; the row of the empty type name stands for the whole
queue (task types are never empty).  A row with a rate limit also keeps the start times
(epoch seconds, by the database clock, with how many tasks each claim took) of its
type's latest claims: at most ``limit`` starts lie within the last period, which is the limit itself (a sliding log, exact for any
window, where a token bucket would let twice the limit through across a boundary).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Float,
    Integer,
    Table,
    Text,
    false,
)

from sqlalchemy_taskqueue._json import JSONDocument
from sqlalchemy_taskqueue._schema import auxiliary_table, require_auxiliary_table
from sqlalchemy_taskqueue._timestamps import DatabaseNow, Timestamp

__all__ = [
    "CONTROLS_SUFFIX",
    "QUEUE_WIDE",
    "WHOLE_QUEUE",
    "RateLimit",
    "controls_table",
    "controls_table_name",
    "recent_starts",
    "require_controls_table",
    "started",
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
            Column("rate_limit", Integer, nullable=True),
            Column("rate_period_seconds", Float, nullable=True),
            Column("rate_starts", JSONDocument, nullable=True),
            Column("updated_at", Timestamp, nullable=False, server_default=DatabaseNow()),
            CheckConstraint(
                "(rate_limit IS NULL) = (rate_period_seconds IS NULL)", name=f"ck_{name}_rate"
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
        lacking="pauses and rate limits",
        upgrade="upgrade_task_table_v2_to_v3",
    )


@dataclass(frozen=True)
class RateLimit:
    """A task type's rate limit, as :meth:`~sqlalchemy_taskqueue.TaskRepository.rate_limits`
    reports it.

    :ivar task_type: the limited type.
    :ivar limit: at most this many claims of the type ...
    :ivar per: ... in any window of this length.
    :ivar recent_starts: claims within the last ``per`` (by the database clock, when read).
    :ivar paused: whether the type is paused too.

    Example::

        [f"{r.task_type}: {r.limit} per {r.per}" for r in repo.rate_limits()]
    """

    task_type: str
    limit: int
    per: timedelta
    recent_starts: int
    paused: bool

    @property
    def at_limit(self) -> bool:
        """Whether the type has used its whole budget for now.

        Example::

            [r.task_type for r in repo.rate_limits() if r.at_limit]
        """
        return self.recent_starts >= self.limit


def recent_starts(starts: Any, now: float, period: float) -> list[list[float]]:
    """The recorded claims (``[epoch seconds, tasks]`` pairs, one per claim statement, so
    the log grows with claims, not tasks) that lie within ``period`` before ``now``.

    >>> recent_starts([[100.0, 3], [100.5, 1], [101.2, 2]], now=101.4, period=1.0)
    [[100.5, 1], [101.2, 2]]
    """
    return [[float(at), int(count)] for at, count in (starts or []) if float(at) > now - period]


def started(pairs: list[list[float]]) -> int:
    """How many tasks the recorded claims started.

    >>> started([[100.5, 1], [101.2, 2]])
    3
    """
    return int(sum(count for _, count in pairs))
