"""The former home of :class:`~sqlalchemy_taskqueue.asyncio.AsyncTaskRepository`, kept so
that existing imports keep working.

Example::

    from sqlalchemy_taskqueue.async_repository import AsyncTaskRepository
"""

from .asyncio import AsyncTaskRepository

__all__ = ["AsyncTaskRepository"]
