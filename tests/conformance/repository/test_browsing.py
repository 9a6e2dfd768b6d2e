"""Reading tasks for people: ``browse_tasks`` (a page of tasks by filter, newest first,
with a keyset cursor) and ``outcome_timeline`` (outcomes per stretch of time)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from backends import instant
from repository_harness import Repo, claim
from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskNotFoundError, TaskRepository, TaskStatus


def failed(repo: Repo, task_type: str = "email") -> int:
    task_id = repo.enqueue(task_type, {})
    task = claim(repo, task_type)
    assert task.id == task_id
    repo.fail_task(task_id, "boom", lease_token=task.lease_token, retry=False)
    repo.session.commit()
    return int(task_id)


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [row["id"] for row in rows]


def test_newest_first_with_every_column(repo: Repo) -> None:
    first = repo.enqueue("email", {"n": 1})
    second = repo.enqueue("report", {"n": 2}, priority=3)
    repo.session.commit()
    rows = repo.browse_tasks()
    assert ids(rows) == [second, first]
    assert rows[0]["payload"] == {"n": 2} and rows[0]["priority"] == 3
    assert rows[0]["status"] == TaskStatus.PENDING


def test_filters_each_narrow_the_page(repo: Repo) -> None:
    bad = failed(repo, "email")
    email = repo.enqueue("email", {})
    report = repo.enqueue("report", {})
    keyed, _ = repo.enqueue_if_not_exists("sync", {}, dedupe_key="customer-7")
    repo.session.commit()
    assert ids(repo.browse_tasks(status="failed")) == [bad]
    assert ids(repo.browse_tasks(status=["pending", TaskStatus.FAILED])) == [
        keyed,
        report,
        email,
        bad,
    ]
    assert ids(repo.browse_tasks(task_type="email")) == [email, bad]
    assert ids(repo.browse_tasks(task_type="email", status="pending")) == [email]
    assert ids(repo.browse_tasks(search="customer-7")) == [keyed]
    assert ids(repo.browse_tasks(search=str(report))) == [report]
    assert ids(repo.browse_tasks(columns={"type": "report"})) == [report]
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert repo.browse_tasks(created_after=later) == []
    assert len(repo.browse_tasks(created_before=later)) == 4


def test_pages_by_keyset(repo: Repo) -> None:
    made = repo.enqueue_many("bulk", [{"n": n} for n in range(7)])
    repo.session.commit()
    first = repo.browse_tasks(limit=3)
    second = repo.browse_tasks(limit=3, before_id=first[-1]["id"])
    third = repo.browse_tasks(limit=3, before_id=second[-1]["id"])
    assert ids(first) + ids(second) + ids(third) == sorted(made, reverse=True)
    assert len(third) == 1


def test_browsing_locks_nothing(repo: Repo, session_factory: sessionmaker[Session]) -> None:
    task_id = repo.enqueue("email", {})
    repo.session.commit()
    assert ids(repo.browse_tasks()) == [task_id]
    # the browsing transaction is still open: a claim elsewhere (SKIP LOCKED, so it
    # would pass a locked row by) still gets the task
    with session_factory() as other:
        claimed = TaskRepository(other, repo.model).dequeue("email")
        assert claimed is not None and claimed.id == task_id
        other.rollback()


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"status": "lost"}, ValueError, "status must be among"),
        ({"status": ["pending", "nope"]}, ValueError, "status must be among"),
        ({"task_type": ""}, ValueError, "task_type"),
        ({"created_after": datetime(2026, 1, 1)}, TypeError, "timezone-aware"),
        ({"created_before": "2026-01-01"}, TypeError, "timezone-aware"),
        (
            {
                "created_after": datetime(2026, 2, 1, tzinfo=timezone.utc),
                "created_before": datetime(2026, 1, 1, tzinfo=timezone.utc),
            },
            ValueError,
            "must be before",
        ),
        ({"columns": {"nope": 1}}, ValueError, "has no column 'nope'"),
        ({"search": " "}, ValueError, "search must be a non-empty string"),
        ({"search": "a\x00b"}, ValueError, "NUL"),
        ({"before_id": 0}, ValueError, "before_id must be >= 1"),
        ({"before_id": True}, TypeError, "not a bool"),
        ({"limit": 0}, ValueError, "limit must be >= 1"),
        ({"limit": 1001}, ValueError, "limit must be <= 1000"),
    ],
)
def test_bad_browse_arguments_are_refused(
    repo: Repo, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        repo.browse_tasks(**arguments)


def test_the_timeline_counts_outcomes_per_bucket(repo: Repo) -> None:
    done = repo.enqueue("email", {})
    task = claim(repo, "email")
    repo.complete_task(done, lease_token=task.lease_token)
    repo.session.commit()
    failed(repo)
    bars = repo.outcome_timeline(timedelta(hours=1), timedelta(minutes=5))
    assert len(bars) == 12
    assert [b.start for b in bars] == sorted(b.start for b in bars)
    assert all(b.start - a.start == timedelta(minutes=5) for a, b in itertools.pairwise(bars))
    assert (bars[-1].completed, bars[-1].failed) == (1, 1)
    assert sum(b.completed + b.failed for b in bars[:-1]) == 0


@pytest.mark.parametrize(
    ("window", "bucket", "message"),
    [
        (timedelta(0), timedelta(minutes=1), "window"),
        (timedelta(hours=1), timedelta(0), "bucket"),
        (timedelta(hours=1), timedelta(milliseconds=1500), "whole number of seconds"),
        (timedelta(days=30), timedelta(seconds=1), "at most 1000 buckets"),
    ],
)
def test_bad_timeline_arguments_are_refused(
    repo: Repo, window: timedelta, bucket: timedelta, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        repo.outcome_timeline(window, bucket)


def test_recent_counts_cover_running_tasks_and_recent_outcomes(repo: Repo) -> None:
    old = failed(repo)
    recent = failed(repo)
    running = repo.enqueue("email", {})
    assert claim(repo, "email").id == running
    repo.enqueue("email", {})  # pending: counted by queue_depth, not here
    table = repo.model.__table__
    repo.session.execute(
        update(table)
        .where(table.c.id == old)
        .values(completed_at=text(instant(repo.session, -2 * 86400)))
    )
    repo.session.commit()
    counts = {(c.task_type, c.status): c.count for c in repo.recent_status_counts()}
    assert counts == {("email", TaskStatus.FAILED): 1, ("email", TaskStatus.IN_PROGRESS): 1}
    assert recent != old
    week = {(c.task_type, c.status): c.count for c in repo.recent_status_counts(timedelta(days=7))}
    assert week[("email", TaskStatus.FAILED)] == 2
    with pytest.raises(ValueError, match="window"):
        repo.recent_status_counts(timedelta(0))


def test_retry_failed_tasks_takes_the_browse_filters(repo: Repo) -> None:
    old = failed(repo, "report")
    recent = failed(repo, "report")
    other_type = failed(repo, "email")
    table = repo.model.__table__
    repo.session.execute(
        update(table)
        .where(table.c.id == old)
        .values(created_at=text(instant(repo.session, -2 * 86400)))
    )
    repo.session.commit()
    since = datetime.now(timezone.utc) - timedelta(days=1)
    assert repo.retry_failed_tasks("report", created_after=since) == 1
    repo.session.commit()
    statuses = {row["id"]: row["status"] for row in repo.browse_tasks()}
    assert statuses == {
        old: TaskStatus.FAILED,
        recent: TaskStatus.PENDING,
        other_type: TaskStatus.FAILED,
    }
    assert repo.retry_failed_tasks(created_before=since) == 1  # the old one
    assert repo.retry_failed_tasks(columns={"type": "email"}) == 1
    with pytest.raises(ValueError, match="has no column"):
        repo.retry_failed_tasks(columns={"nope": 1})


def test_discard_deletes_finished_tasks_only(repo: Repo) -> None:
    done = failed(repo)
    waiting = repo.enqueue("email", {})
    repo.session.commit()
    assert repo.discard_task(done) is True
    assert repo.get_task(done) is None
    assert repo.discard_task(waiting) is False  # pending: cancel it first
    assert repo.get_task(waiting) is not None
    with pytest.raises(TaskNotFoundError):
        repo.discard_task(done)
    with pytest.raises(ValueError, match="task_id"):
        repo.discard_task(0)
