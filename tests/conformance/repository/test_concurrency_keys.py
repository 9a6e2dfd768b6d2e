"""Per-key concurrency: at most ``concurrency_limit`` tasks with the same
``concurrency_key`` are in progress at once, across every claimer; a slot frees when its
task leaves ``in_progress``, whichever way it leaves."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from backends import instant
from repository_harness import Repo
from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import KeyAtLimit, LeaseLostError, TaskRepository, TaskStatus
from sqlalchemy_taskqueue._concurrency import key_slots_table


def claimed_keys(repo: Repo, session: Session, limit: int = 20) -> list[str]:
    tasks = repo.dequeue_many(limit=limit)
    session.commit()
    return sorted(task.concurrency_key or "-" for task in tasks)


def test_a_key_runs_at_most_its_limit_and_the_rest_wait(repo: Repo, session: Session) -> None:
    ids = repo.enqueue_many(
        "sync", [{"n": n} for n in range(5)], concurrency_key="a", concurrency_limit=2
    )
    session.commit()
    first = repo.dequeue_many(limit=10)
    session.commit()
    assert [task.id for task in first] == ids[:2]
    assert repo.dequeue() is None
    session.commit()
    assert repo.keys_at_limit() == [KeyAtLimit("a", limit=2, running=2, waiting=3)]
    repo.complete_task(first[0].id, lease_token=first[0].lease_token)
    session.commit()
    assert repo.keys_at_limit() == []
    assert [task.id for task in repo.dequeue_many(limit=10)] == [ids[2]]


def test_other_keys_and_tasks_without_a_key_run_beside_a_full_key(
    repo: Repo, session: Session
) -> None:
    for key in ("a", "a", "b", "b"):
        repo.enqueue("sync", {}, concurrency_key=key)
    repo.enqueue_many("plain", [{}, {}])
    session.commit()
    assert claimed_keys(repo, session) == ["-", "-", "a", "b"]
    assert claimed_keys(repo, session) == []


def test_a_long_backlog_of_one_key_does_not_hide_the_tasks_of_others(
    repo: Repo, session: Session
) -> None:
    repo.enqueue_many("sync", [{"n": n} for n in range(50)], concurrency_key="busy")
    quiet = repo.enqueue("sync", {}, concurrency_key="quiet")
    session.commit()
    claimed = repo.dequeue_many(limit=2)
    assert [task.concurrency_key for task in claimed] == ["busy", "quiet"]
    assert claimed[1].id == quiet


def test_a_keyed_task_keeps_its_place_in_priority_order_within_its_key(
    repo: Repo, session: Session
) -> None:
    late = repo.enqueue("sync", {"n": 1}, concurrency_key="a", priority=5)
    urgent = repo.enqueue("sync", {"n": 2}, concurrency_key="a", priority=-5)
    session.commit()
    [task] = repo.dequeue_many(limit=10)
    assert task.id == urgent != late


def lose(repo: Repo, session: Session, engine: Engine, task: Any) -> None:
    """Let the task's lease expire and rescue it."""
    with engine.begin() as connection:
        table = repo.model.__table__
        connection.execute(
            update(table)
            .where(table.c.id == task.id)
            .values(lease_expires_at=text(instant(connection, -1)))
        )
    repo.rescue_expired_leases()


EXITS: dict[str, Callable[[Repo, Session, Engine, Any], object]] = {
    "complete": lambda repo, s, e, t: repo.complete_task(t.id, lease_token=t.lease_token),
    "complete by an operator": lambda repo, s, e, t: repo.complete_task(t.id),
    "complete a batch": lambda repo, s, e, t: repo.complete_tasks([(t.id, t.lease_token, None)]),
    "fail and retry": lambda repo, s, e, t: repo.fail_task(t.id, "boom", lease_token=t.lease_token),
    "fail for good": lambda repo, s, e, t: repo.fail_task(
        t.id, "boom", lease_token=t.lease_token, retry=False
    ),
    "cancel": lambda repo, s, e, t: repo.cancel_task(t.id),
    "hand back": lambda repo, s, e, t: repo.release_tasks([(t.id, t.lease_token)]),
    "lease expiry and rescue": lose,
}


@pytest.mark.parametrize("exit_path", EXITS)
def test_every_way_out_of_in_progress_frees_the_slot(
    repo: Repo, session: Session, engine: Engine, exit_path: str
) -> None:
    repo.enqueue_many("sync", [{"n": 1}, {"n": 2}], concurrency_key="a", run_at=None)
    session.commit()
    [task] = repo.dequeue_many(limit=10)
    session.commit()
    assert repo.dequeue() is None
    session.commit()
    EXITS[exit_path](repo, session, engine, task)
    session.commit()
    assert repo.keys_at_limit() == []
    [following] = repo.dequeue_many(limit=10)
    assert following.concurrency_key == "a"


def test_a_late_outcome_after_a_rescue_frees_nobody_elses_slot(
    repo: Repo, session: Session, engine: Engine
) -> None:
    repo.enqueue_many("sync", [{"n": 1}, {"n": 2}], concurrency_key="a")
    session.commit()
    [lost] = repo.dequeue_many(limit=10)
    session.commit()
    lose(repo, session, engine, lost)
    session.commit()
    holder = repo.dequeue()
    session.commit()
    assert holder is not None  # the same task again, under a new lease, or the next one
    with pytest.raises(LeaseLostError):
        repo.complete_task(lost.id, lease_token=lost.lease_token)
    session.rollback()
    assert [(k.concurrency_key, k.running) for k in repo.keys_at_limit()] == [("a", 1)]


def test_tasks_of_a_key_with_a_lower_limit_take_only_its_first_slots(
    repo: Repo, session: Session
) -> None:
    """A key's slots are as many as the highest limit it was enqueued with; a task takes
    one of the first ``concurrency_limit`` of them."""
    repo.enqueue_many("sync", [{}, {}], concurrency_key="a", concurrency_limit=3)
    session.commit()
    assert len(repo.dequeue_many(limit=10)) == 2  # slots 1 and 2
    session.commit()
    repo.enqueue_many("sync", [{}, {}], concurrency_key="a", concurrency_limit=2)
    session.commit()
    assert repo.dequeue_many(limit=10) == []
    session.commit()
    repo.enqueue("sync", {}, concurrency_key="a", concurrency_limit=3)
    session.commit()
    assert [task.concurrency_limit for task in repo.dequeue_many(limit=10)] == [3]


def test_enqueue_if_not_exists_takes_a_key_too(repo: Repo, session: Session) -> None:
    first, created = repo.enqueue_if_not_exists("sync", {"a": 1}, concurrency_key="a")
    again, created_again = repo.enqueue_if_not_exists("sync", {"a": 1}, concurrency_key="a")
    session.commit()
    assert (created, created_again, again) == (True, False, first)
    task = repo.get_task(first)
    assert task is not None and (task.concurrency_key, task.concurrency_limit) == ("a", 1)


def test_racing_claimers_never_take_more_slots_than_a_key_has(
    repo: Repo, session: Session, session_factory: sessionmaker[Session]
) -> None:
    for key in range(6):
        repo.enqueue_many(
            "sync", [{"n": n} for n in range(8)], concurrency_key=f"k{key}", concurrency_limit=2
        )
    session.commit()
    model = repo.model
    start = threading.Barrier(8)
    claimed: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        with session_factory() as own:
            start.wait(10)
            for _ in range(6):
                tasks = TaskRepository(own, model).dequeue_many(limit=3)
                own.commit()
                with lock:
                    claimed.extend(task.concurrency_key for task in tasks)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # never more than the limit; and every slot was taken by someone
    assert Counter(claimed) == {f"k{key}": 2 for key in range(6)}


def test_a_slot_whose_task_was_deleted_by_hand_is_freed_by_a_rescue(
    repo: Repo, session: Session, engine: Engine
) -> None:
    repo.enqueue_many("sync", [{}, {}], concurrency_key="a")
    session.commit()
    [task] = repo.dequeue_many(limit=10)
    session.commit()
    table = repo.model.__table__
    slots = key_slots_table(table)
    with engine.begin() as connection:
        connection.execute(delete(table).where(table.c.id == task.id))
        connection.execute(update(slots).values(claimed_at=text(instant(connection, -120))))
    repo.rescue_expired_leases()
    session.commit()
    assert repo.keys_at_limit() == []
    assert len(repo.dequeue_many(limit=10)) == 1


def test_a_recently_taken_slot_is_never_mistaken_for_an_orphan(
    repo: Repo, session: Session, engine: Engine
) -> None:
    """A rescue frees only slots taken long ago: a claim committing while the rescue runs
    is not seen by its snapshot and must not lose its slot."""
    repo.enqueue_many("sync", [{}, {}], concurrency_key="a")
    session.commit()
    [task] = repo.dequeue_many(limit=10)
    session.commit()
    table = repo.model.__table__
    with engine.begin() as connection:
        connection.execute(
            update(table).where(table.c.id == task.id).values(status=TaskStatus.COMPLETED)
        )
    repo.rescue_expired_leases()
    session.commit()
    assert [k.concurrency_key for k in repo.keys_at_limit()] == ["a"]


KEYS_AND_LIMITS = [
    (("", 1), ValueError, "concurrency_key must be a non-empty string"),
    ((7, 1), ValueError, "concurrency_key must be a non-empty string"),
    (("a\x00b", 1), ValueError, "NUL"),
    (("k" * 1025, 1), ValueError, "at most 1024 bytes"),
    (("a", 0), ValueError, "concurrency_limit must be an integer from 1 to 1000"),
    (("a", -1), ValueError, "concurrency_limit must be an integer from 1 to 1000"),
    (("a", 1001), ValueError, "concurrency_limit must be an integer from 1 to 1000"),
    (("a", 1.5), TypeError, "concurrency_limit must be an int"),
    (("a", "2"), TypeError, "concurrency_limit must be an int"),
    (("a", True), TypeError, "concurrency_limit must be an int"),
    ((None, 0), ValueError, "concurrency_limit must be an integer"),
]


@pytest.mark.parametrize("form", ["enqueue", "enqueue_many", "enqueue_if_not_exists"])
@pytest.mark.parametrize(("key_and_limit", "error", "message"), KEYS_AND_LIMITS)
def test_bad_keys_and_limits_are_refused_and_nothing_is_written(
    repo: Repo,
    session: Session,
    form: str,
    key_and_limit: tuple[Any, Any],
    error: type[Exception],
    message: str,
) -> None:
    key, limit = key_and_limit
    keywords = {"concurrency_key": key, "concurrency_limit": limit}
    payload: Any = [{}] if form == "enqueue_many" else {}
    with pytest.raises(error, match=message):
        getattr(repo, form)("sync", payload, **keywords)
    session.commit()
    slots = key_slots_table(repo.model.__table__)
    assert session.scalar(select(func.count()).select_from(repo.model)) == 0
    assert session.scalar(select(func.count()).select_from(slots)) == 0
