"""What a handler receives: its task as a detached instance of the app's model, as the
ORM would have loaded it (the app's own columns, the polymorphic subclass of the
row's type, reconstructors run, relationships the mapping loads eagerly)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import declare_task_model, with_tables
from sqlalchemy import ForeignKey, String, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, reconstructor, relationship
from worker_harness import Factory, MakeWorker, enqueue

from sqlalchemy_taskqueue import TaskContext, TaskMixin


class _KindBase(DeclarativeBase):
    pass


class KindTask(TaskMixin, _KindBase):
    """A model whose loads the ORM itself must do: a class per type, a reconstructor."""

    __tablename__ = "tasks_worker_kinds"
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "kind"}

    @reconstructor
    def _loaded(self) -> None:
        self.seen_by_orm = True


class ReportTask(KindTask):
    __mapper_args__ = {"polymorphic_identity": "report"}


@pytest.fixture
def own_model(engine: Any) -> Iterator[type[Any]]:
    """A plain app model with its own columns, one mapped under another attribute name."""
    model = declare_task_model(
        "tasks_worker_own_columns",
        tenant=mapped_column("tenant_name", String(40), nullable=True),
    )
    yield from with_tables(engine, model)


@pytest.fixture
def kind_model(engine: Any) -> Iterator[type[Any]]:
    yield from with_tables(engine, KindTask)


def test_handlers_get_detached_instances_with_the_apps_own_columns(
    make_worker: MakeWorker, session_factory: Factory, own_model: type[Any]
) -> None:
    seen: list[tuple[Any, ...]] = []

    def job(task: Any, ctx: TaskContext) -> None:
        state = inspect(task)
        seen.append((type(task), task.tenant, task.payload, state.detached, state.identity))

    task_id = enqueue(session_factory, own_model, "job", {"n": 1}, tenant_name="t1")
    make_worker(session_factory, own_model, {"job": job}).run(until_empty=True)
    assert seen == [(own_model, "t1", {"n": 1}, True, (task_id,))]


def test_handlers_get_instances_the_orm_loaded_when_the_mapping_needs_it(
    make_worker: MakeWorker, session_factory: Factory, kind_model: type[Any]
) -> None:
    """A polymorphic model gets the subclass of the row's type, and reconstructors run."""
    seen: list[tuple[Any, ...]] = []

    def report(task: Any, ctx: TaskContext) -> None:
        seen.append((type(task), task.seen_by_orm, inspect(task).detached))

    enqueue(session_factory, kind_model, "report")
    make_worker(session_factory, kind_model, {"report": report}).run(until_empty=True)
    assert seen == [(ReportTask, True, True)]


class _ProjectBase(DeclarativeBase):
    pass


class Project(_ProjectBase):
    __tablename__ = "projects_worker"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class ProjectTask(TaskMixin, _ProjectBase):
    """A model whose ORM loads also load a relationship (after the row, by SELECT IN)."""

    __tablename__ = "tasks_worker_projects"

    project_id: Mapped[int | None] = mapped_column(ForeignKey(Project.id))
    project: Mapped[Project | None] = relationship(lazy="selectin")


@pytest.fixture
def project_model(engine: Any) -> Iterator[type[Any]]:
    yield from with_tables(engine, ProjectTask)


def test_handlers_get_the_relationships_the_orm_loads_eagerly(
    make_worker: MakeWorker, session_factory: Factory, project_model: type[Any]
) -> None:
    seen: list[str] = []

    def export(task: Any, ctx: TaskContext) -> None:
        seen.append(task.project.name)

    with session_factory.begin() as session:
        session.add(Project(id=1, name="acme"))
    enqueue(session_factory, project_model, "export", project_id=1)
    make_worker(session_factory, project_model, {"export": export}).run(until_empty=True)
    assert seen == ["acme"]
