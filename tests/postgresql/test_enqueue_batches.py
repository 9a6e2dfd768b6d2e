"""Enqueueing in bulk on PostgreSQL: ``enqueue_many`` sends its payloads as JSON array
texts that the server unpacks, split so that no text passes a single ``jsonb`` value's
limit."""

from __future__ import annotations

import pytest
from repository_harness import Repo
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue.backends.postgresql import _backend


def test_enqueue_many_splits_huge_batches(
    repo: Repo, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_backend, "_MAX_BATCH_CHARACTERS", 40)  # a few payloads each
    payloads = [{"n": n, "pad": "x" * 10} for n in range(10)]
    ids = repo.enqueue_many("a", payloads)
    session.commit()
    assert ids == sorted(ids) and len(set(ids)) == 10
    assert [repo.get_task(task_id).payload for task_id in ids] == payloads  # type: ignore[union-attr]
