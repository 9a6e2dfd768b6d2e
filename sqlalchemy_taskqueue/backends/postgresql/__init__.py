"""The PostgreSQL backend (12 and later; psycopg2, psycopg 3 or asyncpg).

Its statements (:mod:`._statements`), its wake-up by ``LISTEN``/``NOTIFY``
(:mod:`._wakeup`), the worker engines that survive a frozen network (:mod:`._connections`)
and the embedded server for tests and the demo (:mod:`._embedded`) live here, and nowhere
else in the package names PostgreSQL or its drivers.

Example::

    from sqlalchemy_taskqueue.backends.postgresql import BACKEND

    BACKEND.capabilities.listen  # True
"""

from sqlalchemy_taskqueue.backends.base import Backend

from ._backend import PostgreSQLBackend

__all__ = ["BACKEND", "PostgreSQLBackend"]

#: The instance :func:`~sqlalchemy_taskqueue.backends.backend_for` hands out.
BACKEND: Backend = PostgreSQLBackend()
