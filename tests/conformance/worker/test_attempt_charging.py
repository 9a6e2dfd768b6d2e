"""A rescue charges an attempt (a retry) only to a task whose attempt had started: tasks
a worker claimed ahead of its free slots (prefetch) are recorded as started when a slot
takes them, and a task rescued without a charge is recorded before its handler runs, so
that a task which kills its worker cannot crash-loop uncharged.  (The same with real
processes killed: ``test_worker_processes.py``.)"""

from __future__ import annotations

from typing import Any

from backends import instant
from processes import wait_for
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from worker_harness import enqueue, fetch

from sqlalchemy_taskqueue import TaskContext, TaskRepository, TaskStatus
from sqlalchemy_taskqueue._schema import UNSTARTED_RESCUE

Factory = sessionmaker[Session]
MakeWorker = Any


def started_at(factory: Factory, model: type[Any], task_id: int) -> Any:
    return fetch(factory, model, task_id).started_at


def expire_leases(factory: Factory, model: type[Any]) -> None:
    with factory() as session:
        session.execute(
            text(
                f"UPDATE {model.__tablename__} SET lease_expires_at = {instant(session, -1)} "
                "WHERE status = 'in_progress'"
            )
        )
        session.commit()


def test_a_rescue_charges_only_tasks_whose_start_is_recorded(
    session: Session, clean_table: type[Any], session_factory: Factory
) -> None:
    repo = TaskRepository(session, clean_table)
    started, waiting = (repo.enqueue("job", {"n": n}, max_retries=0) for n in range(2))
    session.commit()
    claimed = repo._claim("job", limit=2, lease_duration=60, relaxed_commit=False, starting=1)
    session.commit()
    assert [(task.id, task.started_at is None) for task in claimed] == [
        (started, False),
        (waiting, True),
    ]
    expire_leases(session_factory, clean_table)
    assert repo.rescue_expired_leases() == {
        started: TaskStatus.FAILED,  # out of retries
        waiting: TaskStatus.PENDING,
    }
    session.commit()
    task = repo.get_task(waiting)
    assert task is not None
    assert (task.retry_count, task.error_message) == (0, UNSTARTED_RESCUE)


def test_record_starts_makes_a_rescue_charge_the_task(
    session: Session, clean_table: type[Any], session_factory: Factory
) -> None:
    repo = TaskRepository(session, clean_table)
    task_id = repo.enqueue("job", {}, max_retries=3)
    session.commit()
    (task,) = repo._claim("job", limit=1, lease_duration=60, relaxed_commit=False, starting=0)
    assert repo.record_starts([(task.id, task.lease_token)]) == {task_id}
    assert repo.record_starts([(task.id, task.lease_token)]) == set()  # once
    session.commit()
    expire_leases(session_factory, clean_table)
    repo.rescue_expired_leases()
    session.commit()
    assert repo.get_task(task_id).retry_count == 1  # type: ignore[union-attr]


def test_a_prefetched_task_has_its_start_recorded_while_it_runs(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    first = enqueue(session_factory, clean_table, "job", {"wait": False}, priority=-1)
    second = enqueue(session_factory, clean_table, "job", {"wait": True})
    seen: list[bool] = []

    def job(task: Any, ctx: TaskContext) -> None:
        if ctx.payload["wait"]:  # the prefetched one: recorded within a turn or a poll
            wait_for(lambda: started_at(session_factory, clean_table, task.id) is not None)
            seen.append(True)

    worker = make_worker(session_factory, clean_table, {"job": job}, concurrency=1, prefetch=1)
    worker.run(until_empty=True)
    assert seen == [True]
    assert all(
        fetch(session_factory, clean_table, i).status is TaskStatus.COMPLETED
        for i in (first, second)
    )


def test_a_task_rescued_uncharged_is_recorded_before_its_handler_runs(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """Rescued once without a charge, it may be the task that killed its worker: the
    next worker records its start before running it, even from the prefetch."""
    enqueue(session_factory, clean_table, "job", {"suspect": False}, priority=-1)
    suspect = enqueue(session_factory, clean_table, "job", {"suspect": True})
    with session_factory() as session:
        session.execute(
            text(f"UPDATE {clean_table.__tablename__} SET error_message = :m WHERE id = :id"),
            {"m": UNSTARTED_RESCUE, "id": suspect},
        )
        session.commit()
    recorded: list[bool] = []

    def job(task: Any, ctx: TaskContext) -> None:
        if ctx.payload["suspect"]:
            recorded.append(started_at(session_factory, clean_table, task.id) is not None)

    worker = make_worker(session_factory, clean_table, {"job": job}, concurrency=1, prefetch=1)
    worker.run(until_empty=True)
    assert recorded == [True]
