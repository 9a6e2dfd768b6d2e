"""Progress through the repository: ``update_progress`` takes 0..100 for a task that is
not finished and refuses anything else; ``get_task_progress`` reads the newest active
task's progress, matched by task type and whole payload values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from repository_harness import Repo, claim, repository_on_own_table
from sqlalchemy import Engine, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqlalchemy_taskqueue import InvalidTransitionError, TaskMixin, TaskQueueError


def test_update_progress(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {})
    repo.update_progress(task_id, 10)  # allowed while pending (operator use)
    session.commit()
    task = claim(repo)
    repo.update_progress(task_id, 45, lease_token=task.lease_token)
    session.commit()
    stored = repo.get_task(task_id)
    assert stored is not None and stored.progress == 45


@pytest.mark.parametrize(
    ("progress", "error"),
    [(-1, ValueError), (101, ValueError), (True, ValueError), (5.0, TypeError)],
)
def test_update_progress_rejects_bad_values(
    repo: Repo, session: Session, progress: Any, error: type[Exception]
) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    with pytest.raises(error, match="progress"):
        repo.update_progress(task_id, progress)
    stored = repo.get_task(task_id)
    assert stored is not None and stored.progress == 0


def test_update_progress_on_a_finished_task_is_an_illegal_transition(
    repo: Repo, session: Session
) -> None:
    repo.enqueue("a", {})
    session.commit()
    task = claim(repo)
    repo.complete_task(task.id)
    with pytest.raises(InvalidTransitionError, match="completed") as caught:
        repo.update_progress(task.id, 50)
    assert isinstance(caught.value, TaskQueueError) and isinstance(caught.value, ValueError)
    stored = repo.get_task(task.id)
    assert stored is not None and stored.progress == 100


class ProjectBase(DeclarativeBase):
    pass


class ProjectTask(TaskMixin, ProjectBase):
    """An app model with a column that shares its name with a payload key."""

    __tablename__ = "tasks_with_project_column"

    project_id: Mapped[str | None] = mapped_column(Text)


@pytest.fixture
def project_repo(session: Session, engine: Engine) -> Iterator[Repo]:
    yield from repository_on_own_table(session, engine, ProjectTask)


def test_get_task_progress_matches_payload_keys(project_repo: Repo, session: Session) -> None:
    repo = project_repo
    older = repo.enqueue("export", {"project_id": "p1", "fmt": "csv"})
    newer = repo.enqueue("export", {"project_id": "p1", "fmt": "xlsx"}, project_id="p2")
    repo.enqueue("export", {"project_id": "p2"})
    repo.enqueue("import", {"project_id": "p1"})
    session.commit()
    repo.update_progress(older, 10)
    repo.update_progress(newer, 60)
    assert repo.get_task_progress("export", "p1") == 60  # the newest active one
    assert repo.get_task_progress("export", project_id="p1", fmt="csv") == 10
    # payload keys, not the model's project_id column (which is "p2" for `newer`)
    assert repo.get_task_progress("export", "p2") == 0
    assert repo.get_task_progress("export", "p9") is None
    assert repo.get_task_progress("missing") is None
    for claimed in repo.dequeue_many("export", limit=5):
        repo.complete_task(claimed.id)
    assert repo.get_task_progress("export", "p1") is None  # finished tasks do not count
    with pytest.raises(TypeError, match="match"):
        repo.get_task_progress("export", when=object())
    with pytest.raises(TypeError, match="task_type"):
        repo.get_task_progress(None)  # type: ignore[arg-type]


def test_get_task_progress_matches_whole_values_not_parts_of_them(
    repo: Repo, session: Session
) -> None:
    repo.enqueue("export", {"tags": ["a", "b"], "options": {"fmt": "csv", "zip": True}})
    session.commit()
    assert repo.get_task_progress("export", tags=["a", "b"]) == 0
    assert repo.get_task_progress("export", options={"zip": True, "fmt": "csv"}) == 0
    # a list or an object that is only part of the payload's value is another value
    assert repo.get_task_progress("export", tags=["a"]) is None
    assert repo.get_task_progress("export", tags=[]) is None
    assert repo.get_task_progress("export", options={"fmt": "csv"}) is None
