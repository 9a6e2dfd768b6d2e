"""Task states and the groups of states the queue reasons about.

:class:`TaskStatus` is a string enum, so its members compare equal to the plain strings
stored in the ``status`` column::

    >>> TaskStatus.PENDING == "pending"
    True
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - exercised on Python 3.10 only
    from enum import Enum

    class StrEnum(str, Enum):
        """The Python 3.11 ``StrEnum``: members are strings and print as their value."""

        def __str__(self) -> str:
            return str(self.value)


__all__ = ["ACTIVE_STATUSES", "FINISHED_STATUSES", "TaskStatus"]


class TaskStatus(StrEnum):
    """The life cycle of a task: ``pending -> in_progress -> completed | failed``.

    A failed attempt with retries left goes back to ``pending``; ``cancelled`` ends a task
    that never ran.  Members are strings, so they compare equal to the stored text.

    Example::

        failed = session.scalars(select(Task).where(Task.status == TaskStatus.FAILED))
        assert TaskStatus.IN_PROGRESS == "in_progress"
    """

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: States in which a task still has work ahead of it (deduplication applies to these).
ACTIVE_STATUSES: tuple[TaskStatus, ...] = (TaskStatus.PENDING, TaskStatus.IN_PROGRESS)

#: Terminal states; rows in these states are what cleanup deletes.
FINISHED_STATUSES: tuple[TaskStatus, ...] = (
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
)
