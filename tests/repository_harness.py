"""What the repository tests share: the twin ``session`` and ``repo`` fixtures, and small
steps (claim a task and commit, count rows, read the database clock).

The fixtures are not found by pytest here: the ``conftest.py`` of each folder whose
repository tests run against both twins imports them (``conformance/repository/``,
``postgresql/``), so every test there runs once on a ``Session`` and once on the sync
face of an ``AsyncSession`` over asyncpg.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from backends import database_now
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from twins import TWINS, async_session_for, make_repository, release

from sqlalchemy_taskqueue import TaskRepository

Repo = TaskRepository[Any]


@pytest.fixture(params=TWINS)
def session(
    request: pytest.FixtureRequest, session_factory: sessionmaker[Session], database_url: str
) -> Iterator[Session]:
    """A session, or (``async``) the sync face of an ``AsyncSession`` over asyncpg, with
    the test body run in the greenlet bridge: every test runs against both twins."""
    if request.param == "sync":
        with session_factory() as session:
            yield session
        return
    with async_session_for(request.node, database_url) as async_session:
        yield async_session.sync_session


@pytest.fixture
def repo(session: Session, clean_table: type[Any]) -> Any:
    return make_repository(session, clean_table)


def repository_on_own_table(session: Session, engine: Engine, model: Any) -> Iterator[Repo]:
    """A repository for ``model``, whose table exists only for the test."""
    model.metadata.create_all(engine)
    try:
        yield make_repository(session, model)
    finally:
        release(session)
        model.metadata.drop_all(engine)


def row_count(session: Session, model: type[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def db_now(session: Session) -> datetime:
    """The database clock now (not the transaction's start)."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(select(func.clock_timestamp()))  # type: ignore[return-value]
    return database_now(session)  # type: ignore[no-any-return]


def claim(repo: Repo, task_type: str | None = None) -> Any:
    task = repo.dequeue(task_type)
    repo.session.commit()
    assert task is not None
    return task
