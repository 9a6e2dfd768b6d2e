"""TaskMixin, its dataclass flavour, table args and the status enum."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    Session,
    declared_attr,
    mapped_column,
    sessionmaker,
)

from sqlalchemy_taskqueue import (
    TaskDataclassMixin,
    TaskMixin,
    TaskRepository,
    TaskStatus,
    merge_table_args,
)


def index_names(model: type[Any]) -> set[str]:
    return {str(index.name) for index in model.__table__.indexes}


def test_task_status_is_a_str_enum() -> None:
    assert [status.value for status in TaskStatus] == [
        "pending",
        "in_progress",
        "completed",
        "failed",
        "cancelled",
    ]
    assert TaskStatus.FAILED == "failed" and str(TaskStatus.FAILED) == "failed"
    assert isinstance(TaskStatus.PENDING, str)


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    __tablename__ = "tasks"


class Email(TaskMixin, Base):
    """A second queue table in the same metadata."""

    __tablename__ = "email_tasks"


def test_columns_types_and_constraints() -> None:
    table = Task.__table__
    assert list(table.c.keys())[:3] == ["id", "type", "payload"]
    assert isinstance(table.c.id.type, sa.BigInteger) and table.c.id.identity is not None
    for name in ("run_at", "created_at", "started_at", "completed_at", "lease_expires_at"):
        assert table.c[name].type.timezone is True, name
    assert not table.c.type.nullable and not table.c.payload.nullable
    assert {c.name for c in table.constraints if isinstance(c, sa.CheckConstraint)} == {
        "ck_tasks_status",
        "ck_tasks_progress",
        "ck_tasks_retries",
        "ck_tasks_concurrency",
    }
    assert not any("progress" in index.columns for index in table.indexes)


def test_two_queue_tables_live_in_one_metadata_with_their_own_index_names() -> None:
    # each queue brings its auxiliary tables, named after its task table
    assert set(Base.metadata.tables) == {
        "tasks",
        "tasks_schedules",
        "tasks_controls",
        "tasks_key_slots",
        "tasks_workers",
        "email_tasks",
        "email_tasks_schedules",
        "email_tasks_controls",
        "email_tasks_key_slots",
        "email_tasks_workers",
    }
    assert index_names(Task) == {
        "ix_tasks_claimable",
        "ix_tasks_keyed_claimable",
        "uq_tasks_active_dedupe",
        "ix_tasks_lease_expiry",
        "ix_tasks_finished",
    }
    assert index_names(Email) == {
        name.replace("tasks", "email_tasks") for name in index_names(Task)
    }


class AppBase(DeclarativeBase):
    pass


class HelperTask(TaskMixin, AppBase):
    __tablename__ = "helper_tasks"
    project_id: Mapped[int | None] = mapped_column()

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return merge_table_args(
            cls, sa.Index("ix_helper_project", "project_id"), {"comment": "app tasks"}
        )


class LiteralArgsTask(TaskMixin, AppBase):
    __tablename__ = "literal_tasks"
    project_id: Mapped[int | None] = mapped_column()
    __table_args__ = (sa.Index("ix_literal_project", "project_id"),)


def test_merge_table_args_keeps_the_library_indexes() -> None:
    assert "ix_helper_tasks_claimable" in index_names(HelperTask)
    assert "ix_helper_project" in index_names(HelperTask)
    assert HelperTask.__table__.comment == "app tasks"


def test_literal_table_args_are_merged_too() -> None:
    assert {"ix_literal_tasks_claimable", "ix_literal_project"} <= index_names(LiteralArgsTask)


def test_table_args_that_drop_the_library_indexes_are_rejected() -> None:
    class OtherBase(DeclarativeBase):
        pass

    with pytest.raises(TypeError, match="merge_table_args"):

        class Broken(TaskMixin, OtherBase):
            __tablename__ = "broken_tasks"

            @declared_attr.directive
            def __table_args__(cls) -> tuple[Any, ...]:
                return (sa.Index("ix_broken", "type"),)


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class DataclassTask(TaskDataclassMixin, DataclassBase):
    __tablename__ = "dataclass_tasks"

    tenant: Mapped[str] = mapped_column(sa.Text)


@pytest.fixture
def dataclass_table(engine: sa.Engine) -> Iterator[type[DataclassTask]]:
    DataclassBase.metadata.create_all(engine)
    yield DataclassTask
    DataclassBase.metadata.drop_all(engine)


def test_dataclass_flavour_constructs_and_round_trips(
    dataclass_table: type[DataclassTask], session_factory: sessionmaker[Session]
) -> None:
    made = DataclassTask("acme", type="report", payload={"n": 1})
    assert (made.tenant, made.status, made.max_retries) == ("acme", TaskStatus.PENDING, 3)
    with session_factory() as session:
        session.add(made)
        session.commit()
        repo = TaskRepository(session, DataclassTask)
        queued = repo.enqueue("report", {"n": 2}, tenant="globex")
        session.commit()
        claimed = repo.dequeue_many("report", limit=5)
        session.commit()
    assert [(task.id, task.tenant) for task in claimed] == [(made.id, "acme"), (queued, "globex")]
    assert all(task.run_at is not None and task.created_at is not None for task in claimed)
