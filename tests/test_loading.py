"""Claimed rows built into detached task instances without an ORM query (``loading``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import declare_task_model, with_tables
from sqlalchemy import Engine, String, func, inspect, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.mutable import MutableDict
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    Session,
    column_property,
    mapped_column,
    reconstructor,
)
from sqlalchemy.orm.exc import DetachedInstanceError

from sqlalchemy_taskqueue import TaskDataclassMixin, TaskMixin, TaskRepository
from sqlalchemy_taskqueue._loading import detached_loader
from sqlalchemy_taskqueue.repository import detached_in_claim_order


@pytest.fixture
def own_columns_model(engine: Engine) -> Iterator[type[Any]]:
    """An app model with columns of its own, one mapped under another attribute name."""
    model = declare_task_model(
        "tasks_loading_own_columns",
        project_id=mapped_column(String(20), nullable=True),
        tenant=mapped_column("tenant_name", String(40), nullable=True),
    )
    yield from with_tables(engine, model)


def test_a_built_instance_is_the_orm_loaded_one_detached(
    own_columns_model: type[Any], session: Session
) -> None:
    model = own_columns_model
    repo = TaskRepository(session, model)
    task_id = repo.enqueue(
        "export", {"rows": [1, 2]}, priority=-2, project_id="p7", tenant_name="t1"
    )
    repo.dequeue("export")  # a lease, a token and a start time to compare too
    session.commit()
    load = detached_loader(model)
    assert load is not None
    [row] = session.execute(select(*model.__table__.c).where(model.id == task_id)).all()
    [built] = load([row])
    loaded = session.get(model, task_id)
    assert loaded is not None
    for attribute in inspect(model).column_attrs:
        assert getattr(built, attribute.key) == getattr(loaded, attribute.key), attribute.key
    assert (built.tenant, built.project_id, built.payload) == ("t1", "p7", {"rows": [1, 2]})
    state = inspect(built)
    assert state.detached and state.identity == (task_id,) and not state.modified
    # its state is the one an instance loaded by a query and expunged has
    session.expunge(loaded)
    expected = inspect(loaded)
    for name in ("key", "unloaded", "expired_attributes", "committed_state", "modified"):
        assert getattr(state, name) == getattr(expected, name), name
    session.rollback()

    # usable as a loaded instance: merged without a query, changed, flushed as an UPDATE
    merged = session.merge(built, load=False)
    merged.project_id = "p8"
    session.commit()
    assert session.scalar(select(model.project_id).where(model.id == task_id)) == "p8"
    session.rollback()


@pytest.fixture
def expression_model(engine: Engine) -> Iterator[type[Any]]:
    """An app model with an attribute computed by SQL, which no claim row holds."""
    model = declare_task_model("tasks_loading_expression")
    model.shouted_type = column_property(func.upper(model.__table__.c.type))
    yield from with_tables(engine, model)


def test_an_sql_expression_attribute_is_left_to_load_as_the_orm_leaves_it(
    expression_model: type[Any], session: Session
) -> None:
    """A ``column_property`` of a SQL expression is not among the claim's columns: the
    ORM's loading of the claim leaves it expired (an error while detached, loaded once the
    instance is in a session again), and so does the loader, never a silent ``None``."""
    model = expression_model
    load = detached_loader(model)
    assert load is not None
    repo = TaskRepository(session, model)
    repo.enqueue("export", {})
    session.commit()
    [claimed] = repo.dequeue_many("export", limit=1)  # the ORM's loading of the claim
    [built] = load(session.execute(select(*model.__table__.c)).all())
    session.rollback()
    assert inspect(built).expired_attributes == inspect(claimed).expired_attributes
    assert inspect(built).expired_attributes == {"shouted_type"}
    with pytest.raises(DetachedInstanceError):
        _ = built.shouted_type
    session.add(built)
    assert built.shouted_type == "EXPORT"
    session.rollback()


class _Base(DeclarativeBase):
    pass


class ReconstructedTask(TaskMixin, _Base):
    __tablename__ = "tasks_loading_reconstructed"

    @reconstructor
    def _loaded(self) -> None:
        self.seen_by_orm = True


class MutableResultTask(TaskMixin, _Base):
    __tablename__ = "tasks_loading_mutable"

    notes: Mapped[dict[str, Any] | None] = mapped_column(MutableDict.as_mutable(JSONB))


class PolymorphicTask(TaskMixin, _Base):
    __tablename__ = "tasks_loading_polymorphic"
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "base"}


class ExportTask(PolymorphicTask):
    __mapper_args__ = {"polymorphic_identity": "export"}


@pytest.mark.parametrize(
    "model", [ReconstructedTask, MutableResultTask, PolymorphicTask, ExportTask]
)
def test_mappings_that_need_the_orm_keep_its_loading(model: type[Any]) -> None:
    """Reconstructors and mutable types hook ORM loads; polymorphism picks the class
    from the row: none of these gets a loader of its own."""
    assert detached_loader(model) is None


def test_a_plain_task_model_gets_a_loader(task_model: type[Any]) -> None:
    assert detached_loader(task_model) is not None


class _DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class DataclassTask(TaskDataclassMixin, _DataclassBase):
    __tablename__ = "tasks_loading_dataclass"

    tenant: Mapped[str] = mapped_column(String(40))


@pytest.fixture
def dataclass_model(engine: Engine) -> Iterator[type[DataclassTask]]:
    yield from with_tables(engine, DataclassTask)


def test_a_dataclass_model_is_built_as_the_orm_loads_it(
    dataclass_model: type[DataclassTask], session: Session
) -> None:
    task_id = TaskRepository(session, dataclass_model).enqueue("report", {"n": 1}, tenant="acme")
    session.commit()
    load = detached_loader(dataclass_model)
    assert load is not None
    [built] = load(session.execute(select(*dataclass_model.__table__.c)).all())
    loaded = session.get(dataclass_model, task_id)
    assert built == loaded  # the dataclass compares every field
    assert (built.id, built.tenant, inspect(built).detached) == (task_id, "acme", True)
    session.rollback()


def test_claims_skip_the_session_only_for_plain_sessions_and_models(
    engine: Engine, task_model: type[Any]
) -> None:
    from sqlalchemy import event
    from sqlalchemy.orm import sessionmaker

    from sqlalchemy_taskqueue.worker._base import claims_without_session

    class OwnSession(Session):
        def execute(self, *args: Any, **kwargs: Any) -> Any:  # e.g. routing or auditing
            return super().execute(*args, **kwargs)

    with sessionmaker(engine)() as plain:
        assert claims_without_session(plain, task_model)
        assert not claims_without_session(plain, ReconstructedTask)  # needs the ORM
        event.listen(plain, "after_commit", lambda session: None)
        assert not claims_without_session(plain, task_model)  # would not fire
    with sessionmaker(engine, class_=OwnSession)() as own:
        assert not claims_without_session(own, task_model)  # may override execute


def test_claimed_rows_are_put_back_in_claim_order(
    own_columns_model: type[Any], session: Session
) -> None:
    """``RETURNING`` gives no order (a hash join returns rows in the table's order):
    the rows become instances by priority, then due time, then id."""
    model = own_columns_model
    repo = TaskRepository(session, model)
    now = datetime.now(timezone.utc)
    expected = []
    for n, (priority, ago) in enumerate([(5, 1), (0, 2), (5, 9), (-3, 1), (0, 2), (0, 7)]):
        run_at = now - timedelta(minutes=ago)
        expected.append(
            (priority, run_at, repo.enqueue("t", {"n": n}, priority=priority, run_at=run_at))
        )
    rows = session.execute(select(*model.__table__.c).order_by(model.id.desc())).all()
    tasks = detached_in_claim_order(model, rows)
    assert [task.id for task in tasks] == [task_id for *_, task_id in sorted(expected)]
    assert all(inspect(task).detached for task in tasks)
    session.rollback()
