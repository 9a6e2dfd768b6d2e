"""Leases: only the current lease holder can complete, fail or report progress (calls
without a lease, an operator's, are not fenced); leases are renewed and handed back,
a task handed back keeps its place in the queue, and an expired lease is rescued by
consuming a retry, or failing the task when none is left."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from backends import instant
from repository_harness import Repo, claim
from sqlalchemy import text
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import LeaseLostError, TaskStatus


def test_a_stale_lease_cannot_complete_fail_or_report_progress(
    repo: Repo, session: Session
) -> None:
    repo.enqueue("a", {})
    session.commit()
    stale = claim(repo)
    # the lease expires and the task is rescued, then claimed again
    session.execute(
        text(f"UPDATE {repo.model.__tablename__} SET lease_expires_at = {instant(session, -1)}")
    )
    session.commit()
    assert repo.rescue_expired_leases() == {stale.id: TaskStatus.PENDING}
    session.commit()  # a rescued task is due at once
    current = claim(repo)
    assert current.id == stale.id and current.lease_token != stale.lease_token

    with pytest.raises(LeaseLostError, match="no longer current"):
        repo.complete_task(stale.id, result={"stale": True}, lease_token=stale.lease_token)
    with pytest.raises(LeaseLostError):
        repo.fail_task(stale.id, "stale failure", lease_token=stale.lease_token)
    with pytest.raises(LeaseLostError):
        repo.update_progress(stale.id, 99, lease_token=stale.lease_token)
    stored = repo.get_task(stale.id)
    assert stored is not None
    assert stored.status is TaskStatus.IN_PROGRESS and stored.progress == 0
    assert stored.result is None and stored.lease_token == current.lease_token

    repo.complete_task(current.id, result={"ok": True}, lease_token=current.lease_token)
    session.commit()
    stored = repo.get_task(current.id)
    assert stored is not None and stored.result == {"ok": True}


def test_operator_calls_without_a_lease_are_not_fenced(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {})
    session.commit()
    task = claim(repo)
    repo.complete_task(task.id, result="done by hand")
    stored = repo.get_task(task.id)
    assert stored is not None and stored.status is TaskStatus.COMPLETED


def test_renew_and_release_leases(repo: Repo, session: Session) -> None:
    repo.enqueue_many("a", [{}, {}])
    session.commit()
    first, second = repo.dequeue_many("a", limit=2, lease_duration=timedelta(seconds=5))
    session.commit()
    renewed = repo.renew_leases(
        [(first.id, first.lease_token), (second.id, uuid.uuid4())],
        lease_duration=timedelta(minutes=2),
    )
    session.commit()
    assert renewed == {first.id}
    stored = repo.get_task(first.id)
    assert stored is not None and stored.lease_expires_at > first.lease_expires_at  # type: ignore[operator]
    assert repo.renew_leases([]) == set()
    with pytest.raises(TypeError, match="pairs"):
        repo.renew_leases([first.id])  # type: ignore[list-item]

    released = repo.release_tasks([(first.id, first.lease_token), (second.id, second.lease_token)])
    session.commit()
    assert released == {first.id, second.id}
    for task_id in released:
        stored = repo.get_task(task_id)
        assert stored is not None
        assert stored.status is TaskStatus.PENDING and stored.retry_count == 0
        assert stored.lease_token is None and stored.started_at is None
        assert stored.run_at == {first.id: first, second.id: second}[task_id].run_at


def test_a_handed_back_task_keeps_its_place_in_the_queue(repo: Repo, session: Session) -> None:
    first = repo.enqueue("a", {})
    session.commit()
    task = claim(repo, "a")
    waiting = repo.enqueue("a", {})  # enqueued after ``first`` was claimed
    session.commit()
    assert repo.release_tasks([(task.id, task.lease_token)]) == {first}
    session.commit()
    # untouched but for the claim: due at once, ahead of a task enqueued after it
    assert [claimed.id for claimed in repo.dequeue_many("a", limit=2)] == [first, waiting]


def test_rescue_consumes_a_retry_or_fails(repo: Repo, session: Session) -> None:
    keep = repo.enqueue("a", {}, max_retries=1)
    last = repo.enqueue("a", {}, max_retries=0)
    healthy = repo.enqueue("a", {})
    session.commit()
    claimed = repo.dequeue_many("a", limit=3)
    session.commit()
    assert {task.id for task in claimed} == {keep, last, healthy}
    waiting = repo.enqueue("a", {})  # enqueued after ``keep`` was claimed
    session.commit()
    session.execute(
        text(
            f"UPDATE {repo.model.__tablename__} SET lease_expires_at = {instant(session, -1)} "
            f"WHERE id IN ({keep}, {last})"
        )
    )
    session.commit()
    rescued = repo.rescue_expired_leases()
    session.commit()
    assert rescued == {keep: TaskStatus.PENDING, last: TaskStatus.FAILED}
    kept = repo.get_task(keep)
    assert (
        kept is not None and kept.retry_count == 1 and "lease expired" in (kept.error_message or "")
    )
    # due at once, in its old place: ahead of a task enqueued after it
    assert [task.id for task in repo.dequeue_many("a", limit=2)] == [keep, waiting]
    session.rollback()
    still = repo.get_task(healthy)
    assert still is not None and still.status is TaskStatus.IN_PROGRESS
    assert repo.rescue_expired_leases() == {}
