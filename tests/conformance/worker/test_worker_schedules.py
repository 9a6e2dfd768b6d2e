"""Workers fire the schedules of their registry: each fire time once however many
workers carry it, from the supervisor, with the schedules recorded for operators."""

from __future__ import annotations

import itertools
import threading
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import pytest
from processes import wait_for
from sqlalchemy import Engine, delete, select
from twins import running
from worker_harness import Factory, MakeWorker

from sqlalchemy_taskqueue import HandlerRegistry, TaskRepository, TaskStatus
from sqlalchemy_taskqueue.exceptions import TaskTableError
from sqlalchemy_taskqueue.scheduling._table import schedules_table


@pytest.fixture
def model(clean_table: type[Any], engine: Engine) -> type[Any]:
    """The module's task model, its task and schedules tables emptied."""
    with engine.begin() as connection:
        connection.execute(delete(schedules_table(clean_table.__table__)))
    return clean_table


def fired_tasks(factory: Factory, model: type[Any]) -> list[Any]:
    with factory() as session:
        return list(
            session.scalars(select(model).where(model.type == "tick").order_by(model.run_at))
        )


def test_two_workers_carrying_one_schedule_enqueue_each_fire_time_once(
    make_worker: MakeWorker, session_factory: Factory, model: type[Any]
) -> None:
    ran: list[int] = []
    registry = HandlerRegistry(model)

    @registry.periodic("tick", every="1s", payload={"from": "schedule"})
    def tick(task: Any, ctx: Any) -> None:
        ran.append(task.id)

    workers = [make_worker(session_factory, model, registry) for _ in range(2)]
    with ExitStack() as stack:
        for worker in workers:
            stack.enter_context(running(worker))
        wait_for(
            lambda: (
                len(
                    [
                        t
                        for t in fired_tasks(session_factory, model)
                        if t.status == TaskStatus.COMPLETED
                    ]
                )
                >= 4
            ),
            timeout=30,
        )
    tasks = fired_tasks(session_factory, model)
    fire_times = [task.run_at for task in tasks]
    assert len(set(fire_times)) == len(fire_times), "a fire time was enqueued twice"
    gaps = {later - earlier for earlier, later in itertools.pairwise(fire_times)}
    assert gaps == {timedelta(seconds=1)}, f"fires missed or uneven: {fire_times}"
    assert all(t.microsecond == 0 for t in fire_times)  # on the interval's multiples
    assert {task.payload["from"] for task in tasks} == {"schedule"}
    assert [task.dedupe_key for task in tasks] == [
        f"schedule:tick@{t.isoformat()}" for t in fire_times
    ]
    assert sorted(ran) == sorted(t.id for t in tasks if t.status == TaskStatus.COMPLETED)


def test_a_running_worker_records_the_schedules_it_carries(
    make_worker: MakeWorker, session_factory: Factory, model: type[Any]
) -> None:
    registry = HandlerRegistry(model)
    registry.schedule("report", cron="0 3 * * *", timezone="Europe/Berlin", name="nightly")
    registry.add("report", lambda task, ctx: None)
    worker = make_worker(session_factory, model, registry)

    def recorded() -> list[Any]:
        with session_factory() as session:
            return TaskRepository(session, model).schedules()

    with running(worker):
        wait_for(lambda: len(recorded()) == 1)
        [state] = recorded()
    assert (state.name, state.task_type, state.spec) == ("nightly", "report", "0 3 * * *")
    assert state.timezone == "Europe/Berlin" and not state.orphaned and not state.paused
    assert state.next_fire_at is not None
    local = state.next_fire_at.astimezone(registry.schedules[0].zone)
    assert (local.hour, local.minute, local.second) == (3, 0, 0)
    assert state.last_fire_at is None  # nothing was due: nothing enqueued
    with session_factory() as session:
        assert session.scalar(select(model.id).limit(1)) is None


def test_a_paused_schedule_is_not_fired_by_a_running_worker(
    make_worker: MakeWorker, session_factory: Factory, model: type[Any]
) -> None:
    registry = HandlerRegistry(model)
    registry.periodic("tick", every="1s")(lambda task, ctx: None)
    registry.periodic("tock", every="1s")(lambda task, ctx: None)
    worker = make_worker(session_factory, model, registry)
    with running(worker):

        def names() -> set[str]:
            with session_factory() as session:
                return {s.name for s in TaskRepository(session, model).schedules()}

        wait_for(lambda: names() == {"tick", "tock"})
        with session_factory.begin() as session:
            TaskRepository(session, model).pause_schedule("tick")
        with session_factory() as session:
            paused_at = session.scalar(select(model.id).order_by(model.id.desc()).limit(1)) or 0

        def tocks_after_pause() -> int:
            with session_factory() as session:
                return len(
                    session.scalars(
                        select(model.id).where(model.type == "tock", model.id > paused_at)
                    ).all()
                )

        wait_for(lambda: tocks_after_pause() >= 2, timeout=30)
    with session_factory() as session:
        ticks = session.scalars(
            select(model.id).where(model.type == "tick", model.id > paused_at)
        ).all()
    assert ticks == []


def test_a_worker_with_schedules_on_a_queue_without_the_schedules_table_stops_naming_the_upgrade(
    make_worker: MakeWorker, session_factory: Factory, model: type[Any], engine: Engine
) -> None:
    table = schedules_table(model.__table__)
    table.drop(engine)
    try:
        registry = HandlerRegistry(model)
        registry.periodic("tick", every="1s")(lambda task, ctx: None)
        worker = make_worker(session_factory, model, registry)
        with pytest.raises(TaskTableError) as raised:
            worker.run()
    finally:
        table.create(engine)
    message = str(raised.value)
    assert f"The table {table.name!r} does not exist" in message
    assert f"upgrade_task_table_v1_to_v2({model.__tablename__!r})" in message


def test_a_worker_without_schedules_needs_no_schedules_table(
    make_worker: MakeWorker, session_factory: Factory, model: type[Any], engine: Engine
) -> None:
    table = schedules_table(model.__table__)
    table.drop(engine)
    done = threading.Event()
    try:
        worker = make_worker(session_factory, model, {"job": lambda task, ctx: done.set()})
        with session_factory.begin() as session:
            TaskRepository(session, model).enqueue("job", {})
        worker.run(until_empty=True)
    finally:
        table.create(engine)
    assert done.is_set()


def test_a_schedule_setting_a_column_the_model_lacks_is_refused_by_the_worker(
    make_worker: MakeWorker, session_factory: Factory, model: type[Any]
) -> None:
    registry: HandlerRegistry[Any] = HandlerRegistry()  # no model: checked by the worker
    registry.periodic("tick", every="1s", project_id=7)(lambda task, ctx: None)
    with pytest.raises(TypeError, match=r"schedule 'tick': .* has no column 'project_id'"):
        make_worker(session_factory, model, registry)
