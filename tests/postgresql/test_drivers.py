"""The drivers the twins run on: the sync twin on the run's driver (psycopg2 unless the
URL says so), the async twin on an async one (asyncpg, or psycopg 3)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import AsyncTaskRepository, TaskRepository


def test_each_twin_runs_on_its_own_driver(repo: Any, session: Session, database_url: str) -> None:
    from sqlalchemy.engine import make_url
    from twins import async_url

    twin = getattr(repo, "twin", repo)
    if twin is repo:  # the sync twin on the run's driver (psycopg2 unless the URL says so)
        expected = (make_url(database_url).get_dialect().driver, TaskRepository)
    else:  # the async twin through an async driver
        expected = (async_url(database_url).get_dialect().driver, AsyncTaskRepository)
    assert expected[0] in {"psycopg2", "psycopg", "asyncpg"}
    assert (session.get_bind().dialect.driver, type(twin)) == expected
    task_id = repo.enqueue("a", {"n": 1})
    session.commit()
    assert repo.get_task(task_id).payload == {"n": 1}
