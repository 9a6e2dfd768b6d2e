"""Building a repository: the model must be a task table and the session a ``Session``
(a ``scoped_session`` stands for the current scope's session); bad options (lease
duration, backoff, owner) are refused."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from twins import make_repository

from sqlalchemy_taskqueue import BackoffPolicy, TaskRepository


def test_repository_rejects_a_model_that_is_not_a_task_table(session: Session) -> None:
    with pytest.raises(TypeError, match="TaskMixin"):
        make_repository(session, dict)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="Session"):
        TaskRepository("session", object)  # type: ignore[arg-type,type-var]


def test_a_scoped_session_stands_for_the_current_scopes_session(
    session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    """A ``scoped_session`` (Flask-SQLAlchemy's ``db.session``) is accepted: each thread's
    repository runs in that thread's session, which the thread's commit through the
    scoped proxy commits, and its rollback rolls back."""
    scoped = scoped_session(session_factory)
    kept: dict[str, Any] = {}

    def in_thread(name: str, commit: bool) -> None:
        repo = TaskRepository(scoped, clean_table)
        kept[name] = (repo.session, scoped(), repo.enqueue("a", {"thread": name}))
        if commit:
            scoped.commit()
        else:
            scoped.rollback()
        scoped.remove()

    threads = [
        threading.Thread(target=in_thread, args=("kept", True)),
        threading.Thread(target=in_thread, args=("dropped", False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert kept["kept"][0] is kept["kept"][1] and kept["dropped"][0] is kept["dropped"][1]
    assert kept["kept"][0] is not kept["dropped"][0]
    with session_factory() as check:
        stored = check.execute(select(clean_table.id, clean_table.payload)).all()
    assert stored == [(kept["kept"][2], {"thread": "kept"})]


def test_repository_rejects_bad_configuration(session: Session, clean_table: type[Any]) -> None:
    with pytest.raises(ValueError, match="lease_duration"):
        make_repository(session, clean_table, lease_duration=timedelta(0))
    with pytest.raises(ValueError, match="at least 1 second"):
        make_repository(session, clean_table, lease_duration=0.5)
    with pytest.raises(ValueError, match="at most"):
        make_repository(session, clean_table, lease_duration=timedelta(days=10**6))
    with pytest.raises(TypeError, match="backoff"):
        make_repository(session, clean_table, backoff=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jitter"):
        BackoffPolicy(jitter=2)
    with pytest.raises(ValueError, match="cap_seconds"):
        BackoffPolicy(cap_seconds=1e12)
    with pytest.raises(TypeError, match="base_seconds"):
        BackoffPolicy(base_seconds="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="owner"):
        make_repository(session, clean_table, owner="")
