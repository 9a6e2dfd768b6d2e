"""A worker's leases: heartbeats keep a long task leased (and racing completions lose
none), a worker whose task was rescued and claimed by another writes nothing and asks
its handler to stop, and the expired leases of dead workers are rescued, by
``run(until_empty=True)`` and by an idle worker every rescue interval."""

from __future__ import annotations

from typing import Any

from backends import instant
from processes import wait_for
from sqlalchemy import text
from twins import running
from worker_harness import Factory, Gate, MakeWorker, enqueue, fetch

from sqlalchemy_taskqueue import TaskRepository, TaskStatus


def test_a_stale_worker_cannot_complete_a_rescued_task(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    slow = Gate("stale result")
    task_id = enqueue(session_factory, clean_table, "slow")
    worker = make_worker(
        session_factory, clean_table, {"slow": slow}, lease_duration=2, rescue_interval=3600
    )
    with running(worker):
        assert slow.started.wait(10)
        # another worker takes over: the lease is expired, rescued and claimed again
        with session_factory() as session:
            session.execute(
                text(
                    f"UPDATE {clean_table.__tablename__} "
                    f"SET lease_expires_at = {instant(session, -1)}"
                )
            )
            repo = TaskRepository(session, clean_table, owner="successor")
            assert repo.rescue_expired_leases() == {task_id: TaskStatus.PENDING}
            # claimed in the rescue's own transaction: the rescue's notification, sent at
            # commit, would wake the stale worker to claim it first
            successor = repo.dequeue("slow")
            session.commit()
        assert successor is not None
        # the stale worker's heartbeat notices and its handler is asked to stop
        wait_for(lambda: worker.stats.lost_leases == 1)
        slow.proceed.set()
        wait_for(lambda: worker.stats.claimed == 1 and slow.stop_seen == [True])
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.IN_PROGRESS and task.lease_owner == "successor"
    assert task.result is None and task.lease_token == successor.lease_token
    assert worker.stats.completed == 0


def test_heartbeats_keep_a_long_task_leased(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    slow = Gate()
    task_id = enqueue(session_factory, clean_table, "slow")
    worker = make_worker(session_factory, clean_table, {"slow": slow}, lease_duration=1)
    with running(worker):
        assert slow.started.wait(10)
        first = fetch(session_factory, clean_table, task_id).lease_expires_at
        wait_for(lambda: fetch(session_factory, clean_table, task_id).lease_expires_at > first)
        # a second worker's rescue finds nothing expired while heartbeats run
        with session_factory() as session:
            assert TaskRepository(session, clean_table).rescue_expired_leases() == {}
        slow.proceed.set()
        wait_for(
            lambda: fetch(session_factory, clean_table, task_id).status is TaskStatus.COMPLETED
        )


def test_heartbeats_racing_completions_report_no_lost_leases(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    with session_factory() as session:
        TaskRepository(session, clean_table).enqueue_many("fast", [{}] * 600)
        session.commit()
    worker = make_worker(
        session_factory, clean_table, {"fast": lambda task, ctx: None}, heartbeat_interval=0.005
    )
    worker.run(until_empty=True)
    assert (worker.stats.completed, worker.stats.lost_leases) == (600, 0)


def test_until_empty_rescues_expired_leases(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    task_id = enqueue(session_factory, clean_table, "job")
    with session_factory() as session:
        repo = TaskRepository(session, clean_table, owner="dead-worker")
        assert repo.dequeue("job") is not None
        session.execute(
            text(
                f"UPDATE {clean_table.__tablename__} SET lease_expires_at = {instant(session, -1)}"
            )
        )
        session.commit()
    worker = make_worker(session_factory, clean_table, {"job": lambda task, ctx: "rescued"})
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.result, task.retry_count) == (TaskStatus.COMPLETED, "rescued", 1)
    assert worker.stats.rescued == 1


def test_an_idle_worker_rescues_every_rescue_interval_however_long_its_poll(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """A worker that waits for notifications with a long poll interval still rescues a
    dead worker's task within about ``lease_duration + rescue_interval``."""
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": lambda task, ctx: "rescued"},
        poll_interval=3600,
        rescue_interval=0.2,
    )
    with running(worker):
        wait_for(worker.idle.is_set)  # its first turn found nothing to rescue or claim
        with session_factory() as session:
            # a worker that claims a task without waking the others, then dies
            repo = TaskRepository(session, clean_table, owner="dead-worker", notify=False)
            task_id = repo.enqueue("job", {})
            assert repo.dequeue("job") is not None
            session.execute(
                text(
                    f"UPDATE {clean_table.__tablename__} "
                    f"SET lease_expires_at = {instant(session, -1)}"
                )
            )
            session.commit()
        wait_for(
            lambda: fetch(session_factory, clean_table, task_id).status is TaskStatus.COMPLETED,
            timeout=10,
        )
    task = fetch(session_factory, clean_table, task_id)
    assert (task.result, task.retry_count) == ("rescued", 1)
    assert worker.stats.rescued == 1
