"""What every backend's schema shares: the queue table's index predicates, the claim
order and the wake-up channel name.

The predicates are SQL text that every supported database reads the same way; a
backend that has no partial indexes enforces their meaning its own way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, Index, Table, inspect
from sqlalchemy.schema import SchemaItem

from sqlalchemy_taskqueue.backends import partial_index_options
from sqlalchemy_taskqueue.exceptions import TaskTableError
from sqlalchemy_taskqueue.status import ACTIVE_STATUSES, FINISHED_STATUSES, TaskStatus

__all__ = [
    "ACTIVE_DEDUPE_PREDICATE",
    "CLAIMABLE_PREDICATE",
    "CLAIM_ORDER",
    "FINISHED_PREDICATE",
    "KEYED_CLAIMABLE_PREDICATE",
    "LEASED_PREDICATE",
    "UNSTARTED_RESCUE",
    "notify_channel",
    "partial_index",
]


def _quoted_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


#: Rows a worker may claim without a concurrency slot (``run_at`` is checked by the
#: query, not the index predicate).
CLAIMABLE_PREDICATE = f"status = '{TaskStatus.PENDING}' AND concurrency_key IS NULL"
#: Rows a worker may claim once it holds a free slot of their concurrency key.
KEYED_CLAIMABLE_PREDICATE = f"status = '{TaskStatus.PENDING}' AND concurrency_key IS NOT NULL"
#: The order claims pick due tasks in: lowest priority first, then oldest, then by id.
CLAIM_ORDER = ("priority", "run_at", "id")
#: Rows whose dedupe key must be unique per type.
ACTIVE_DEDUPE_PREDICATE = f"dedupe_key IS NOT NULL AND status IN ({_quoted_list(ACTIVE_STATUSES)})"
#: Rows holding a lease, looked up by expiry for rescue.
LEASED_PREDICATE = f"status = '{TaskStatus.IN_PROGRESS}'"
#: Rows that cleanup may delete, looked up by age.
FINISHED_PREDICATE = f"status IN ({_quoted_list(FINISHED_STATUSES)})"

#: The ``error_message`` of a task rescued without a charge: its worker stopped before
#: the attempt started.  A worker starts such a task only once it has recorded the start,
#: so a task that kills its worker is charged from its second crash on.
UNSTARTED_RESCUE = (
    "lease expired before the attempt started: its worker stopped (no retry was used)"
)


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index restricted to the rows matching ``where`` on every database whose backend
    supports partial indexes (elsewhere a plain index; such a backend enforces what a
    partial unique index would in its own way).

    Example::

        partial_index("ix_tasks_claimable", "priority", "run_at", "id", where=CLAIMABLE_PREDICATE)
    """
    return Index(name, *columns, unique=unique, **partial_index_options(where))


#: Channel names are identifiers on the databases that have channels: 63 bytes at most.
_MAX_CHANNEL_BYTES = 63


def notify_channel(table: Table) -> str:
    """The wake-up channel on which tasks made claimable in ``table`` are announced (on
    databases whose backend can listen).

    ``taskqueue_<schema.table>``; a name longer than an identifier may be keeps its start
    and ends with a hash of the whole name, so it stays unique.

    Example::

        notify_channel(Task.__table__)  # 'taskqueue_tasks'
    """
    channel = f"taskqueue_{table.fullname}"
    if len(channel.encode()) <= _MAX_CHANNEL_BYTES:
        return channel
    digest = hashlib.sha256(channel.encode()).hexdigest()[:16]
    head = channel.encode()[: _MAX_CHANNEL_BYTES - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}_{digest}"


def require_auxiliary_table(
    connection: Connection, table: Table, task_table: Table, *, lacking: str, upgrade: str
) -> None:
    """:class:`~sqlalchemy_taskqueue.exceptions.TaskTableError` with the fix, unless the
    auxiliary ``table`` of ``task_table`` exists in the database: a queue created before
    the version that added it ``lacking`` it, upgraded by the migration helper ``upgrade``.

    Example::

        require_auxiliary_table(
            connection, schedules, Task.__table__,
            lacking="periodic tasks", upgrade="upgrade_task_table_v1_to_v2",
        )
    """
    if inspect(connection).has_table(table.name, schema=table.schema):
        return
    schema = f", schema={task_table.schema!r}" if task_table.schema else ""
    raise TaskTableError(
        table.fullname,
        None,
        f"The table {table.fullname!r} does not exist in the database: the queue predates "
        f"{lacking}. Upgrade it: `alembic upgrade head` with a revision that calls "
        f"sqlalchemy_taskqueue.migrations.{upgrade}({task_table.name!r}{schema}) "
        "(or Base.metadata.create_all(engine) without Alembic).",
    )


def auxiliary_table(
    task_table: Table, suffix: str, items: Callable[[str], Sequence[SchemaItem]]
) -> Table:
    """The auxiliary table ``<task table><suffix>`` of a queue, declared in the task
    table's ``MetaData`` the first time it is asked for, with the columns and
    constraints ``items(name)`` gives, and found there afterwards.

    Example::

        auxiliary_table(Task.__table__, "_controls", lambda name: [Column("task_type", Text)])
    """
    name = f"{task_table.name}{suffix}"
    key = name if task_table.schema is None else f"{task_table.schema}.{name}"
    existing = task_table.metadata.tables.get(key)
    if existing is not None:
        return existing
    return Table(name, task_table.metadata, *items(name), schema=task_table.schema)
