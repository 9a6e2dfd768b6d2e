"""The repository's errors: an unknown task id raises ``TaskNotFoundError`` (also a
``LookupError``), a value that is no task id is refused, and an error raised by the
application's own code inside a repository call leaves as itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from repository_harness import Repo
from sqlalchemy import event
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import TaskNotFoundError


def test_unknown_ids_raise_task_not_found(repo: Repo) -> None:
    for call in (
        lambda: repo.update_progress(999, 5),
        lambda: repo.complete_task(999),
        lambda: repo.fail_task(999, "x"),
        lambda: repo.cancel_task(999),
        lambda: repo.retry_task(999),
    ):
        with pytest.raises(TaskNotFoundError, match="999") as caught:
            call()
        assert isinstance(caught.value, LookupError) and caught.value.task_id == 999
    assert repo.get_task(999) is None


def test_an_os_error_of_the_application_is_not_reported_as_the_databases(
    repo: Repo, session: Session, tmp_path: Path
) -> None:
    """An ``OSError`` raised by the application's own code inside a repository call
    (here a session hook reading a file that is missing) leaves as itself: only one raised
    while a connection is opened (asyncpg's refused connection) is the database's."""

    def read_tenant(*_args: Any) -> None:
        (tmp_path / "tenant.conf").read_text()

    event.listen(session, "after_begin", read_tenant)
    with pytest.raises(FileNotFoundError):
        repo.enqueue("x", {})


@pytest.mark.parametrize("task_id", [0, -3, True, "7", None, 2**63])
def test_bad_task_ids_are_rejected(repo: Repo, task_id: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="task_id"):
        repo.get_task(task_id)
    with pytest.raises((TypeError, ValueError), match="task_id"):
        repo.complete_task(task_id)
