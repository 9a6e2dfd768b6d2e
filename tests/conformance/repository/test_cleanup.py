"""``cleanup_old_tasks``: deletes the finished tasks (completed, failed, cancelled) older
than the given age, in batches, and never an active one, however old."""

from __future__ import annotations

from datetime import timedelta

import pytest
from backends import instant
from repository_harness import Repo
from sqlalchemy import select, text
from sqlalchemy.orm import Session

DAY = 24 * 60 * 60


def test_cleanup_deletes_only_old_finished_tasks(repo: Repo, session: Session) -> None:
    table = repo.model.__tablename__
    ids = repo.enqueue_many("a", [{"n": n} for n in range(7)])
    session.commit()
    claimed = repo.dequeue_many("a", limit=5)
    repo.complete_task(claimed[0].id)
    repo.complete_task(claimed[1].id)
    repo.fail_task(claimed[2].id, "x", retry=False)
    repo.cancel_task(ids[6])
    repo.complete_task(claimed[3].id)  # finished, but recently
    session.commit()
    old = [claimed[0].id, claimed[1].id, claimed[2].id, ids[6]]
    session.execute(
        text(
            f"UPDATE {table} SET completed_at = {instant(session, -8 * DAY)}, "
            f"created_at = {instant(session, -9 * DAY)} "
            f"WHERE id IN ({', '.join(map(str, old))})"
        )
    )
    # an old task that is still active must survive
    session.execute(
        text(f"UPDATE {table} SET created_at = {instant(session, -30 * DAY)} WHERE id = {ids[5]}")
    )
    session.commit()
    assert repo.cleanup_old_tasks(timedelta(days=7), batch_size=3) == 4
    session.commit()
    remaining = set(session.scalars(select(repo.model.id)))
    assert remaining == {claimed[3].id, claimed[4].id, ids[5]}
    with pytest.raises(TypeError, match="timedelta"):
        repo.cleanup_old_tasks(7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        repo.cleanup_old_tasks(timedelta(days=-1))
    with pytest.raises(ValueError, match="batch_size"):
        repo.cleanup_old_tasks(timedelta(days=1), batch_size=0)
