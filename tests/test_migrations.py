"""The Alembic environment and the frozen migration helpers, against PostgreSQL."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    declared_attr,
    mapped_column,
)

from alembic import command
from sqlalchemy_taskqueue import (
    TaskDataclassMixin,
    TaskMixin,
    TaskRepository,
    TaskStatus,
    merge_table_args,
)
from sqlalchemy_taskqueue.migrations import (
    create_controls_table_v1,
    create_key_slots_table_v1,
    create_schedules_table_v1,
    create_task_table_v1,
    create_task_table_v2,
    create_task_table_v3,
    create_task_table_v4,
    create_task_table_v5,
    create_workers_table_v1,
    downgrade_task_table_v2_to_v1,
    downgrade_task_table_v3_to_v2,
    downgrade_task_table_v4_to_v3,
    downgrade_task_table_v5_to_v4,
    drop_controls_table_v1,
    drop_key_slots_table_v1,
    drop_schedules_table_v1,
    drop_task_table_v1,
    drop_task_table_v2,
    drop_task_table_v3,
    drop_task_table_v4,
    drop_task_table_v5,
    drop_workers_table_v1,
    tune_task_table_v1,
    upgrade_task_table_v1_to_v2,
    upgrade_task_table_v2_to_v3,
    upgrade_task_table_v3_to_v4,
    upgrade_task_table_v4_to_v5,
)

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def schema_diff(engine: sa.Engine, metadata: sa.MetaData) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


@pytest.fixture
def empty_engine(empty_database_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(empty_database_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


class DefaultBase(DeclarativeBase):
    pass


class DefaultTask(TaskMixin, DefaultBase):
    __tablename__ = "tasks"


def test_upgrade_head_creates_the_model_table_and_downgrade_removes_it(
    empty_database_url: str, empty_engine: sa.Engine
) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "head")
    inspector = sa.inspect(empty_engine)
    assert {
        "tasks",
        "tasks_schedules",
        "tasks_controls",
        "tasks_key_slots",
        "tasks_workers",
    } <= set(inspector.get_table_names())
    indexes = {index["name"]: index for index in inspector.get_indexes("tasks")}
    assert set(indexes) == {
        "ix_tasks_claimable",
        "ix_tasks_keyed_claimable",
        "uq_tasks_active_dedupe",
        "ix_tasks_lease_expiry",
        "ix_tasks_finished",
    }
    assert indexes["uq_tasks_active_dedupe"]["unique"]
    assert "status" in str(indexes["ix_tasks_claimable"]["dialect_options"]["postgresql_where"])
    columns = {column["name"]: column for column in inspector.get_columns("tasks")}
    assert str(columns["id"]["type"]) == "BIGINT"
    assert str(columns["payload"]["type"]) == "JSONB"
    assert columns["run_at"]["type"].timezone is True
    checks = {check["name"] for check in inspector.get_check_constraints("tasks")}
    assert checks == {
        "ck_tasks_status",
        "ck_tasks_progress",
        "ck_tasks_retries",
        "ck_tasks_concurrency",
    }

    assert schema_diff(empty_engine, DefaultBase.metadata) == []
    assert "fillfactor=80" in storage_options(empty_engine)
    assert "autovacuum_vacuum_scale_factor=0.01" in storage_options(empty_engine)

    command.downgrade(config, "0004_add_controls_table")
    assert not {"tasks_key_slots", "tasks_workers"} & set(
        sa.inspect(empty_engine).get_table_names()
    )
    assert "concurrency_key" not in {
        c["name"] for c in sa.inspect(empty_engine).get_columns("tasks")
    }
    command.downgrade(config, "0003_add_schedules_table")
    assert "tasks_controls" not in sa.inspect(empty_engine).get_table_names()
    command.downgrade(config, "0002_tune_tasks_table")
    assert "tasks_schedules" not in sa.inspect(empty_engine).get_table_names()
    command.downgrade(config, "0001_create_tasks_table")
    assert storage_options(empty_engine) == []  # back to the server's defaults
    command.downgrade(config, "base")
    assert "tasks" not in sa.inspect(empty_engine).get_table_names()


def storage_options(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        options = connection.scalar(
            sa.text("SELECT reloptions FROM pg_class WHERE oid = 'tasks'::regclass")
        )
    return list(options or [])


def test_upgrade_runs_on_a_connection_handed_in(empty_engine: sa.Engine) -> None:
    """The Alembic cookbook's way for tests: config.attributes["connection"]."""
    config = alembic_config("postgresql+psycopg2://nobody@127.0.0.1:1/unused")
    with empty_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert "tasks" in sa.inspect(empty_engine).get_table_names()
    with empty_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert "tasks" not in sa.inspect(empty_engine).get_table_names()


class AppBase(DeclarativeBase):
    pass


class Project(AppBase):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)


class AppTask(TaskMixin, AppBase):
    """An app's queue table with its own columns and index."""

    __tablename__ = "app_tasks"

    project_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("projects.id"))
    requested_by: Mapped[str | None] = mapped_column(sa.Text)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return merge_table_args(cls, sa.Index("ix_app_tasks_project", "project_id"))


def test_helper_with_extra_columns_matches_an_app_subclass(empty_engine: sa.Engine) -> None:
    with empty_engine.begin() as connection:
        operations = Operations(MigrationContext.configure(connection))
        with Operations.context(operations.migration_context):
            operations.create_table(
                "projects",
                sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
                sa.Column("name", sa.Text, nullable=False),
            )
            create_task_table_v5(
                "app_tasks",
                sa.Column("project_id", sa.BigInteger, sa.ForeignKey("projects.id"), nullable=True),
                sa.Column("requested_by", sa.Text, nullable=True),
            )
            operations.create_index("ix_app_tasks_project", "app_tasks", ["project_id"])
    assert schema_diff(empty_engine, AppBase.metadata) == []

    with empty_engine.begin() as connection:
        operations = Operations(MigrationContext.configure(connection))
        with Operations.context(operations.migration_context):
            drop_task_table_v5("app_tasks")
    assert not {
        "app_tasks",
        "app_tasks_schedules",
        "app_tasks_controls",
        "app_tasks_key_slots",
    } & set(sa.inspect(empty_engine).get_table_names())


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class DataclassTask(TaskDataclassMixin, DataclassBase):
    __tablename__ = "dc_tasks"

    tenant: Mapped[str] = mapped_column(sa.Text)


def test_helper_matches_the_dataclass_flavour(empty_engine: sa.Engine) -> None:
    with empty_engine.begin() as connection:
        operations = Operations(MigrationContext.configure(connection))
        with Operations.context(operations.migration_context):
            create_task_table_v5("dc_tasks", sa.Column("tenant", sa.Text, nullable=False))
    assert schema_diff(empty_engine, DataclassBase.metadata) == []


def test_a_drifted_table_is_reported(empty_engine: sa.Engine) -> None:
    """The comparison above can fail: a table missing an index is a difference."""
    with empty_engine.begin() as connection:
        operations = Operations(MigrationContext.configure(connection))
        with Operations.context(operations.migration_context):
            create_task_table_v5("tasks")
            operations.drop_index("ix_tasks_claimable", table_name="tasks")
    diff = schema_diff(empty_engine, DefaultBase.metadata)
    assert [entry[0] for entry in diff] == ["add_index"]


def test_helpers_reject_bad_table_names() -> None:
    with pytest.raises(ValueError, match="table_name"):
        create_task_table_v1("")
    with pytest.raises(ValueError, match="table_name"):
        drop_task_table_v1(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="table_name"):
        tune_task_table_v1("")
    for helper in (
        create_task_table_v2,
        drop_task_table_v2,
        create_schedules_table_v1,
        drop_schedules_table_v1,
        upgrade_task_table_v1_to_v2,
        downgrade_task_table_v2_to_v1,
        create_task_table_v3,
        drop_task_table_v3,
        create_controls_table_v1,
        drop_controls_table_v1,
        upgrade_task_table_v2_to_v3,
        downgrade_task_table_v3_to_v2,
        create_task_table_v4,
        drop_task_table_v4,
        create_key_slots_table_v1,
        drop_key_slots_table_v1,
        create_workers_table_v1,
        drop_workers_table_v1,
        upgrade_task_table_v3_to_v4,
        downgrade_task_table_v4_to_v3,
        create_task_table_v5,
        drop_task_table_v5,
        upgrade_task_table_v4_to_v5,
        downgrade_task_table_v5_to_v4,
    ):
        with pytest.raises(ValueError, match="table_name"):
            helper("")


def test_a_bare_url_given_with_x_is_normalised_like_the_environment_variable(
    empty_database_url: str, empty_engine: sa.Engine
) -> None:
    """``alembic -x url=postgres://...`` reaches the same database, through the same
    driver, as ``TASKQUEUE_DATABASE_URL=postgres://... alembic ...``."""
    bare = "postgres://" + empty_database_url.split("://", 1)[1]
    config = Config(str(ROOT / "alembic.ini"), cmd_opts=argparse.Namespace(x=[f"url={bare}"]))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "0001_create_tasks_table")
    assert "tasks" in sa.inspect(empty_engine).get_table_names()


def migrate(engine: sa.Engine, *steps: Any) -> None:
    """Run migration helpers as a revision would."""
    with engine.begin() as connection:
        operations = Operations(MigrationContext.configure(connection))
        with Operations.context(operations.migration_context):
            for step in steps:
                step()


def insert_pending(engine: sa.Engine, *numbers: int) -> list[int]:
    """Tasks enqueued by the release that created the table: plain rows (the current
    model has columns an older table lacks)."""
    with engine.begin() as connection:
        return [
            connection.execute(
                sa.text(
                    "INSERT INTO tasks (type, payload) VALUES ('report', CAST(:payload AS jsonb)) "
                    "RETURNING id"
                ),
                {"payload": f'{{"n": {n}}}'},
            ).scalar_one()
            for n in numbers
        ]


def test_a_populated_version_1_queue_upgrades_to_the_current_version_and_keeps_working(
    empty_engine: sa.Engine,
) -> None:
    """An app that migrated with ``create_task_table_v1`` adds the schedules table with
    ``upgrade_task_table_v1_to_v2``, the controls table with ``upgrade_task_table_v2_to_v3``
    concurrency keys with ``upgrade_task_table_v3_to_v4`` and task headers with
    ``upgrade_task_table_v4_to_v5``: its tasks stay as they
    were, the queue works, and the tables match the model (autogenerate finds nothing);
    each downgrade removes what its upgrade added."""
    migrate(empty_engine, lambda: create_task_table_v1("tasks"))
    first, second = insert_pending(empty_engine, 1, 2)

    migrate(empty_engine, lambda: upgrade_task_table_v1_to_v2("tasks"))
    migrate(empty_engine, lambda: upgrade_task_table_v2_to_v3("tasks"))
    migrate(empty_engine, lambda: upgrade_task_table_v3_to_v4("tasks"))
    migrate(empty_engine, lambda: upgrade_task_table_v4_to_v5("tasks"))
    assert schema_diff(empty_engine, DefaultBase.metadata) == []
    with sa.orm.Session(empty_engine) as session, session.begin():
        repo = TaskRepository(session, DefaultTask)
        claimed = repo.dequeue("report")
        assert claimed is not None and claimed.id == first
        repo.complete_task(first, lease_token=claimed.lease_token)
        assert (repo.schedules(), repo.paused(), repo.keys_at_limit()) == ([], [], [])
        assert repo.workers() == []
    with sa.orm.Session(empty_engine) as session, session.begin():
        repo = TaskRepository(session, DefaultTask)
        assert repo.get_task(first).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
        assert repo.get_task(second).status is TaskStatus.PENDING  # type: ignore[union-attr]

    migrate(empty_engine, lambda: downgrade_task_table_v5_to_v4("tasks"))
    assert "headers" not in {c["name"] for c in sa.inspect(empty_engine).get_columns("tasks")}
    migrate(empty_engine, lambda: downgrade_task_table_v4_to_v3("tasks"))
    assert set(sa.inspect(empty_engine).get_table_names()) == {
        "tasks",
        "tasks_schedules",
        "tasks_controls",
    }
    migrate(empty_engine, lambda: downgrade_task_table_v3_to_v2("tasks"))
    assert set(sa.inspect(empty_engine).get_table_names()) == {"tasks", "tasks_schedules"}
    migrate(empty_engine, lambda: downgrade_task_table_v2_to_v1("tasks"))
    assert set(sa.inspect(empty_engine).get_table_names()) == {"tasks"}


def test_a_populated_version_3_queue_upgrades_to_version_4_with_its_keys_working(
    empty_engine: sa.Engine,
) -> None:
    """The tasks of a version-3 queue keep their order and are claimed as before; tasks
    enqueued with a key after the upgrade hold its slot while they run; the downgrade
    restores the version-3 claim index."""
    migrate(empty_engine, lambda: create_task_table_v3("tasks"))
    old = insert_pending(empty_engine, 1, 2)
    migrate(empty_engine, lambda: upgrade_task_table_v3_to_v4("tasks"))
    migrate(empty_engine, lambda: upgrade_task_table_v4_to_v5("tasks"))
    assert schema_diff(empty_engine, DefaultBase.metadata) == []
    with sa.orm.Session(empty_engine) as session, session.begin():
        repo = TaskRepository(session, DefaultTask)
        repo.enqueue_many("sync", [{"n": 1}, {"n": 2}], concurrency_key="account:7")
    with sa.orm.Session(empty_engine) as session, session.begin():
        repo = TaskRepository(session, DefaultTask)
        claimed = repo.dequeue_many(limit=10)
        assert sorted(task.id for task in claimed if task.concurrency_key is None) == old
        assert [task.concurrency_key for task in claimed if task.concurrency_key] == ["account:7"]
        assert [(k.concurrency_key, k.running, k.waiting) for k in repo.keys_at_limit()] == [
            ("account:7", 1, 1)
        ]
    migrate(empty_engine, lambda: downgrade_task_table_v5_to_v4("tasks"))
    migrate(empty_engine, lambda: downgrade_task_table_v4_to_v3("tasks"))
    predicate = {
        index["name"]: str(index["dialect_options"]["postgresql_where"])
        for index in sa.inspect(empty_engine).get_indexes("tasks")
    }["ix_tasks_claimable"]
    assert "concurrency_key" not in predicate


def test_a_populated_version_2_queue_upgrades_to_version_3_with_its_pauses_working(
    empty_engine: sa.Engine,
) -> None:
    migrate(empty_engine, lambda: create_task_table_v2("tasks"))
    insert_pending(empty_engine, 1, 2)
    migrate(empty_engine, lambda: upgrade_task_table_v2_to_v3("tasks"))
    migrate(empty_engine, lambda: upgrade_task_table_v3_to_v4("tasks"))
    migrate(empty_engine, lambda: upgrade_task_table_v4_to_v5("tasks"))
    assert schema_diff(empty_engine, DefaultBase.metadata) == []
    with sa.orm.Session(empty_engine) as session, session.begin():
        repo = TaskRepository(session, DefaultTask)
        repo.pause("report")
        assert repo.dequeue("report") is None
        repo.resume("report")
        assert repo.dequeue("report") is not None
