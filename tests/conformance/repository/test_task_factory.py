"""``sqlalchemy_taskqueue.contrib.testing.task_factory``: task rows for an app's own tests, each
as the queue would have left it in its status."""

from __future__ import annotations

from datetime import timedelta

from repository_harness import Repo, claim
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import TaskStatus
from sqlalchemy_taskqueue.contrib.testing import task_factory


def test_task_factory_builds_rows_for_tests(repo: Repo, session: Session) -> None:
    factory = task_factory(repo.model, session)
    made = factory.create_batch(3, type="email")
    failed = factory(status=TaskStatus.FAILED, error_message="boom")
    assert [task.type for task in made] == ["email"] * 3
    assert repo.get_task(failed.id).status is TaskStatus.FAILED  # type: ignore[union-attr]
    assert claim(repo, "email").id == made[0].id
    # each row as the queue would have left it in its status
    running = factory(status=TaskStatus.IN_PROGRESS)
    done = factory(status=TaskStatus.COMPLETED)
    assert made[1].started_at is None and made[1].completed_at is None
    assert running.started_at is not None and running.completed_at is None
    assert running.lease_token is not None and running.lease_expires_at is not None
    assert (done.progress, failed.progress) == (100, 0)
    assert repo.rescue_expired_leases() == {}  # the lease is current
    failed_id, running_id = failed.id, running.id
    session.commit()  # cleanup compares with the time its own transaction started
    assert repo.cleanup_old_tasks(timedelta(0)) == 2  # the failed and the completed row
    assert repo.get_task(failed_id) is None and repo.get_task(running_id) is not None
