"""A running worker and pauses: a pause takes effect at its next claim, with no restart;
tasks already running finish; a resume lets it go on at once."""

from __future__ import annotations

import threading
from typing import Any

from processes import wait_for
from twins import running
from worker_harness import Factory, MakeWorker, enqueue

from sqlalchemy_taskqueue import TaskRepository, TaskStatus


def counts(factory: Factory, model: type[Any], task_type: str) -> dict[TaskStatus, int]:
    with factory() as session:
        repo = TaskRepository(session, model)
        found: dict[TaskStatus, int] = {}
        for row in repo.status_counts():
            if row.task_type == task_type:
                found[row.status] = row.count
        return found


def test_a_pause_stops_new_claims_of_its_type_and_a_resume_restarts_them(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    ran: list[str] = []
    gate = threading.Event()

    def job(task: Any, ctx: Any) -> None:
        ran.append("job")
        gate.wait(10)  # the first one holds its slot until the pause is in place

    def other(task: Any, ctx: Any) -> None:
        ran.append("other")

    with session_factory() as session:
        TaskRepository(session, clean_table).enqueue_many("job", [{"n": n} for n in range(6)])
        session.commit()
    worker = make_worker(
        session_factory, clean_table, {"job": job, "other": other}, concurrency=1, prefetch=0
    )
    with running(worker):
        wait_for(lambda: ran == ["job"])
        with session_factory.begin() as session:
            TaskRepository(session, clean_table).pause("job")
        gate.set()  # the running one finishes
        wait_for(lambda: counts(session_factory, clean_table, "job").get(TaskStatus.COMPLETED) == 1)
        # the worker claims again (another type) while five paused tasks wait
        enqueue(session_factory, clean_table, "other")
        wait_for(lambda: "other" in ran)
        wait_for(worker.idle.is_set)
        assert ran.count("job") == 1
        assert counts(session_factory, clean_table, "job").get(TaskStatus.PENDING) == 5
        with session_factory.begin() as session:
            TaskRepository(session, clean_table).resume("job")
        wait_for(lambda: counts(session_factory, clean_table, "job").get(TaskStatus.COMPLETED) == 6)
    assert ran.count("job") == 6
