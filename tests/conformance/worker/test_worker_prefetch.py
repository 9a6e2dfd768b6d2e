"""Claiming ahead of free slots (prefetch): slots take a claimed batch in the claim's
order; the tasks waiting for a slot keep their leases, go back to the queue (once)
when they waited a whole lease or the worker stops, and are not run once their lease
is lost; the automatic prefetch claims ahead only for quick tasks, and ``prefetch=0``
turns it off."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from processes import wait_for
from sqlalchemy import text
from twins import running
from worker_harness import Factory, Gate, MakeWorker, enqueue, fetch

from sqlalchemy_taskqueue import TaskContext, TaskRepository, TaskStatus


def first_blocks(
    ids: list[int], gate: Gate, later: Any
) -> tuple[Callable[[Any, TaskContext], Any], list[int]]:
    """A handler where the task ``ids[0]`` runs ``gate`` and the others return ``later``,
    and the list of task ids it was called for."""
    calls: list[int] = []

    def job(task: Any, ctx: TaskContext) -> Any:
        calls.append(task.id)
        return gate(task, ctx) if task.id == ids[0] else later

    return job, calls


def test_one_slot_runs_a_claimed_batch_in_priority_then_due_time_order(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """Slots take a claimed batch first to last, in the claim's order: priority, then
    due time, then id (``test_loading`` checks the rows are put back in that order)."""
    now = datetime.now(timezone.utc)
    seen: list[int] = []
    expected: list[tuple[int, datetime, int]] = []
    with session_factory() as session:
        repo = TaskRepository(session, clean_table)
        for n, (priority, ago) in enumerate([(5, 1), (0, 2), (5, 9), (-3, 1), (0, 2), (0, 7)]):
            run_at = now - timedelta(minutes=ago)
            expected.append(
                (priority, run_at, repo.enqueue("t", {"n": n}, priority=priority, run_at=run_at))
            )
        session.commit()
    worker = make_worker(
        session_factory,
        clean_table,
        {"t": lambda task, ctx: seen.append(ctx.task_id)},
        concurrency=1,
        prefetch=10,  # every task in the first claim
    )
    worker.run(until_empty=True)
    assert seen == [task_id for *_, task_id in sorted(expected)]
    assert worker.stats.claimed == 6


def test_prefetched_tasks_keep_their_leases_and_go_back_at_shutdown(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    first = Gate("first")
    ids = [enqueue(session_factory, clean_table, "job", {"n": n}) for n in range(3)]
    job, calls = first_blocks(ids, first, "later")

    # renewed every 0.5 s, and a waiting task is handed back only after a whole lease
    # (60 s), so the hand-back of stale waiting tasks cannot race this test on a slow machine
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": job},
        concurrency=1,
        prefetch=2,
        lease_duration=60,
        heartbeat_interval=0.5,
    )
    with running(worker) as thread:
        assert first.started.wait(10)
        # all three are claimed: one running, two waiting in the worker for the slot
        wait_for(
            lambda: all(
                fetch(session_factory, clean_table, i).status is TaskStatus.IN_PROGRESS for i in ids
            )
        )
        held_until = fetch(session_factory, clean_table, ids[2]).lease_expires_at
        wait_for(lambda: fetch(session_factory, clean_table, ids[2]).lease_expires_at > held_until)
        worker.stop()
        first.proceed.set()
        thread.join(10)
    assert calls == [ids[0]]
    assert fetch(session_factory, clean_table, ids[0]).status is TaskStatus.COMPLETED
    for task_id in ids[1:]:
        task = fetch(session_factory, clean_table, task_id)
        assert (task.status, task.retry_count) == (TaskStatus.PENDING, 0)
    assert (worker.stats.rescued, worker.stats.lost_leases, worker.stats.released) == (0, 0, 2)


def test_tasks_waiting_behind_a_hung_handler_go_back_after_a_lease(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    hung = Gate("never mind")
    first = enqueue(session_factory, clean_table, "hang", timeout_seconds=1, max_retries=0)
    waiting = enqueue(session_factory, clean_table, "quick")
    worker = make_worker(
        session_factory,
        clean_table,
        {"hang": hung, "quick": lambda task, ctx: "done"},
        concurrency=1,
        prefetch=1,
        lease_duration=1,
    )
    try:
        with running(worker):
            assert hung.started.wait(10)
            if make_worker.twin == "async-def":  # type: ignore[attr-defined]
                # a coroutine past its timeout is cancelled: its slot runs the next task
                wait_for(lambda: fetch(session_factory, clean_table, waiting).result == "done")
                assert fetch(session_factory, clean_table, waiting).lease_owner == worker.owner
            else:
                # a thread that never returns keeps its slot: the waiting task goes back
                wait_for(
                    lambda: (
                        fetch(session_factory, clean_table, waiting).status is TaskStatus.PENDING
                    )
                )
                other = make_worker(
                    session_factory, clean_table, {"quick": lambda task, ctx: "done"}
                )
                other.run(until_empty=True)
                assert fetch(session_factory, clean_table, waiting).result == "done"
            assert fetch(session_factory, clean_table, first).status is TaskStatus.FAILED
    finally:
        hung.proceed.set()


def test_a_prefetched_task_whose_lease_is_lost_is_not_run(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    blocker = Gate("first")
    ids = [enqueue(session_factory, clean_table, "job", {"n": n}) for n in range(2)]
    job, calls = first_blocks(ids, blocker, "second")

    worker = make_worker(
        session_factory, clean_table, {"job": job}, concurrency=1, prefetch=1, lease_duration=1
    )
    with running(worker):
        assert blocker.started.wait(10)
        wait_for(
            lambda: fetch(session_factory, clean_table, ids[1]).status is TaskStatus.IN_PROGRESS
        )
        with session_factory() as session:  # an operator finishes the waiting task by hand
            TaskRepository(session, clean_table).complete_task(ids[1], result="by hand")
            session.commit()
        wait_for(lambda: worker.stats.lost_leases == 1)
        blocker.proceed.set()
        wait_for(lambda: fetch(session_factory, clean_table, ids[0]).status is TaskStatus.COMPLETED)
    assert calls == [ids[0]]
    assert fetch(session_factory, clean_table, ids[1]).result == "by hand"
    assert worker.stats.lost_leases == 1


def test_a_task_handed_back_for_waiting_too_long_is_released_once(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    blocker = Gate("first")
    ids = [enqueue(session_factory, clean_table, "job", {"n": n}) for n in range(2)]
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": blocker},
        concurrency=1,
        prefetch=1,
        lease_duration=1,
        shutdown_grace=0.3,
    )
    try:
        with running(worker) as thread:
            assert blocker.started.wait(10)
            # the prefetched task waits more than a lease, so it is handed back ...
            wait_for(
                lambda: fetch(session_factory, clean_table, ids[1]).status is TaskStatus.PENDING
            )
            worker.stop()  # ... and shutdown (the slot still busy) must not hand it back again
            thread.join(10)
    finally:
        blocker.proceed.set()
    # released: the waiting task once, and the blocked one at the end of the grace period
    assert (worker.stats.released, worker.stats.lost_leases) == (2, 0)
    assert [fetch(session_factory, clean_table, i).retry_count for i in ids] == [0, 0]


def held_counts(
    make_worker: MakeWorker,
    session_factory: Factory,
    model: type[Any],
    seconds: float,
    tasks: int,
    **kw: Any,
) -> list[int]:
    """Run ``tasks`` tasks that each take ``seconds``; each handler notes how many tasks
    the worker then held (in progress in the database)."""
    with session_factory() as session:
        TaskRepository(session, model).enqueue_many("job", [{} for _ in range(tasks)])
        session.commit()
    seen: list[int] = []

    def job(task: Any, ctx: TaskContext) -> None:
        with session_factory() as session:
            held = session.scalar(
                text(f"SELECT count(*) FROM {model.__tablename__} WHERE status = 'in_progress'")
            )
        seen.append(int(held or 0))
        time.sleep(seconds)  # simulated work

    make_worker(session_factory, model, {"job": job}, concurrency=1, **kw).run(until_empty=True)
    return seen


def test_automatic_prefetch_claims_ahead_for_quick_tasks(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    seen = held_counts(make_worker, session_factory, clean_table, 0, 60)
    assert seen[0] == 1  # nothing is known of the pace at first
    assert max(seen) > 1  # then quick tasks are claimed ahead of the free slot
    assert max(seen) <= 1 + 32  # at most 32 per slot


def test_automatic_prefetch_holds_nothing_back_for_slow_tasks(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    # 100 ms per task with one slot: more than the 50 ms horizon, so no prefetch
    assert set(held_counts(make_worker, session_factory, clean_table, 0.1, 6)) == {1}


def test_prefetch_zero_turns_it_off(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    assert set(held_counts(make_worker, session_factory, clean_table, 0, 30, prefetch=0)) == {1}


def test_automatic_prefetch_stops_while_a_long_attempt_runs(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    gate = Gate()
    at_start: list[int] = []

    def slow(task: Any, ctx: TaskContext) -> Any:
        at_start.append(worker._prefetch_now())
        return gate(task, ctx)

    worker = make_worker(
        session_factory,
        clean_table,
        {"quick": lambda task, ctx: None, "slow": slow},
        concurrency=1,
    )
    with session_factory() as session:
        repo = TaskRepository(session, clean_table)
        repo.enqueue_many("quick", [{} for _ in range(20)])
        repo.enqueue("slow", {}, priority=1)  # after every quick one
        session.commit()
    with running(worker):
        assert gate.started.wait(10)
        assert at_start[0] > 0  # the quick tasks set a fast pace
        # the slow attempt's age overrides it as it runs, before it finishes
        wait_for(lambda: worker._prefetch_now() == 0, timeout=5)
        gate.proceed.set()
