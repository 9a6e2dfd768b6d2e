"""Operators' actions on tasks: ``cancel_task`` cancels a pending or running task (a
running one's lease revoked, so its worker's later writes are refused);
``retry_task`` and ``retry_failed_tasks`` put failed tasks back in the queue, due at
once, but never beside an active task with the same dedupe key."""

from __future__ import annotations

import pytest
from repository_harness import Repo, claim
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import InvalidTransitionError, LeaseLostError, TaskStatus


def test_cancel_task_cancels_a_pending_task_once(repo: Repo, session: Session) -> None:
    pending = repo.enqueue("a", {})
    session.commit()
    assert repo.cancel_task(pending) is True
    assert repo.cancel_task(pending) is False  # finished: a clear no-op
    session.commit()
    cancelled = repo.get_task(pending)
    assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
    assert cancelled.completed_at is not None
    assert repo.dequeue("a") is None


def test_cancelling_a_running_task_revokes_its_lease(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {}, max_retries=5)
    session.commit()
    task = claim(repo, "a")
    token = task.lease_token
    assert repo.cancel_task(task_id) is True
    session.commit()
    stored = repo.get_task(task_id)
    assert stored is not None and stored.status is TaskStatus.CANCELLED
    assert (stored.lease_token, stored.lease_expires_at) == (None, None)
    assert stored.completed_at is not None
    # the worker that held it: every write with its lease is refused, nothing changes
    with pytest.raises(LeaseLostError):
        repo.complete_task(task_id, result={"late": True}, lease_token=token)
    with pytest.raises(LeaseLostError):
        repo.fail_task(task_id, "late failure", lease_token=token)
    with pytest.raises(LeaseLostError):
        repo.update_progress(task_id, 90, lease_token=token)
    session.rollback()
    assert repo.complete_tasks([(task_id, token, None)]) == set()
    assert repo.renew_leases([(task_id, token)]) == set()
    session.commit()
    after = repo.get_task(task_id)
    assert after is not None
    assert (after.status, after.result, after.retry_count) == (TaskStatus.CANCELLED, None, 0)
    assert repo.dequeue("a") is None  # not retried
    assert repo.cancel_task(task_id) is False


def test_cancelling_a_finished_task_is_a_no_op(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    task = claim(repo, "a")
    repo.complete_task(task_id, lease_token=task.lease_token)
    session.commit()
    assert repo.cancel_task(task_id) is False
    assert repo.get_task(task_id).status is TaskStatus.COMPLETED  # type: ignore[union-attr]


def test_retry_task_requeues_a_failed_task(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {}, max_retries=0)
    session.commit()
    task = claim(repo)
    repo.fail_task(task.id, "boom")
    session.commit()
    repo.retry_task(task_id)
    session.commit()
    stored = repo.get_task(task_id)
    assert stored is not None
    assert stored.status is TaskStatus.PENDING and stored.retry_count == 0
    assert stored.completed_at is None
    assert claim(repo, "a").id == task_id  # due at once
    with pytest.raises(InvalidTransitionError, match="failed"):
        repo.retry_task(task_id)


def test_retry_never_duplicates_an_active_deduplicated_task(repo: Repo, session: Session) -> None:
    first, _ = repo.enqueue_if_not_exists("import", {"file": "a.csv"}, max_retries=0)
    session.commit()
    task = claim(repo, "import")
    repo.fail_task(task.id, "boom")
    session.commit()
    active, created = repo.enqueue_if_not_exists("import", {"file": "a.csv"})
    session.commit()
    assert created and active != first
    with pytest.raises(InvalidTransitionError, match=f"task {active} with the same dedupe key"):
        repo.retry_task(first)
    assert repo.retry_failed_tasks() == 0
    session.commit()  # the transaction is still usable: nothing was attempted in the database
    assert repo.get_task(first).status is TaskStatus.FAILED  # type: ignore[union-attr]


def test_retrying_an_active_deduplicated_task_names_its_status_not_itself(
    repo: Repo, session: Session
) -> None:
    running, _ = repo.enqueue_if_not_exists("import", {"file": "a.csv"}, max_retries=0)
    session.commit()
    assert claim(repo, "import").id == running
    pending, _ = repo.enqueue_if_not_exists("import", {"file": "b.csv"})
    session.commit()
    for task_id, status in ((pending, "pending"), (running, "in_progress")):
        with pytest.raises(InvalidTransitionError, match=f"it is {status}, not failed") as caught:
            repo.retry_task(task_id)
        assert "dedupe key" not in str(caught.value)
    repo.fail_task(running, "boom")
    session.commit()
    repo.retry_task(running)  # no other task holds its key
    session.commit()
    assert repo.get_task(running).status is TaskStatus.PENDING  # type: ignore[union-attr]


def test_retry_failed_tasks_retries_one_of_several_sharing_a_dedupe_key(
    repo: Repo, session: Session
) -> None:
    first, _ = repo.enqueue_if_not_exists("import", {"file": "a.csv"}, max_retries=0)
    session.commit()
    repo.fail_task(claim(repo, "import").id, "boom")
    second, _ = repo.enqueue_if_not_exists("import", {"file": "a.csv"}, max_retries=0)
    session.commit()
    repo.fail_task(claim(repo, "import").id, "boom again")
    session.commit()
    assert repo.retry_failed_tasks() == 1
    session.commit()
    statuses = sorted(repo.get_task(i).status for i in (first, second))  # type: ignore[union-attr]
    assert statuses == [TaskStatus.FAILED, TaskStatus.PENDING]


def test_retry_failed_tasks_never_confuses_a_task_id_with_a_dedupe_key(
    repo: Repo, session: Session
) -> None:
    plain = repo.enqueue("import", {"n": 1}, max_retries=0)
    keyed, _ = repo.enqueue_if_not_exists("import", {"n": 2}, dedupe_key=str(plain), max_retries=0)
    session.commit()
    for task in repo.dequeue_many("import", limit=2):
        repo.fail_task(task.id, "boom")
    session.commit()
    assert repo.retry_failed_tasks() == 2
    session.commit()
    assert {repo.get_task(i).status for i in (plain, keyed)} == {TaskStatus.PENDING}  # type: ignore[union-attr]


def test_retry_failed_tasks_in_bulk(repo: Repo, session: Session) -> None:
    ids = repo.enqueue_many("a", [{}, {}, {}], max_retries=0)
    other = repo.enqueue("b", {}, max_retries=0)
    session.commit()
    for task in repo.dequeue_many(limit=10):
        repo.fail_task(task.id, "x")
    session.commit()
    assert repo.retry_failed_tasks("a") == 3
    assert repo.retry_failed_tasks() == 1
    session.commit()
    statuses = {repo.get_task(task_id).status for task_id in [*ids, other]}  # type: ignore[union-attr]
    assert statuses == {TaskStatus.PENDING}
