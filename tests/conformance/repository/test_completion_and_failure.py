"""Outcomes written through the repository: ``complete_task`` stores the result and
finishes a task in progress; ``fail_task`` schedules a retry with backoff (``run_at``
in the future, never a sleep) while retries remain, else fails the task for good;
both refuse a task that is not in progress, and bad arguments."""

from __future__ import annotations

from typing import Any

import pytest
from backends import instant
from repository_harness import Repo, claim, db_now
from sqlalchemy import text
from sqlalchemy.orm import Session
from twins import make_repository

from sqlalchemy_taskqueue import BackoffPolicy, InvalidTransitionError, TaskStatus


def test_complete_task_stores_result_and_finishes(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {})
    session.commit()
    task = claim(repo)
    repo.complete_task(
        task.id, result={"url": "s3://x.csv", "rows": 3}, lease_token=task.lease_token
    )
    session.commit()
    stored = repo.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETED and stored.progress == 100
    assert stored.completed_at is not None and stored.result == {"url": "s3://x.csv", "rows": 3}
    assert stored.lease_expires_at is None


def test_complete_task_requires_in_progress(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    with pytest.raises(InvalidTransitionError, match="pending"):
        repo.complete_task(task_id)
    with pytest.raises(TypeError, match="result"):
        repo.complete_task(task_id, result=object())
    stored = repo.get_task(task_id)
    assert stored is not None and stored.status is TaskStatus.PENDING


def test_fail_task_retries_with_backoff_then_fails(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {}, max_retries=2)
    session.commit()
    expected_delays = [2.0, 4.0]
    for attempt, delay in enumerate(expected_delays, start=1):
        task = claim(repo)
        before = db_now(session)
        status = repo.fail_task(task.id, f"boom {attempt}", lease_token=task.lease_token)
        session.commit()
        assert status is TaskStatus.PENDING
        stored = repo.get_task(task_id)
        assert stored is not None
        assert stored.retry_count == attempt and stored.started_at is None
        assert stored.error_message == f"boom {attempt}"
        wait = (stored.run_at - before).total_seconds()
        assert delay - 0.5 <= wait <= delay * 1.25 + 0.5
        assert repo.dequeue("a") is None  # backoff: not claimable yet
        session.rollback()
        session.execute(text(f"UPDATE {repo.model.__tablename__} SET run_at = {instant(session)}"))
        session.commit()
    task = claim(repo)
    assert repo.fail_task(task.id, "final", lease_token=task.lease_token) is TaskStatus.FAILED
    session.commit()
    stored = repo.get_task(task_id)
    assert stored is not None
    assert stored.status is TaskStatus.FAILED and stored.error_message == "final"
    assert stored.completed_at is not None and stored.retry_count == 3


def test_max_retries_zero_fails_at_once(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {}, max_retries=0)
    session.commit()
    task = claim(repo)
    assert repo.fail_task(task.id, "no second chance") is TaskStatus.FAILED


def test_fail_task_without_retry_fails_permanently(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {}, max_retries=5)
    session.commit()
    task = claim(repo)
    assert repo.fail_task(task.id, "bad input", retry=False) is TaskStatus.FAILED


def test_backoff_policy_is_configurable(session: Session, clean_table: type[Any]) -> None:
    repo = make_repository(
        session, clean_table, backoff=BackoffPolicy(base_seconds=10, cap_seconds=15, jitter=0)
    )
    repo.enqueue("a", {})
    session.commit()
    task = claim(repo)
    before = db_now(session)
    repo.fail_task(task.id, "x")
    session.commit()
    stored = repo.get_task(task.id)
    assert stored is not None
    # 10 * 2**1 = 20 s, capped at 15 s, no jitter
    assert 14.5 <= (stored.run_at - before).total_seconds() <= 15.5


def test_fail_task_validates_arguments(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {})
    session.commit()
    task = claim(repo)
    with pytest.raises(TypeError, match="error_message"):
        repo.fail_task(task.id, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lease_token"):
        repo.fail_task(task.id, "x", lease_token="not-a-uuid")  # type: ignore[arg-type]
    for message in ("nul\x00byte", "lone \ud800 surrogate"):
        with pytest.raises(ValueError, match="error_message"):
            repo.fail_task(task.id, message, lease_token=task.lease_token)
    stored = repo.get_task(task.id)  # the transaction is still usable: nothing was sent
    assert stored is not None and stored.status is TaskStatus.IN_PROGRESS
    assert stored.retry_count == 0


def test_fail_task_requires_in_progress(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    with pytest.raises(InvalidTransitionError, match="pending"):
        repo.fail_task(task_id, "x")
