"""The SQLite backend (3.35 and later; the standard library's ``sqlite3``, aiosqlite for
the async twin).

SQLite has one writer at a time: every queue operation that writes takes the database's
write lock with its first statement and holds it until its transaction commits, so the
claims, slots and outcomes written here never race one another.  There is no
``SKIP LOCKED`` and no notification channel; idle workers poll.  See
:mod:`._connections` for the engine settings (WAL, ``busy_timeout``, ``BEGIN
IMMEDIATE``).

Example::

    from sqlalchemy_taskqueue.backends.sqlite import BACKEND

    BACKEND.capabilities.listen  # False
"""

from sqlalchemy_taskqueue.backends.base import Backend

from ._backend import SQLiteBackend
from ._connections import configure_engine

__all__ = ["BACKEND", "SQLiteBackend", "configure_engine"]

#: The instance :func:`~sqlalchemy_taskqueue.backends.backend_for` hands out.
BACKEND: Backend = SQLiteBackend()
