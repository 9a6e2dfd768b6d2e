"""The small application the examples share: projects, their items, and the task queue.

``connect()`` finds a database (``TASKQUEUE_DATABASE_URL``, a local PostgreSQL, or an
embedded one) and ``migrate()`` creates the schema: the ``tasks`` table through the
reference Alembic environment (as an app would with ``alembic upgrade head``) and the
app's own tables.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Numeric,
    Text,
    UniqueConstraint,
    create_engine,
    func,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sqlalchemy_taskqueue import TaskMixin
from sqlalchemy_taskqueue.embedded import DATABASE_URL_ENV, resolve_database_url

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


def connect(url: str | None = None) -> Engine:
    """An engine for ``url``, else ``TASKQUEUE_DATABASE_URL``, a local or an embedded server."""
    return create_engine(url or resolve_database_url(DATABASE_URL_ENV), pool_size=10)


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


def seed_project(session: Session, name: str, items: int) -> Project:
    """A project with ``items`` items."""
    project = Project(name=name)
    project.items = [
        Item(sku=f"{name}-{n:05d}", name=f"Item {n}", price=Decimal(n % 50) + Decimal("0.99"))
        for n in range(items)
    ]
    session.add(project)
    session.flush()
    return project
