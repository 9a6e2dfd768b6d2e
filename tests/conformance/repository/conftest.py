"""Every test in this folder runs against both repository twins: ``TaskRepository`` on a
``Session`` and ``AsyncTaskRepository``, awaited, on an ``AsyncSession`` over asyncpg."""

from __future__ import annotations

from repository_harness import repo, session

__all__ = ["repo", "session"]  # the twin fixtures, overriding the plain ones
