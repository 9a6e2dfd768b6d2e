"""Periodic schedules in the database: how workers record them, fire them exactly once
per fire time with no leader, and how operators list, pause, resume and run them."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from backends import database_now, instant
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import ScheduleNotFoundError, TaskRepository, TaskStatus
from sqlalchemy_taskqueue.scheduling import Schedule, make_schedule
from sqlalchemy_taskqueue.scheduling._firing import fire_due_schedules, sync_schedules
from sqlalchemy_taskqueue.scheduling._table import schedules_table

#: Long enough that no test runs across a fire time it did not make due on purpose.
STEP = timedelta(hours=1)
EVERY = {"every": STEP}


@pytest.fixture
def model(clean_table: type[Any], engine: Engine) -> type[Any]:
    """The module's task model, its task and schedules tables emptied."""
    with engine.begin() as connection:
        connection.execute(delete(schedules_table(clean_table.__table__)))
    return clean_table


def carry(factory: sessionmaker[Session], model: type[Any], *schedules: Schedule) -> None:
    with factory.begin() as session:
        sync_schedules(TaskRepository(session, model), list(schedules))


def fire(factory: sessionmaker[Session], model: type[Any], *schedules: Schedule) -> Any:
    with factory.begin() as session:
        return fire_due_schedules(
            TaskRepository(session, model), {schedule.name: schedule for schedule in schedules}
        )


def make_due(engine: Engine, model: type[Any], schedule: Schedule, fires: int = 1) -> Any:
    """Record as the schedule's next fire time the fire time ``fires`` fires before the
    database clock (so that many are due, as if no worker ran meanwhile); return it."""
    table = schedules_table(model.__table__)
    with engine.begin() as connection:
        now = database_now(connection)
        first = schedule.next_fire(now - fires * STEP)
        connection.execute(
            update(table).where(table.c.name == schedule.name).values(next_fire_at=first)
        )
    return first


def hourly_far_from_now(engine: Engine) -> str:
    """An hourly cron expression whose fire times lie half an hour from the database
    clock (so the last fire before now is missed, not late: see ``LATE_GRACE``)."""
    with engine.connect() as connection:
        now = database_now(connection)
    return f"{(now.minute + 30) % 60} * * * *"


def tasks_of(factory: sessionmaker[Session], model: type[Any]) -> list[Any]:
    with factory() as session:
        return list(session.scalars(select(model).order_by(model.id)))


def test_a_worker_records_the_schedules_it_carries(
    session_factory: sessionmaker[Session], model: type[Any]
) -> None:
    report = make_schedule("report", cron="0 3 * * *", timezone="Europe/Berlin")
    purge = make_schedule("purge", every="10m", payload={"older_than": "7d"})
    carry(session_factory, model, report, purge)
    with session_factory() as session:
        states = TaskRepository(session, model).schedules()
        now = database_now(session)
    assert [state.name for state in states] == ["purge", "report"]
    purge_state, report_state = states
    assert (purge_state.spec, report_state.spec) == ("every 600s", "0 3 * * *")
    assert report_state.timezone == "Europe/Berlin"
    assert purge_state.next_fire_at == purge.next_fire(purge_state.carried_at)
    assert report_state.next_fire_at > now
    assert not any(state.paused or state.orphaned for state in states)
    assert report_state.as_dict()["next_fire_at"] == report_state.next_fire_at.isoformat()


def test_recording_again_keeps_the_next_fire_time_unless_the_timing_changed(
    session_factory: sessionmaker[Session], engine: Engine, model: type[Any]
) -> None:
    tick = make_schedule("tick", **EVERY)
    carry(session_factory, model, tick)
    due = make_due(engine, model, tick)
    carry(session_factory, model, make_schedule("tick", payload={"v": 2}, **EVERY))
    with session_factory() as session:
        (state,) = TaskRepository(session, model).schedules()
    assert state.next_fire_at == due  # a new payload does not move the fire time

    carry(session_factory, model, make_schedule("tick", every="2h"))
    with session_factory() as session:
        (state,) = TaskRepository(session, model).schedules()
    assert state.spec == "every 7200s" and state.next_fire_at > due


def test_a_due_schedule_fires_once_however_many_workers_race(
    session_factory: sessionmaker[Session], engine: Engine, model: type[Any]
) -> None:
    schedule = make_schedule("tick", payload={"from": "schedule"}, **EVERY)
    carry(session_factory, model, schedule)
    due = make_due(engine, model, schedule)
    racers = 8
    start = threading.Barrier(racers)
    reports: list[Any] = []

    def race() -> None:
        with session_factory.begin() as session:
            start.wait(timeout=10)
            reports.append(fire_due_schedules(TaskRepository(session, model), {"tick": schedule}))

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(reports) == racers
    assert sum(len(report.enqueued) for report in reports) == 1
    (task,) = tasks_of(session_factory, model)
    assert (task.type, task.payload, task.run_at) == ("tick", {"from": "schedule"}, due)
    assert task.dedupe_key == f"schedule:tick@{due.isoformat()}"
    with session_factory() as session:
        (state,) = TaskRepository(session, model).schedules()
    assert (state.last_fire_at, state.last_task_id) == (due, task.id)
    assert state.next_fire_at == due + STEP


def test_a_fire_whose_transaction_rolls_back_is_fired_again(
    session_factory: sessionmaker[Session], engine: Engine, model: type[Any]
) -> None:
    schedule = make_schedule("tick", **EVERY)
    carry(session_factory, model, schedule)
    make_due(engine, model, schedule)
    with session_factory() as session:  # a worker killed before its commit
        report = fire_due_schedules(TaskRepository(session, model), {"tick": schedule})
        assert len(report.enqueued) == 1
        session.rollback()
    assert tasks_of(session_factory, model) == []
    assert len(fire(session_factory, model, schedule).enqueued) == 1
    assert len(tasks_of(session_factory, model)) == 1


@pytest.mark.parametrize(
    ("missed", "fires"), [("latest", [3]), ("skip", []), ("all", [0, 1, 2, 3])]
)
def test_fires_missed_while_no_worker_ran_follow_the_missed_policy(
    session_factory: sessionmaker[Session],
    engine: Engine,
    model: type[Any],
    missed: Any,
    fires: list[int],
) -> None:
    # hourly, half an hour away from now: none of the four fires is merely late
    schedule = make_schedule("tick", missed=missed, overlap=True, cron=hourly_far_from_now(engine))
    carry(session_factory, model, schedule)
    first = make_due(engine, model, schedule, fires=4)  # no worker ran for four fire times
    report = fire(session_factory, model, schedule)
    expected = [first + count * STEP for count in fires]
    assert [fired for _, fired, _ in report.enqueued] == expected
    assert [task.run_at for task in tasks_of(session_factory, model)] == expected
    assert report.next_fire_at == first + 4 * STEP


def test_a_fire_is_held_back_while_the_previous_task_is_active_unless_overlap_is_allowed(
    session_factory: sessionmaker[Session], engine: Engine, model: type[Any]
) -> None:
    single = make_schedule("single", missed="all", **EVERY)
    overlapping = make_schedule("overlapping", missed="all", overlap=True, **EVERY)
    carry(session_factory, model, single, overlapping)
    first = make_due(engine, model, single, fires=2)  # the first task is pending at the second
    make_due(engine, model, overlapping, fires=2)
    report = fire(session_factory, model, single, overlapping)
    second = first + STEP
    enqueued = [(name, fired) for name, fired, _ in report.enqueued]
    assert enqueued == [("overlapping", first), ("overlapping", second), ("single", first)]
    assert [(name, fired) for name, fired, _ in report.held_back] == [("single", second)]
    with session_factory() as session:
        states = {state.name: state for state in TaskRepository(session, model).schedules()}
    assert states["single"].last_fire_at == first  # what it enqueued, not what it held back


def test_a_paused_schedule_does_not_fire_until_resumed(
    session_factory: sessionmaker[Session], engine: Engine, model: type[Any]
) -> None:
    schedule = make_schedule("tick", **EVERY)
    carry(session_factory, model, schedule)
    make_due(engine, model, schedule)
    with session_factory.begin() as session:
        TaskRepository(session, model).pause_schedule("tick")
    report = fire(session_factory, model, schedule)
    assert report.enqueued == [] and report.next_fire_at is None
    with session_factory.begin() as session:
        repo = TaskRepository(session, model)
        assert repo.schedules()[0].paused
        repo.resume_schedule("tick")
    assert len(fire(session_factory, model, schedule).enqueued) == 1


def test_run_now_enqueues_once_from_the_row_without_the_code(
    session_factory: sessionmaker[Session], model: type[Any]
) -> None:
    schedule = make_schedule("report", cron="0 3 * * *", payload={"p": 1}, priority=-5)
    carry(session_factory, model, schedule)
    with session_factory.begin() as session:
        repo = TaskRepository(session, model)
        repo.pause_schedule("report")
        task_id = repo.run_schedule("report")
    (task,) = tasks_of(session_factory, model)
    assert (task.id, task.type, task.payload, task.priority) == (task_id, "report", {"p": 1}, -5)
    assert task.status is TaskStatus.PENDING


@pytest.mark.parametrize("action", ["pause_schedule", "resume_schedule", "run_schedule"])
def test_operator_actions_name_a_schedule_that_does_not_exist(
    session: Session, model: type[Any], action: str
) -> None:
    repo = TaskRepository(session, model)
    with pytest.raises(ScheduleNotFoundError, match="No schedule named 'nope'"):
        getattr(repo, action)("nope")
    with pytest.raises(ValueError, match="schedule name must not be empty"):
        getattr(repo, action)("")
    with pytest.raises(TypeError, match="schedule name must be a string"):
        getattr(repo, action)(7)


def test_a_schedule_no_worker_carries_any_more_is_orphaned(
    session_factory: sessionmaker[Session], engine: Engine, model: type[Any]
) -> None:
    carry(session_factory, model, make_schedule("gone", **EVERY))
    table = schedules_table(model.__table__)
    with engine.begin() as connection:
        connection.execute(update(table).values(carried_at=text(instant(connection, -360))))
    with session_factory() as session:
        (state,) = TaskRepository(session, model).schedules()
    assert state.orphaned


def test_a_schedule_that_cannot_fire_holds_back_no_other(
    session_factory: sessionmaker[Session], engine: Engine, model: type[Any]
) -> None:
    big = make_schedule("big", payload={"blob": "x" * 500}, **EVERY)
    small = make_schedule("small", **EVERY)
    carry(session_factory, model, big, small)
    make_due(engine, model, big)
    due = make_due(engine, model, small)
    with session_factory.begin() as session:  # a queue that refuses big's payload
        repo = TaskRepository(session, model, max_payload_bytes=200)
        report = fire_due_schedules(repo, {"big": big, "small": small})
    assert [(name, fired) for name, fired, _ in report.enqueued] == [("small", due)]
    assert [name for name, _ in report.failed] == ["big"]
    assert "payload" in str(report.failed[0][1])
    with session_factory() as session:
        states = {s.name: s for s in TaskRepository(session, model).schedules()}
    assert states["big"].next_fire_at is not None and states["big"].last_fire_at is None
    assert states["small"].last_fire_at == due


def test_a_new_timing_never_moves_the_next_fire_back_to_a_time_fired_already(
    session_factory: sessionmaker[Session], engine: Engine, model: type[Any]
) -> None:
    """A worker with new code records the new timing while a peer, still on the old, has
    just fired a later time: the row keeps its own next fire, so no time fires twice."""
    old = make_schedule("tick", **EVERY)
    carry(session_factory, model, old)
    table = schedules_table(model.__table__)
    with engine.begin() as connection:
        before = connection.execute(select(table.c.next_fire_at)).scalar_one()
        connection.execute(  # the peer's fire, committed while the new worker waited
            update(table).values(last_fire_at=text(instant(connection, 2 * 86400)))
        )
    carry(session_factory, model, make_schedule("tick", every=timedelta(minutes=7)))
    with engine.connect() as connection:
        row = connection.execute(select(table.c.next_fire_at, table.c.every_seconds)).one()
    assert row.next_fire_at == before and row.every_seconds == 420.0
