"""The worker registry of a queue: one row per running worker.

``<task table>_workers`` (``tasks_workers``) belongs to the task model's ``MetaData``,
like the queue's other auxiliary tables, and is created by
:func:`~sqlalchemy_taskqueue.migrations.create_workers_table_v1`.  A worker writes its
row when it starts, refreshes it with every heartbeat (in the transaction that renews
its leases) and deletes it when it stops gracefully; a row whose worker stopped
heartbeating expires (``expires_at``, one lease after its last heartbeat) and is
deleted by the next rescue of any worker.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import Any

from sqlalchemy import Column, Connection, Integer, Table, Text

from sqlalchemy_taskqueue._json import JSONDocument
from sqlalchemy_taskqueue._schema import auxiliary_table, require_auxiliary_table
from sqlalchemy_taskqueue._timestamps import DatabaseNow, Timestamp

__all__ = [
    "WORKERS_SUFFIX",
    "LiveWorker",
    "package_version",
    "require_workers_table",
    "workers_table",
]

#: The worker registry of a task table ``tasks`` is ``tasks_workers``.
WORKERS_SUFFIX = "_workers"


@functools.cache
def package_version() -> str:
    """The installed version of this library, as workers register it.

    Example::

        package_version()  # '0.1.0'
    """
    try:
        return metadata.version("sqlalchemy-taskqueue")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "0+unknown"


def workers_table(task_table: Table) -> Table:
    """The worker registry of ``task_table``, declared in its ``MetaData`` (once).

    Example::

        workers_table(Task.__table__).name  # 'tasks_workers'
    """
    return auxiliary_table(
        task_table,
        WORKERS_SUFFIX,
        lambda name: [
            Column("worker_id", Text, primary_key=True, comment="its lease owner name"),
            Column("host", Text, nullable=False),
            Column("pid", Integer, nullable=False),
            Column("task_types", JSONDocument, nullable=False),
            Column("slots", Integer, nullable=False),
            Column("version", Text, nullable=False),
            Column("started_at", Timestamp, nullable=False, server_default=DatabaseNow()),
            Column("heartbeat_at", Timestamp, nullable=False),
            Column("expires_at", Timestamp, nullable=False),
        ],
    )


def require_workers_table(connection: Connection, task_table: Table) -> None:
    """:class:`~sqlalchemy_taskqueue.exceptions.TaskTableError` with the fix, unless the
    worker registry of ``task_table`` exists (a queue created before version 4 has none
    until it is upgraded).

    Example::

        with engine.connect() as connection:
            require_workers_table(connection, Task.__table__)
    """
    require_auxiliary_table(
        connection,
        workers_table(task_table),
        task_table,
        lacking="the worker registry",
        upgrade="upgrade_task_table_v3_to_v4",
    )


@dataclass(frozen=True)
class LiveWorker:
    """A running worker, as :meth:`~sqlalchemy_taskqueue.TaskRepository.workers` reports
    it from the registry.

    :ivar worker_id: its identity (the ``lease_owner`` of the tasks it holds).
    :ivar host: the machine it runs on.
    :ivar pid: its process id there.
    :ivar task_types: the types it claims.
    :ivar slots: how many tasks it runs at once.
    :ivar version: the library's version it runs.
    :ivar started_at: when it started.
    :ivar heartbeat_at: its last heartbeat.

    Example::

        [(w.host, w.pid, w.slots) for w in repo.workers()]
    """

    worker_id: str
    host: str
    pid: int
    task_types: list[str]
    slots: int
    version: str
    started_at: datetime
    heartbeat_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> LiveWorker:
        """The worker of a registry row.

        Example::

            LiveWorker.from_row(session.execute(select(workers)).first())
        """
        return cls(
            worker_id=row.worker_id,
            host=row.host,
            pid=int(row.pid),
            task_types=list(row.task_types),
            slots=int(row.slots),
            version=row.version,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
        )
