"""Per-key concurrency: the key slots table of a queue and the rules for keys and limits.

``<task table>_key_slots`` (``tasks_key_slots``) belongs to the task model's
``MetaData``, like the schedules and controls tables, and is created by
:func:`~sqlalchemy_taskqueue.migrations.create_key_slots_table_v1`.  A key with limit
``n`` has ``n`` rows (slots ``1..n``), added when its first task is enqueued; a slot row
names the task holding it while that task is in progress.

A claim takes a slot the way it takes a task: it locks a free slot row with
``FOR UPDATE SKIP LOCKED`` (rechecked on the row's newest version, so two claims can
never both take it) and writes the task's id into it, in the same statement that marks
the task ``in_progress``.  Every statement that moves a task out of ``in_progress``
(completion, failure, hand-back, rescue, cancel) empties its slot in the same statement.
Each task frees only its own slot row, so outcomes never wait for one another, and no
lock is held between statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, Integer, Table, Text

from sqlalchemy_taskqueue._schema import auxiliary_table, require_auxiliary_table
from sqlalchemy_taskqueue._timestamps import Timestamp
from sqlalchemy_taskqueue._validation import require_key

__all__ = [
    "KEY_SLOTS_SUFFIX",
    "MAX_CONCURRENCY_LIMIT",
    "KeyAtLimit",
    "concurrency_values",
    "key_slots_table",
    "require_key_slots_table",
]

#: The key slots table of a task table ``tasks`` is ``tasks_key_slots``.
KEY_SLOTS_SUFFIX = "_key_slots"
#: A key's limit is its number of slot rows: kept to a size a table of rows suits.
MAX_CONCURRENCY_LIMIT = 1000


def key_slots_table(task_table: Table) -> Table:
    """The key slots table of ``task_table``, declared in its ``MetaData`` (once).

    Example::

        key_slots_table(Task.__table__).name  # 'tasks_key_slots'
    """
    return auxiliary_table(
        task_table,
        KEY_SLOTS_SUFFIX,
        lambda name: [
            Column("concurrency_key", Text, primary_key=True),
            Column("slot", Integer, primary_key=True, autoincrement=False),
            Column("task_id", BigInteger, nullable=True, comment="the task holding the slot"),
            Column("claimed_at", Timestamp, nullable=True),
        ],
    )


def require_key_slots_table(connection: Connection, task_table: Table) -> None:
    """:class:`~sqlalchemy_taskqueue.exceptions.TaskTableError` with the fix, unless the
    key slots table of ``task_table`` exists (a queue created before version 4 has none
    until it is upgraded).

    Example::

        with engine.connect() as connection:
            require_key_slots_table(connection, Task.__table__)
    """
    require_auxiliary_table(
        connection,
        key_slots_table(task_table),
        task_table,
        lacking="per-key concurrency limits",
        upgrade="upgrade_task_table_v3_to_v4",
    )


def concurrency_values(key: Any, limit: Any) -> dict[str, Any]:
    """The column values of a task's concurrency key and limit, both checked: ``{}``
    without a key; a key is a non-empty string of at most 1024 UTF-8 bytes without NUL
    (the rule of dedupe keys), a limit an integer from 1 to 1000.

    >>> concurrency_values("customer:42", 1)
    {'concurrency_key': 'customer:42', 'concurrency_limit': 1}
    >>> concurrency_values(None, 1)
    {}
    >>> concurrency_values("customer:42", 0)
    Traceback (most recent call last):
        ...
    ValueError: concurrency_limit must be an integer from 1 to 1000, got 0
    """
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"concurrency_limit must be an int, got {type(limit).__name__}")
    if not 1 <= limit <= MAX_CONCURRENCY_LIMIT:
        raise ValueError(
            f"concurrency_limit must be an integer from 1 to {MAX_CONCURRENCY_LIMIT}, got {limit}"
        )
    if key is None:
        return {}
    require_key("concurrency_key", key)
    return {"concurrency_key": key, "concurrency_limit": limit}


@dataclass(frozen=True)
class KeyAtLimit:
    """A concurrency key whose slots are all taken, as
    :meth:`~sqlalchemy_taskqueue.TaskRepository.keys_at_limit` reports it.

    :ivar concurrency_key: the key.
    :ivar limit: its number of slots.
    :ivar running: tasks of the key in progress now (``running == limit``).
    :ivar waiting: its due tasks waiting for a slot.

    Example::

        [f"{k.concurrency_key}: {k.running}/{k.limit}" for k in repo.keys_at_limit()]
    """

    concurrency_key: str
    limit: int
    running: int
    waiting: int
