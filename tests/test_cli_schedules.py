"""``taskqueue schedules``: operators list, pause, resume and run schedules from their
rows, without the handlers' code."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskRepository
from sqlalchemy_taskqueue.cli import cli
from sqlalchemy_taskqueue.scheduling import make_schedule
from sqlalchemy_taskqueue.scheduling._firing import fire_due_schedules, sync_schedules
from sqlalchemy_taskqueue.scheduling._state import ORPHANED_AFTER
from sqlalchemy_taskqueue.scheduling._table import schedules_table

NIGHTLY = make_schedule(
    "report",
    name="nightly",
    cron="30 2 * * *",
    timezone="Europe/Berlin",
    payload={"kind": "daily"},
    priority=-5,
    max_retries=1,
)
PURGE = make_schedule("purge", every=timedelta(minutes=10), payload={"older_than": "7d"})


@pytest.fixture
def model(clean_table: type[Any], engine: Engine, session_factory: sessionmaker[Session]) -> Any:
    """The module's queue with two schedules recorded, as a worker records them."""
    with engine.begin() as connection:
        connection.execute(delete(schedules_table(clean_table.__table__)))
    with session_factory.begin() as session:
        sync_schedules(TaskRepository(session, clean_table), [NIGHTLY, PURGE])
    return clean_table


@pytest.fixture
def run(database_url: str, model: type[Any]) -> Any:
    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            cli,
            args,
            env={"TASKQUEUE_DATABASE_URL": database_url, "TASKQUEUE_TABLE": model.__tablename__},
            catch_exceptions=False,
        )
        return result.exit_code, result.output

    return invoke


def states(factory: sessionmaker[Session], model: type[Any]) -> dict[str, Any]:
    with factory() as session:
        return {state.name: state for state in TaskRepository(session, model).schedules()}


def test_schedules_lists_each_with_its_timing_and_state(run: Any) -> None:
    code, output = run("schedules")
    assert code == 0, output
    lines = {line.split()[1]: line for line in output.splitlines() if "│" in line[:2]}
    assert "30 2 * * *" in lines["nightly"] and "Europe/Berlin" in lines["nightly"]
    assert "02:30:00 CE" in lines["nightly"]  # next fire in the schedule's own zone (CET/CEST)
    assert "every 600s" in lines["purge"] and "active" in lines["purge"]


def test_schedules_json_has_every_field(run: Any) -> None:
    code, output = run("schedules", "--json")
    assert code == 0, output
    listed = {item["name"]: item for item in json.loads(output)}
    assert set(listed) == {"nightly", "purge"}
    nightly = listed["nightly"]
    assert (nightly["task_type"], nightly["spec"], nightly["timezone"]) == (
        "report",
        "30 2 * * *",
        "Europe/Berlin",
    )
    assert nightly["paused"] is False and nightly["orphaned"] is False
    assert nightly["next_fire_at"] and nightly["last_fire_at"] is None


def test_pause_and_resume_by_name(
    run: Any, session_factory: sessionmaker[Session], model: type[Any]
) -> None:
    assert run("schedules", "pause", "nightly") == (0, "schedule nightly paused\n")
    assert states(session_factory, model)["nightly"].paused
    code, output = run("schedules")
    assert code == 0, output
    assert "paused" in next(line for line in output.splitlines() if "nightly" in line)
    assert run("schedules", "resume", "nightly") == (0, "schedule nightly resumed\n")
    assert not states(session_factory, model)["nightly"].paused


def test_a_paused_schedule_does_not_fire(
    run: Any, engine: Engine, session_factory: sessionmaker[Session], model: type[Any]
) -> None:
    table = schedules_table(model.__table__)
    with engine.begin() as connection:  # due an hour ago
        connection.execute(update(table).values(next_fire_at=func.now() - timedelta(hours=1)))
    run("schedules", "pause", "purge")
    with session_factory.begin() as session:
        report = fire_due_schedules(
            TaskRepository(session, model), {"nightly": NIGHTLY, "purge": PURGE}
        )
    assert [name for name, _, _ in report.enqueued] == ["nightly"]


def test_run_enqueues_once_now_from_the_row(
    run: Any, session_factory: sessionmaker[Session], model: type[Any]
) -> None:
    code, output = run("schedules", "run", "nightly")
    assert code == 0, output
    task_id = int(output.split()[1])
    with session_factory() as session:
        task = TaskRepository(session, model).get_task(task_id)
        assert task is not None
        assert (task.type, task.payload, task.priority, task.max_retries) == (
            "report",
            {"kind": "daily"},
            -5,
            1,
        )
        assert session.scalar(select(func.count()).select_from(model)) == 1
    assert states(session_factory, model)["nightly"].last_fire_at is None  # fires unchanged


def test_queue_options_go_before_or_after_the_subcommand(
    database_url: str, model: type[Any]
) -> None:
    env = {"TASKQUEUE_DATABASE_URL": database_url}
    table = model.__tablename__
    for args in (
        ["schedules", "--table", table, "pause", "purge"],
        ["schedules", "resume", "purge", "--table", table],
    ):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output


def test_an_orphaned_schedule_is_shown_as_such(run: Any, engine: Engine, model: type[Any]) -> None:
    table = schedules_table(model.__table__)
    with engine.begin() as connection:  # no worker has carried it for a while
        connection.execute(
            update(table)
            .where(table.c.name == "purge")
            .values(carried_at=func.now() - ORPHANED_AFTER - timedelta(seconds=1))
        )
    code, output = run("schedules")
    assert code == 0, output
    assert "orphaned" in next(line for line in output.splitlines() if "purge" in line)
    assert "active" in next(line for line in output.splitlines() if "nightly" in line)


@pytest.mark.parametrize("action", ["pause", "resume", "run"])
def test_an_unknown_name_exits_1_naming_it(run: Any, action: str) -> None:
    code, output = run("schedules", action, "weekly")
    assert code == 1
    assert "weekly" in output and "no schedule" in output.lower()


def test_a_queue_without_the_schedules_table_is_told_how_to_upgrade(
    run: Any, engine: Engine, model: type[Any]
) -> None:
    table = schedules_table(model.__table__)
    table.drop(engine)
    try:
        code, output = run("schedules")
    finally:
        table.create(engine)
    assert code == 1
    assert "upgrade_task_table_v1_to_v2" in output
