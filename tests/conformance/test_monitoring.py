"""The monitoring queries against a queue in a known state.  (How PostgreSQL plans
them: ``tests/postgresql/test_query_plans.py``.)"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from backends import instant
from sqlalchemy import text
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import TaskRepository, TaskStatus
from sqlalchemy_taskqueue.monitoring import QueueDepth, StatusCount

Repo = TaskRepository[Any]


@pytest.fixture
def populated(repo: Repo, session: Session) -> dict[str, int]:
    """export: 2 ready, 1 scheduled, 2 completed (1 after a retry), 1 failed, 1 running;
    email: 1 ready, 1 cancelled."""
    table = repo.model.__tablename__
    ids = {
        "ready_old": repo.enqueue("export", {"n": 1}),
        "ready_new": repo.enqueue("export", {"n": 2}),
        "scheduled": repo.enqueue("export", {"n": 3}, run_at=timedelta(hours=1)),
        "done": repo.enqueue("export", {"n": 4}, priority=-10),
        "done_retried": repo.enqueue("export", {"n": 5}, priority=-9),
        "failed": repo.enqueue("export", {"n": 6}, priority=-8, max_retries=0),
        "running": repo.enqueue("export", {"n": 7}, priority=-7),
        "email": repo.enqueue("email", {}),
        "cancelled": repo.enqueue("email", {"x": 1}),
    }
    session.commit()
    claimed = {task.id: task for task in repo.dequeue_many("export", limit=4)}
    assert set(claimed) == {ids["done"], ids["done_retried"], ids["failed"], ids["running"]}
    repo.complete_task(ids["done"])
    repo.complete_task(ids["done_retried"])
    repo.fail_task(ids["failed"], "KeyError: 'project_id'")
    repo.cancel_task(ids["cancelled"])
    session.execute(
        text(
            f"UPDATE {table} SET retry_count = 1, "
            f"started_at = {instant(session, -4, base='completed_at')} "
            f"WHERE id = {ids['done_retried']}"
        )
    )
    session.execute(
        text(
            f"UPDATE {table} SET started_at = {instant(session, -2, base='completed_at')} "
            f"WHERE id = {ids['done']}"
        )
    )
    session.execute(
        text(f"UPDATE {table} SET run_at = {instant(session, -600)} WHERE id = {ids['ready_old']}")
    )
    session.commit()
    return ids


def test_status_counts(repo: Repo, populated: dict[str, int]) -> None:
    assert repo.status_counts() == [
        StatusCount("email", TaskStatus.CANCELLED, 1),
        StatusCount("email", TaskStatus.PENDING, 1),
        StatusCount("export", TaskStatus.COMPLETED, 2),
        StatusCount("export", TaskStatus.FAILED, 1),
        StatusCount("export", TaskStatus.IN_PROGRESS, 1),
        StatusCount("export", TaskStatus.PENDING, 3),
    ]


def test_queue_depth_and_oldest_age(repo: Repo, populated: dict[str, int]) -> None:
    depth = {item.task_type: item for item in repo.queue_depth()}
    assert set(depth) == {"email", "export"}
    assert (depth["export"].ready, depth["export"].scheduled) == (2, 1)
    assert 600 <= depth["export"].oldest_ready_seconds < 700
    assert isinstance(depth["email"], QueueDepth) and depth["email"].ready == 1


def test_stuck_tasks(repo: Repo, session: Session, populated: dict[str, int]) -> None:
    assert repo.stuck_tasks(timedelta(hours=1)) == []
    table = repo.model.__tablename__
    session.execute(
        text(
            f"UPDATE {table} SET started_at = {instant(session, -7200)} "
            f"WHERE id = {populated['running']}"
        )
    )
    session.commit()
    [stuck] = repo.stuck_tasks(timedelta(hours=1))
    assert (stuck.id, stuck.task_type, stuck.lease_expired) == (
        populated["running"],
        "export",
        False,
    )
    session.execute(
        text(
            f"UPDATE {table} SET started_at = {instant(session)}, "
            f"lease_expires_at = {instant(session, -1)}"
        )
    )
    session.commit()
    [expired] = repo.stuck_tasks(timedelta(hours=1))
    assert expired.lease_expired
    with pytest.raises(ValueError, match="running_longer_than"):
        repo.stuck_tasks(timedelta(0))
    with pytest.raises(ValueError, match="limit"):
        repo.stuck_tasks(limit=0)


def test_processing_times(repo: Repo, populated: dict[str, int]) -> None:
    [times] = repo.processing_times(timedelta(hours=1))
    assert (times.task_type, times.completed) == ("export", 2)
    assert times.average_seconds == pytest.approx(3.0, abs=0.01)
    assert times.p95_seconds == pytest.approx(3.9, abs=0.01)
    with pytest.raises(TypeError, match="window"):
        repo.processing_times(3600)  # type: ignore[arg-type]


def test_outcome_rates(repo: Repo, populated: dict[str, int]) -> None:
    rates = {rate.task_type: rate for rate in repo.outcome_rates(timedelta(hours=1))}
    export = rates["export"]
    assert (export.completed, export.failed, export.cancelled, export.retried) == (2, 1, 0, 1)
    assert export.success_rate == pytest.approx(2 / 3)
    assert export.failure_rate == pytest.approx(1 / 3)
    assert export.retry_rate == pytest.approx(1 / 3)
    assert export.throughput_per_minute == pytest.approx(2 / 60)
    assert rates["email"].cancelled == 1 and rates["email"].success_rate == 0.0


def test_recent_failures(repo: Repo, populated: dict[str, int]) -> None:
    [failure] = repo.recent_failures()
    assert (failure.id, failure.error_message) == (populated["failed"], "KeyError: 'project_id'")
    assert repo.recent_failures(task_type="email") == []
    with pytest.raises(ValueError, match="limit"):
        repo.recent_failures(limit=0)


def test_queue_stats_is_json_ready(repo: Repo, populated: dict[str, int]) -> None:
    snapshot = json.loads(json.dumps(repo.queue_stats().as_dict()))
    assert {"status_counts", "queue_depth", "processing_times", "outcome_rates", "stuck"} <= set(
        snapshot
    )
    export = next(rate for rate in snapshot["outcome_rates"] if rate["task_type"] == "export")
    assert export["retry_rate"] == pytest.approx(1 / 3)


def test_a_limit_beyond_bigint_is_refused_and_the_callers_work_survives(
    repo: Repo, session: Session
) -> None:
    """A limit PostgreSQL cannot take is a ValueError raised before any SQL: sent to the
    server it aborted the caller's transaction, and the task enqueued in it was silently
    rolled back by the next commit."""
    task_id = repo.enqueue("export", {})
    with pytest.raises(ValueError, match="limit"):
        repo.recent_failures(limit=2**63)
    with pytest.raises(ValueError, match="limit"):
        repo.stuck_tasks(limit=2**63)
    session.commit()
    session.expire_all()
    assert repo.get_task(task_id) is not None
