"""The small application the examples share: projects, their items, and the task queue.

``connect()`` finds a database (``TASKQUEUE_DATABASE_URL``, a local PostgreSQL, or an
embedded one) and ``migrate()`` creates the schema: the ``tasks`` table through the
reference Alembic environment (as an app would with ``alembic upgrade head``) and the
app's own tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Numeric,
    Text,
    UniqueConstraint,
    create_engine,
    func,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.pool import NullPool

from sqlalchemy_taskqueue import TaskMixin, TaskRepository, Worker
from sqlalchemy_taskqueue.contrib.testing import (
    DATABASE_URL_ENV,
    normalize_url,
    resolve_database_url,
)

ROOT = Path(__file__).resolve().parent.parent


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    """The queue table created by ``alembic/versions/0001_create_tasks_table.py``."""

    __tablename__ = "tasks"


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    items: Mapped[list[Item]] = relationship(back_populates="project")


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("project_id", "sku"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    sku: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    project: Mapped[Project] = relationship(back_populates="items")


class Notification(Base):
    """Stands in for e-mail: what the export example 'sends'."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    recipient: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


APP_TABLES = [Project.__table__, Item.__table__, Notification.__table__]


EXAMPLES_DATABASE = "taskqueue_examples"


def connect(url: str | None = None) -> Engine:
    """An engine for ``url``, else ``TASKQUEUE_DATABASE_URL``; with neither, a database
    of the examples' own on the local (or embedded) server, so nothing else is touched."""
    if url is None and os.environ.get(DATABASE_URL_ENV):
        url = os.environ[DATABASE_URL_ENV]
    if url is None:
        url = database_on_server(resolve_database_url(), EXAMPLES_DATABASE)
    return create_engine(normalize_url(url), pool_size=10)


def database_on_server(server_url: str, name: str, *, fresh: bool = False) -> str:
    """The URL of database ``name`` on the server, created if missing (or anew if
    ``fresh``); the server's own database when we may not create one."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            if fresh:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            exists = connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    except SQLAlchemyError as exc:
        print(f"cannot create database {name} ({type(exc).__name__}); using the server's own")
        return server_url
    finally:
        admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def migrate(engine: Engine) -> None:
    """``alembic upgrade head`` for the queue, then the app's own tables."""
    from alembic.config import Config

    from alembic import command

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
    Base.metadata.create_all(engine, tables=APP_TABLES)


def create_sample_project(session: Session, name: str, items: int) -> Project:
    """A project with ``items`` items."""
    project = Project(name=name)
    project.items = [
        Item(sku=f"{name}-{n:05d}", name=f"Item {n}", price=Decimal(n % 50) + Decimal("0.99"))
        for n in range(items)
    ]
    session.add(project)
    session.flush()
    return project


def run_and_show(engine: Engine, handlers: Mapping[str, Any], task_id: int, note: str = "") -> None:
    """Run a worker until nothing is claimable, then print the task's final state."""
    factory = sessionmaker(engine)
    Worker(factory, Task, handlers).run(until_empty=True)
    with factory() as session:
        task = TaskRepository(session, Task).get_task(task_id)
        assert task is not None
        print(f"task {task.id}: {task.status} {task.progress}% {note}result={task.result}")
