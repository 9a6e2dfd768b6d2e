"""The worker registry: a running worker is listed (where it runs, its types and slots,
its version), its heartbeats keep it listed, it leaves at a graceful stop, and a worker
that died drops out once its registration expires and is then cleaned up."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from processes import wait_for
from sqlalchemy import func, select
from twins import running
from worker_harness import Factory, Gate, MakeWorker

from sqlalchemy_taskqueue import LiveWorker, TaskRepository, __version__
from sqlalchemy_taskqueue._registry import workers_table


def listed(session_factory: Factory, model: type[Any]) -> list[LiveWorker]:
    with session_factory() as session:
        return TaskRepository(session, model).workers()


def registry_rows(session_factory: Factory, model: type[Any]) -> int:
    with session_factory() as session:
        table = workers_table(model.__table__)
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_a_running_worker_is_listed_until_it_stops(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    handlers = {"export": lambda task, ctx: None, "import": lambda task, ctx: None}
    worker = make_worker(
        session_factory, clean_table, handlers, concurrency=3, heartbeat_interval=0.1
    )
    with running(worker):
        wait_for(lambda: len(listed(session_factory, clean_table)) == 1)
        [me] = listed(session_factory, clean_table)
        assert (me.worker_id, me.host, me.pid) == (worker.owner, socket.gethostname(), os.getpid())
        assert (sorted(me.task_types), me.slots, me.version) == (
            ["export", "import"],
            3,
            __version__,
        )
        # an idle worker heartbeats too: its registration is refreshed
        wait_for(lambda: listed(session_factory, clean_table)[0].heartbeat_at > me.heartbeat_at)
    assert listed(session_factory, clean_table) == []
    assert registry_rows(session_factory, clean_table) == 0


def test_a_dead_workers_registration_expires_and_a_rescue_deletes_it(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """A worker that dies cannot remove its row: it stops being listed once its last
    heartbeat is a lease old, and a live worker's next rescue deletes it."""
    with session_factory.begin() as session:
        TaskRepository(session, clean_table)._record_worker(
            {
                "worker_id": "gone:1:dead",
                "host": "gone",
                "pid": 1,
                "task_types": ["export"],
                "slots": 2,
                "version": "0.0.1",
            },
            timedelta(milliseconds=200),
        )
    assert [w.worker_id for w in listed(session_factory, clean_table)] == ["gone:1:dead"]
    wait_for(lambda: listed(session_factory, clean_table) == [])
    assert registry_rows(session_factory, clean_table) == 1  # expired, not yet deleted
    worker = make_worker(
        session_factory, clean_table, {"export": lambda task, ctx: None}, rescue_interval=0.1
    )
    with running(worker):
        wait_for(lambda: len(listed(session_factory, clean_table)) == 1)  # itself
        wait_for(lambda: registry_rows(session_factory, clean_table) == 1)  # and no other
        assert [w.worker_id for w in listed(session_factory, clean_table)] == [worker.owner]


def test_stats_name_the_pending_types_no_live_worker_claims(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    with session_factory.begin() as session:
        repo = TaskRepository(session, clean_table)
        repo.enqueue("export", {}, run_at=timedelta(hours=1))  # pending, not yet due
        repo.enqueue("report", {}, run_at=timedelta(hours=1))
        assert repo.unhandled_types() == ["export", "report"]  # no worker at all
    worker = make_worker(session_factory, clean_table, {"export": lambda task, ctx: None})
    with running(worker):
        wait_for(lambda: len(listed(session_factory, clean_table)) == 1)
        with session_factory() as session:
            stats = TaskRepository(session, clean_table).queue_stats()
        assert stats.unhandled_types == ["report"]
        assert stats.as_dict()["unhandled_types"] == ["report"]


def test_a_busy_workers_heartbeat_refreshes_its_registration_with_its_leases(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    gate = Gate()
    with session_factory.begin() as session:
        task_id = TaskRepository(session, clean_table).enqueue("export", {})
    worker = make_worker(session_factory, clean_table, {"export": gate}, heartbeat_interval=0.1)
    with running(worker):
        assert gate.started.wait(10)
        with session_factory() as session:
            task = TaskRepository(session, clean_table).get_task(task_id)
            assert task is not None
            first_expiry = task.lease_expires_at
        [me] = listed(session_factory, clean_table)

        def renewed() -> bool:
            with session_factory() as session:
                task = TaskRepository(session, clean_table).get_task(task_id)
                return task is not None and task.lease_expires_at > first_expiry

        wait_for(renewed)
        wait_for(lambda: listed(session_factory, clean_table)[0].heartbeat_at > me.heartbeat_at)
        gate.proceed.set()
