"""The former home of :class:`~sqlalchemy_taskqueue.asyncio.AsyncWorker`, kept so that
existing imports keep working.

Example::

    from sqlalchemy_taskqueue.async_worker import AsyncWorker
"""

from .worker._asyncio import AsyncWorker

__all__ = ["AsyncWorker"]
