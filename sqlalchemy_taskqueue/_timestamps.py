"""How the queue stores instants on any database: timezone-aware, in UTC.

PostgreSQL keeps ``timestamptz`` and its drivers return aware datetimes.  Databases
without a time-zone-aware type (SQLite) store the instant in UTC without a zone; the
column type here converts on the way in and out, so the public API hands out aware
datetimes everywhere.  :class:`DatabaseNow` is the database clock as a column's server
default, written in each database's own SQL by its backend.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from sqlalchemy_taskqueue._autogenerate import RevisionRendered
from sqlalchemy_taskqueue.backends import find_backend

__all__ = ["DatabaseNow", "Timestamp", "TimestampType"]


def _stores_naive(dialect: Dialect) -> bool:
    backend = find_backend(dialect.name)
    return backend is not None and not backend.capabilities.aware_timestamps


class TimestampType(RevisionRendered, TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that reads back aware datetimes (UTC) on every
    database.  Where the database's type keeps a zone, values pass through untouched
    (no conversion on the hot paths); elsewhere aware values are stored as their UTC
    time and read back with UTC attached.

    Example::

        started_at: Mapped[datetime | None] = mapped_column(TimestampType())
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """The impl's processor, after a conversion to naive UTC where the database
        stores no zone.

        >>> from sqlalchemy.dialects import postgresql
        >>> TimestampType().bind_processor(postgresql.psycopg2.dialect()) is None
        True
        """
        processor = self.impl_instance.bind_processor(dialect)
        if not _stores_naive(dialect):
            return processor

        def to_utc(value: Any) -> Any:
            if isinstance(value, datetime) and value.tzinfo is not None:
                value = value.astimezone(timezone.utc).replace(tzinfo=None)
            return value if processor is None else processor(value)

        return to_utc

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        """The impl's processor, then UTC attached where the database stores no zone.

        >>> from sqlalchemy.dialects import sqlite
        >>> on_sqlite = TimestampType().dialect_impl(sqlite.dialect())
        >>> on_sqlite.result_processor(sqlite.dialect(), None)("2026-01-02 03:04:05.000006")
        datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)
        """
        processor = self.impl_instance.result_processor(dialect, coltype)
        if not _stores_naive(dialect):
            return processor

        def aware(value: Any) -> Any:
            if processor is not None:
                value = processor(value)
            if isinstance(value, datetime) and value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value

        return aware

    def revision_type(self) -> TypeEngine[Any]:
        """``DateTime(timezone=True)``: what a revision creates the column with.

        >>> TimestampType().revision_type()
        DateTime(timezone=True)
        """
        return DateTime(timezone=True)


#: The type of the queue's timestamp columns.
Timestamp = TimestampType()


class DatabaseNow(FunctionElement[datetime]):
    """The database clock, for a column's server default (``now()`` on PostgreSQL; each
    backend writes its own).

    Example::

        Column("created_at", Timestamp, nullable=False, server_default=DatabaseNow())
    """

    type = TimestampType()
    inherit_cache = True


@compiles(DatabaseNow)
def _compile_database_now(element: DatabaseNow, compiler: SQLCompiler, **kw: Any) -> str:
    backend = find_backend(compiler.dialect.name)
    return "now()" if backend is None else backend.clock_sql
