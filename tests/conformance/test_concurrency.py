"""Concurrent claims and enqueues with real threads, each on its own connection."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from backends import only_on
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker
from twins import TWINS, in_session, make_repository

from sqlalchemy_taskqueue import InvalidTransitionError, TaskRepository, TaskStatus

pytestmark = pytest.mark.parametrize("twin", TWINS)


def run_threads(count: int, target: Any) -> list[BaseException]:
    """Run ``target(index)`` on ``count`` threads released together; return their errors."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            barrier.wait()
            target(index)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_eight_threads_drain_2000_tasks_each_claimed_exactly_once(
    twin: str, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    with session_factory() as session:
        TaskRepository(session, clean_table).enqueue_many("work", [{"n": n} for n in range(2000)])
        session.commit()

    claimed: list[list[int]] = [[] for _ in range(8)]

    def drain(index: int, session: Session) -> None:
        repo = make_repository(session, clean_table, owner=f"thread-{index}")
        while True:
            batch = repo.dequeue_many("work", limit=1 + index % 3)
            session.commit()
            if not batch:
                return
            for task in batch:
                claimed[index].append(task.id)
                repo.complete_task(task.id, lease_token=task.lease_token)
            session.commit()

    def drain_in_session(index: int) -> None:
        in_session(twin, session_factory, lambda session: drain(index, session))

    assert run_threads(8, drain_in_session) == []
    counts = Counter(task_id for ids in claimed for task_id in ids)
    assert len(counts) == 2000
    assert set(counts.values()) == {1}
    assert sum(1 for ids in claimed if ids) > 1  # the work was really shared
    with session_factory() as session:
        statuses = dict(
            session.execute(
                select(clean_table.status, func.count()).group_by(clean_table.status)
            ).all()
        )
    assert statuses == {TaskStatus.COMPLETED: 2000}


def test_sixteen_threads_racing_enqueue_if_not_exists_create_one_task(
    twin: str, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def enqueue_once(session: Session) -> tuple[int, bool]:
        outcome: tuple[int, bool] = make_repository(session, clean_table).enqueue_if_not_exists(
            "bulk_import", {"project_id": 1, "file": "items.csv"}
        )
        session.commit()
        return outcome

    def race(index: int) -> None:
        outcome = in_session(twin, session_factory, enqueue_once)
        with lock:
            results.append(outcome)

    assert run_threads(16, race) == []
    assert len(results) == 16
    assert len({task_id for task_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(clean_table)) == 1


#: SQLite has no row locks: its single writer runs these transactions one after another
ROW_LOCKS = "a transaction waiting for another's row lock"


def wait_until_blocked_on_a_lock(session: Session, thread: threading.Thread) -> None:
    """Return once another backend of this database waits for a lock (polled, no sleep)."""
    waiting = (
        select(func.count())
        .where(text("wait_event_type = 'Lock' AND datname = current_database()"))
        .select_from(text("pg_stat_activity"))
    )
    for _ in range(100_000):
        blocked = session.scalar(waiting)
        session.rollback()  # pg_stat_activity is a snapshot per transaction
        if blocked:
            return
        assert thread.is_alive(), "the other transaction finished without waiting"
    raise AssertionError("the other transaction never waited for the row lock")


def run_blocked_behind(
    first: Session,
    observer: Session,
    twin: str,
    session_factory: sessionmaker[Session],
    body: Callable[[Session], None],
) -> list[BaseException]:
    """Run ``body`` in a session of its own on another thread until it waits for a lock
    ``first`` holds, then commit ``first``; return what ``body`` raised once it ended."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            in_session(twin, session_factory, body)
        except BaseException as exc:  # returned to the test
            errors.append(exc)

    other = threading.Thread(target=target, daemon=True)
    other.start()
    wait_until_blocked_on_a_lock(observer, other)
    first.commit()
    other.join(timeout=60)
    assert not other.is_alive()
    return errors


def bulk_retry_counting_into(retried: list[int], model: type[Any]) -> Callable[[Session], None]:
    """A transaction body: ``retry_failed_tasks`` and commit, appending its count."""

    def bulk_retry(session: Session) -> None:
        retried.append(make_repository(session, model).retry_failed_tasks())
        session.commit()

    return bulk_retry


@only_on("postgresql", reason=ROW_LOCKS)
def test_a_bulk_retry_never_resets_a_task_claimed_while_it_waited(
    twin: str, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    with session_factory() as session:
        repo = TaskRepository(session, clean_table)
        task_id = repo.enqueue("work", {}, max_retries=0)
        session.commit()
        task = repo.dequeue("work")
        assert task is not None
        repo.fail_task(task_id, "boom", lease_token=task.lease_token)
        session.commit()

    retried: list[int] = []
    bulk_retry = bulk_retry_counting_into(retried, clean_table)
    with session_factory() as first, session_factory() as observer:
        repo = TaskRepository(first, clean_table)
        repo.retry_task(task_id)  # holds the row lock until commit ...
        claimed = repo.dequeue("work")  # ... and claims the task in the same transaction
        assert claimed is not None and claimed.id == task_id
        assert run_blocked_behind(first, observer, twin, session_factory, bulk_retry) == []
        stored = repo.get_task(task_id)
        assert stored is not None and stored.status is TaskStatus.IN_PROGRESS
        assert stored.lease_token == claimed.lease_token
        assert retried == [0]  # the task was no longer failed when its lock was granted
        repo.complete_task(task_id, lease_token=claimed.lease_token)
        first.commit()


def failed_task_with_key(
    session_factory: sessionmaker[Session], model: type[Any], dedupe_key: str
) -> int:
    """A committed task that has failed for good and holds ``dedupe_key`` no more."""
    with session_factory() as session:
        repo = TaskRepository(session, model)
        task_id, created = repo.enqueue_if_not_exists(
            "import", {}, dedupe_key=dedupe_key, max_retries=0
        )
        assert created
        session.commit()
        task = repo.dequeue("import")
        assert task is not None and task.id == task_id
        assert repo.fail_task(task_id, "boom", lease_token=task.lease_token) is TaskStatus.FAILED
        session.commit()
    return task_id


def take_key(repo: TaskRepository[Any], dedupe_key: str) -> int:
    """An active task that takes ``dedupe_key`` in ``repo``'s (uncommitted) transaction."""
    holder_id, created = repo.enqueue_if_not_exists("import", {}, dedupe_key=dedupe_key)
    assert created
    return holder_id


@only_on("postgresql", reason=ROW_LOCKS)
def test_a_bulk_retry_leaves_failed_a_task_whose_key_was_taken_while_it_waited(
    twin: str, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    failed_id = failed_task_with_key(session_factory, clean_table, "a.csv")

    retried: list[int] = []
    bulk_retry = bulk_retry_counting_into(retried, clean_table)
    with session_factory() as first, session_factory() as observer:
        repo = TaskRepository(first, clean_table)
        holder_id = take_key(repo, "a.csv")  # uncommitted: the retry cannot see it yet ...
        # ... and the retry waits for it at the unique index
        assert run_blocked_behind(first, observer, twin, session_factory, bulk_retry) == []
        assert retried == [0]  # the key was held when the retry could go on
        stored = repo.get_task(failed_id)
        assert stored is not None and stored.status is TaskStatus.FAILED
        holder = repo.get_task(holder_id)
        assert holder is not None and holder.status is TaskStatus.PENDING


@only_on("postgresql", reason=ROW_LOCKS)
def test_retrying_a_task_whose_key_was_taken_while_it_waited_is_an_invalid_transition(
    twin: str, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    failed_id = failed_task_with_key(session_factory, clean_table, "a.csv")

    refused: list[BaseException] = []
    after: list[int] = []

    def retry_then_continue(session: Session) -> None:
        repo = make_repository(session, clean_table)
        try:
            repo.retry_task(failed_id)
        except BaseException as exc:  # checked below
            refused.append(exc)
        # the caller's transaction is still usable after the refusal
        after.append(repo.enqueue("other", {}))
        session.commit()

    with session_factory() as first, session_factory() as observer:
        repo = TaskRepository(first, clean_table)
        holder_id = take_key(repo, "a.csv")
        assert run_blocked_behind(first, observer, twin, session_factory, retry_then_continue) == []
        assert len(refused) == 1, refused
        assert isinstance(refused[0], InvalidTransitionError), repr(refused[0])
        assert f"task {holder_id} with the same dedupe key is already active" in str(refused[0])
        assert len(after) == 1
        stored = repo.get_task(failed_id)
        assert stored is not None and stored.status is TaskStatus.FAILED
        assert repo.get_task(after[0]) is not None
