"""Claiming: ``dequeue`` and ``dequeue_many`` take due, pending tasks of one type, several
or any, by priority then age, mark them in progress and stamp one lease per claim;
tasks scheduled for later are not claimable, and limits the database cannot take are
refused before anything is sent."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from backends import instant
from repository_harness import Repo, claim
from sqlalchemy import text
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import TaskStatus


def test_dequeue_claims_and_stamps_the_lease(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {"k": "v"})
    session.commit()
    task = repo.dequeue("a")
    session.commit()
    session.close()
    # still readable after commit and close, despite expire_on_commit=True
    assert task is not None
    assert (task.id, task.payload, task.status) == (task_id, {"k": "v"}, TaskStatus.IN_PROGRESS)
    assert task.started_at is not None and task.lease_expires_at is not None
    assert isinstance(task.lease_token, uuid.UUID)
    assert task.lease_owner == repo.owner
    assert task.lease_expires_at - task.started_at == timedelta(minutes=5)
    stored = repo.get_task(task_id)
    assert stored is not None and stored.status is TaskStatus.IN_PROGRESS
    assert repo.dequeue("a") is None


def test_dequeue_filters_by_one_several_or_any_type(repo: Repo, session: Session) -> None:
    ids = {name: repo.enqueue(name, {}) for name in ("a", "b", "c")}
    session.commit()
    assert repo.dequeue("zzz") is None
    assert claim(repo, "b").id == ids["b"]
    assert {claim(repo, ["a", "c"]).id for _ in range(2)} == {ids["a"], ids["c"]}
    repo.enqueue("d", {})
    session.commit()
    assert claim(repo).type == "d"
    with pytest.raises(ValueError, match="at least one"):
        repo.dequeue([])
    with pytest.raises(TypeError, match="task_type"):
        repo.dequeue([1])  # type: ignore[list-item]
    for not_types in (5, 2.5, object()):
        with pytest.raises(TypeError, match="task_type must be a type name, a sequence"):
            repo.dequeue(not_types)  # type: ignore[arg-type]


def test_dequeue_orders_by_priority_then_age(repo: Repo, session: Session) -> None:
    low = repo.enqueue("a", {"n": "low"}, priority=10)
    old = repo.enqueue("a", {"n": "old"})
    new = repo.enqueue("a", {"n": "new"})
    urgent = repo.enqueue("a", {"n": "urgent"}, priority=-1)
    session.commit()
    assert [claim(repo).id for _ in range(4)] == [urgent, old, new, low]


def test_future_run_at_is_not_claimable_until_due(repo: Repo, session: Session) -> None:
    later = repo.enqueue("a", {}, run_at=datetime.now(timezone.utc) + timedelta(hours=1))
    session.commit()
    assert repo.dequeue("a") is None
    session.execute(text(f"UPDATE {repo.model.__tablename__} SET run_at = {instant(session, -1)}"))
    session.commit()
    assert claim(repo, "a").id == later


def test_dequeue_many_claims_a_batch_in_order(repo: Repo, session: Session) -> None:
    ids = repo.enqueue_many("a", [{"n": n} for n in range(10)])
    session.commit()
    batch = repo.dequeue_many("a", limit=4)
    session.commit()
    assert [task.id for task in batch] == ids[:4]
    assert len({task.lease_token for task in batch}) == 1
    assert [task.id for task in repo.dequeue_many(limit=100)] == ids[4:]
    with pytest.raises(ValueError, match="limit"):
        repo.dequeue_many("a", limit=0)
    with pytest.raises(TypeError, match="lease_duration"):
        repo.dequeue_many("a", limit=1, lease_duration="30s")  # type: ignore[arg-type]


def test_limits_beyond_the_databases_integers_are_refused_before_sending(
    repo: Repo, session: Session
) -> None:
    task_id = repo.enqueue("a", {})
    with pytest.raises(ValueError, match="limit"):
        repo.dequeue_many(limit=2**31)
    with pytest.raises(ValueError, match="limit"):
        repo.rescue_expired_leases(limit=2**63)
    with pytest.raises(ValueError, match="batch_size"):
        repo.cleanup_old_tasks(timedelta(days=1), batch_size=2**63)
    session.commit()  # the caller's transaction was not aborted: the task is kept
    assert repo.get_task(task_id) is not None
    assert [task.id for task in repo.dequeue_many(limit=2**31 - 1)] == [task_id]


def test_lease_durations_may_be_seconds(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {})
    session.commit()
    task = repo.dequeue("a", lease_duration=90)
    session.commit()
    assert task is not None and task.lease_expires_at - task.started_at == timedelta(seconds=90)


def test_dequeue_refreshes_a_copy_already_in_the_session(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    loaded = repo.get_task(task_id)
    assert loaded is not None and loaded.status is TaskStatus.PENDING
    claimed = claim(repo)
    assert claimed.id == task_id and claimed.status is TaskStatus.IN_PROGRESS
