"""Pausing claims: ``pause(task_type)`` stops claims of a type, ``pause()`` of every
type, until ``resume``; enqueueing goes on and nothing else changes."""

from __future__ import annotations

import pytest
from backends import only_on
from repository_harness import Repo, claim
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskRepository, TaskStatus


def test_a_paused_type_is_not_claimed_until_resumed(repo: Repo, session: Session) -> None:
    export = repo.enqueue("export", {})
    email = repo.enqueue("email", {})
    repo.pause("export")
    session.commit()
    assert repo.paused() == ["export"]
    assert repo.dequeue("export") is None
    assert claim(repo).id == email  # any type: the others go on
    assert repo.dequeue() is None
    later = repo.enqueue("export", {})  # enqueueing goes on
    repo.resume("export")
    session.commit()
    assert repo.paused() == []
    assert [claim(repo).id, claim(repo).id] == [export, later]


def test_pausing_the_whole_queue_stops_every_claim(repo: Repo, session: Session) -> None:
    ids = [repo.enqueue(task_type, {}) for task_type in ("export", "email")]
    repo.pause()
    session.commit()
    assert repo.paused() == ["*"]
    assert repo.dequeue() is None and repo.dequeue("email") is None
    assert repo.dequeue_many(limit=10) == []
    repo.resume()
    session.commit()
    assert sorted(task.id for task in repo.dequeue_many(limit=10)) == ids


def test_a_type_paused_on_its_own_stays_paused_when_the_queue_resumes(
    repo: Repo, session: Session
) -> None:
    repo.enqueue("export", {})
    email = repo.enqueue("email", {})
    repo.pause("export")
    repo.pause()
    repo.pause()  # pausing what is paused changes nothing
    session.commit()
    assert repo.paused() == ["*", "export"]
    repo.resume()
    session.commit()
    assert repo.paused() == ["export"]
    assert claim(repo).id == email
    assert repo.dequeue() is None


def test_a_pause_leaves_running_tasks_alone(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("export", {})
    session.commit()
    task = claim(repo, "export")
    repo.pause("export")
    session.commit()
    repo.complete_task(task_id, result={"ok": True}, lease_token=task.lease_token)
    session.commit()
    assert repo.get_task(task_id).status is TaskStatus.COMPLETED  # type: ignore[union-attr]


@only_on("postgresql", reason="SQLite has one writer: the claim waits for the pause to end")
def test_a_pause_is_seen_by_other_sessions_once_committed(
    repo: Repo, session: Session, session_factory: sessionmaker[Session]
) -> None:
    repo.enqueue("export", {})
    session.commit()
    repo.pause("export")  # not committed yet: other sessions still claim
    with session_factory() as other:
        assert TaskRepository(other, repo.model).dequeue("export") is not None
        other.rollback()
    session.commit()
    with session_factory() as other:
        assert TaskRepository(other, repo.model).dequeue("export") is None


@pytest.mark.parametrize(
    ("task_type", "error", "message"),
    [
        ("", ValueError, "task_type must not be empty"),
        ("   ", ValueError, "task_type must not be empty"),
        ("x" * 300, ValueError, "at most 255 characters"),
        ("bad\x00type", ValueError, "NUL"),
        (7, TypeError, "task_type must be a string"),
    ],
)
def test_a_bad_type_name_is_refused_and_nothing_is_written(
    repo: Repo, session: Session, task_type: object, error: type[Exception], message: str
) -> None:
    for action in (repo.pause, repo.resume):
        with pytest.raises(error, match=message):
            action(task_type)  # type: ignore[arg-type]
    session.commit()
    assert repo.paused() == []
