"""Reference Alembic environment: migrates the default ``tasks`` queue table.

Copy the revision in ``versions/`` into your own Alembic project (or call the helpers in
``sqlalchemy_taskqueue.migrations`` from your own revisions).  The URL is taken from, in
order: a connection in ``config.attributes["connection"]``, ``sqlalchemy.url`` set
programmatically, ``alembic -x url=...``, ``TASKQUEUE_DATABASE_URL``, then a local or
embedded PostgreSQL.
"""

from __future__ import annotations

from logging.config import fileConfig

from sqlalchemy import Connection, create_engine, pool
from sqlalchemy.orm import DeclarativeBase

from alembic import context
from sqlalchemy_taskqueue import TaskMixin
from sqlalchemy_taskqueue.contrib.testing import (
    DATABASE_URL_ENV,
    normalize_url,
    resolve_database_url,
)

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    """The default queue table, as an application would declare it."""

    __tablename__ = "tasks"


target_metadata = Base.metadata


def database_url() -> str:
    configured = config.get_main_option("sqlalchemy.url")
    if configured:
        return configured
    from_cli = context.get_x_argument(as_dictionary=True).get("url")
    return normalize_url(from_cli) if from_cli else resolve_database_url(DATABASE_URL_ENV)


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # a connection handed in by the caller (config.attributes["connection"]) wins: that is
    # how tests and apps run migrations inside their own connection
    given = config.attributes.get("connection")
    if given is not None:
        run_on(given)
        return
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        run_on(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
