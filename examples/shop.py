"""The small application the examples share: projects, their items, and the task queue.

``migrate()`` creates the schema: the ``tasks`` table through the reference Alembic
environment of the repository (as an app would with ``alembic upgrade head``; the
``migrations`` extra) and the app's own tables.  Each example runs it on a database of
its own (:mod:`examples.sandbox`).
"""

from __future__ import annotations

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
    func,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from sqlalchemy_taskqueue import TaskMixin, TaskRepository, Worker

from .sandbox import missing_extra

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


def migrate(engine: Engine) -> None:
    """``alembic upgrade head`` for the queue, then the app's own tables."""
    try:
        from alembic.config import Config

        from alembic import command
    except ImportError as exc:
        raise missing_extra("the examples", "migrations", exc) from None

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


def run_and_show(engine: Engine, handlers: Mapping[str, Any], task_id: int, note: str = "") -> Any:
    """Run a worker until nothing is claimable, print the task's final state and return
    the task."""
    factory = sessionmaker(engine)
    Worker(factory, Task, handlers).run(until_empty=True)
    with factory() as session:
        task = TaskRepository(session, Task).get_task(task_id)
        assert task is not None
        print(f"task {task.id}: {task.status} {task.progress}% {note}result={task.result}")
        return task
