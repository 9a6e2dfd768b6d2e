"""``enqueue_if_not_exists``: at most one active task per type and dedupe key (by default
the payload's canonical JSON); while one is pending or in progress its id is returned
instead of a new task, and once it has finished a new one may be enqueued.  (Retrying
never breaks this either: ``test_cancel_and_retry.py``; racing threads:
``test_concurrency.py``.)"""

from __future__ import annotations

import pytest
from repository_harness import Repo, claim, row_count
from sqlalchemy.orm import Session


def test_enqueue_if_not_exists_returns_the_active_task(repo: Repo, session: Session) -> None:
    first, created = repo.enqueue_if_not_exists("import", {"file": "a.csv", "project": 1})
    assert created
    # same payload, other key order: same canonical JSON, same task
    again, created_again = repo.enqueue_if_not_exists("import", {"project": 1, "file": "a.csv"})
    assert (again, created_again) == (first, False)
    other, other_created = repo.enqueue_if_not_exists("import", {"file": "b.csv", "project": 1})
    assert other_created and other != first
    # the same payload under another type is another task
    _, created_other_type = repo.enqueue_if_not_exists("export", {"file": "a.csv", "project": 1})
    assert created_other_type
    session.commit()
    assert row_count(session, repo.model) == 3


def test_enqueue_if_not_exists_allows_a_new_task_once_the_old_one_finished(
    repo: Repo, session: Session
) -> None:
    first, _ = repo.enqueue_if_not_exists("import", {"file": "a.csv"})
    session.commit()
    task = claim(repo, "import")
    assert task.id == first
    again, created = repo.enqueue_if_not_exists("import", {"file": "a.csv"})
    assert (again, created) == (first, False)  # in progress still counts as active
    repo.complete_task(first, lease_token=task.lease_token)
    new_id, created = repo.enqueue_if_not_exists("import", {"file": "a.csv"})
    assert created and new_id != first


def test_enqueue_if_not_exists_keys_payloads_by_their_stored_json(
    repo: Repo, session: Session
) -> None:
    # keys that are not strings are stored as strings (what enqueue() accepts) ...
    first, created = repo.enqueue_if_not_exists("import", {1: "a", "b": 2})
    assert created
    # ... so the payload with those keys as strings is the same task
    assert repo.enqueue_if_not_exists("import", {"1": "a", "b": 2}) == (first, False)
    second, _ = repo.enqueue_if_not_exists("import", {2: "x", 10: "y"})
    assert repo.enqueue_if_not_exists("import", {"10": "y", "2": "x"}) == (second, False)
    session.commit()
    assert row_count(session, repo.model) == 2


def test_enqueue_if_not_exists_with_an_explicit_key(repo: Repo, session: Session) -> None:
    first, _ = repo.enqueue_if_not_exists("report", {"v": 1}, dedupe_key="report:7")
    second, created = repo.enqueue_if_not_exists("report", {"v": 2}, dedupe_key="report:7")
    assert (second, created) == (first, False)
    task = repo.get_task(first)
    assert task is not None and task.dedupe_key == "report:7"
    with pytest.raises(ValueError, match="dedupe_key"):
        repo.enqueue_if_not_exists("report", {}, dedupe_key="")
    with pytest.raises(TypeError, match="payload"):
        repo.enqueue_if_not_exists("report", {"x": object()})
    session.commit()
    assert row_count(session, repo.model) == 1
