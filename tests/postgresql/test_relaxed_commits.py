"""Asynchronous commit (``synchronous_commit = off``): a relaxed claim or progress write
skips the wait for the WAL flush, for its own transaction only."""

from __future__ import annotations

import uuid

import pytest
from repository_harness import Repo, claim
from sqlalchemy import text
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import LeaseLostError


def test_a_relaxed_claim_skips_the_flush_wait_for_its_transaction_only(
    repo: Repo, session: Session
) -> None:
    repo.enqueue_many("a", [{}, {}])
    session.commit()
    assert len(repo.dequeue_many("a", limit=1)) == 1
    assert session.scalar(text("SHOW synchronous_commit")) == "on"
    session.commit()
    assert len(repo.dequeue_many("a", limit=1, relaxed_commit=True)) == 1
    assert session.scalar(text("SHOW synchronous_commit")) == "off"
    session.commit()
    assert session.scalar(text("SHOW synchronous_commit")) == "on"  # the next transaction
    with pytest.raises(TypeError, match="relaxed_commit"):
        repo.dequeue_many("a", limit=1, relaxed_commit="yes")  # type: ignore[arg-type]


def test_a_relaxed_progress_write_skips_the_flush_wait_for_its_transaction_only(
    repo: Repo, session: Session
) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    task = claim(repo, "a")
    repo.update_progress(task_id, 10, lease_token=task.lease_token)
    assert session.scalar(text("SHOW synchronous_commit")) == "on"
    session.commit()
    repo.update_progress(task_id, 20, lease_token=task.lease_token, relaxed_commit=True)
    assert session.scalar(text("SHOW synchronous_commit")) == "off"
    session.commit()
    assert session.scalar(text("SHOW synchronous_commit")) == "on"  # the next transaction
    repo.update_progress(task_id, 30, relaxed_commit=True)  # unfenced, by an operator
    session.commit()
    assert repo.get_task(task_id).progress == 30
    with pytest.raises(TypeError, match="relaxed_commit"):
        repo.update_progress(task_id, 40, relaxed_commit=1)  # type: ignore[arg-type]
    with pytest.raises(LeaseLostError):
        repo.update_progress(task_id, 40, lease_token=uuid.uuid4(), relaxed_commit=True)
    session.commit()
    assert repo.get_task(task_id).progress == 30
