"""An app model with its own columns: tasks that belong to a project and a user.

``ProjectTask`` adds a ``project_id`` foreign key, a ``requested_by`` column and an
index of its own (merged with the library's through ``merge_table_args``).  Its table is
created by a migration that calls the frozen helper with the extra columns, and the app
queries tasks with ordinary ORM joins.

Needs: a clone of the repository and the ``migrations`` extra
(``pip install -e '.[migrations]'``).

Run it from the root of the clone: ``python -m examples.custom_columns``.  It migrates
both queue tables, enqueues three tasks for two projects and prints what the joins
find.  It runs on a database of its own, dropped at the end (:mod:`examples.sandbox`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import ForeignKey, Index, Text, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, declared_attr, mapped_column, relationship

from sqlalchemy_taskqueue import TaskMixin, TaskRepository, TaskStatus, merge_table_args
from sqlalchemy_taskqueue.migrations import create_task_table_v5

from .sandbox import run, sandbox
from .shop import Base, Project, create_sample_project, migrate


class ProjectTask(TaskMixin, Base):
    """A second queue table, living in the same metadata as ``tasks``."""

    __tablename__ = "project_tasks"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    requested_by: Mapped[str] = mapped_column(Text)
    project: Mapped[Project] = relationship()

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return merge_table_args(cls, Index("ix_project_tasks_project", "project_id"))


def upgrade(engine: Engine) -> None:
    """What the app's Alembic revision does: the helper plus the app's own columns."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    with engine.begin() as connection:
        if sa.inspect(connection).has_table("project_tasks"):
            return
        operations = Operations(MigrationContext.configure(connection))
        with Operations.context(operations.migration_context):
            create_task_table_v5(
                "project_tasks",
                sa.Column("project_id", sa.BigInteger, ForeignKey("projects.id"), nullable=False),
                sa.Column("requested_by", sa.Text, nullable=False),
            )
            operations.create_index("ix_project_tasks_project", "project_tasks", ["project_id"])


def enqueue_for_project(session: Session, project: Project, kind: str, user: str) -> int:
    """Enqueue with the app's columns filled in."""
    repo = TaskRepository(session, ProjectTask)
    return repo.enqueue(kind, {"project": project.name}, project_id=project.id, requested_by=user)


def active_tasks_per_project(session: Session) -> list[tuple[str, int]]:
    """Projects and how many of their tasks are pending or running (an ORM join)."""
    stmt = (
        select(Project.name, func.count(ProjectTask.id))
        .join(ProjectTask, ProjectTask.project_id == Project.id)
        .where(ProjectTask.status.in_([TaskStatus.PENDING, TaskStatus.IN_PROGRESS]))
        .group_by(Project.name)
        .order_by(Project.name)
    )
    return [(name, int(count)) for name, count in session.execute(stmt)]


def tasks_requested_by(session: Session, user: str) -> list[ProjectTask]:
    """A user's tasks with their projects loaded."""
    stmt = (
        select(ProjectTask)
        .join(ProjectTask.project)
        .where(ProjectTask.requested_by == user)
        .order_by(Project.name, ProjectTask.id)
    )
    return list(session.scalars(stmt))


def migrate_both(engine: Engine) -> None:
    """The shared schema, then the ``project_tasks`` revision."""
    migrate(engine)
    upgrade(engine)


def main(argv: list[str]) -> int:
    """Enqueue tasks with the app's columns and print what the ORM joins find."""
    with sandbox("taskqueue_example_columns", migrate_both) as box:
        box.announce("examples.custom_columns")
        with Session(box.engine) as session, session.begin():
            alpha = create_sample_project(session, "alpha", items=0)
            beta = create_sample_project(session, "beta", items=0)
            enqueue_for_project(session, alpha, "reindex", "ada")
            enqueue_for_project(session, alpha, "export", "grace")
            enqueue_for_project(session, beta, "export", "ada")
        with Session(box.engine) as session:
            for name, count in active_tasks_per_project(session):
                print(f"{name}: {count} active task(s)")
            for task in tasks_requested_by(session, "ada"):
                print(f"ada asked for {task.type} on {task.project.name} (task {task.id})")
    return 0


if __name__ == "__main__":
    run(main)
