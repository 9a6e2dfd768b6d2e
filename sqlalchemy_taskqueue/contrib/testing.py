"""Helpers for testing applications that use the queue.

:func:`task_factory` builds a `factory_boy <https://factoryboy.readthedocs.io>`_ factory
for your task model, bound to a session (requires the ``test`` extra)::

    TaskFactory = task_factory(Task, session)
    task = TaskFactory(type="data_export", payload={"project_id": 7})
    failed = TaskFactory(status=TaskStatus.FAILED, error_message="boom")

Rows are flushed (not committed), so they live and die with the test's transaction.
A row is made as the queue would have left it in its status: a started task has
``started_at``, an in-progress one a current lease, a finished one ``completed_at`` (so
``cleanup_old_tasks`` sees it) and a completed one progress 100.

:func:`throwaway_database` gives a test run an empty database of its own on a server and
drops it afterwards::

    with throwaway_database("postgresql+psycopg2://postgres@127.0.0.1/postgres") as url:
        engine = create_engine(url)

:func:`resolve_database_url` finds a server for tests, examples and the demo: the URL in
an environment variable (``TEST_DATABASE_URL_ENV``, ``TASKQUEUE_TEST_DATABASE_URL``, or
``DATABASE_URL_ENV``, ``TASKQUEUE_DATABASE_URL``), else a local server, else an embedded
one started from PyPI's ``pgserver`` (the ``embedded`` extra, see
:func:`start_embedded_server`); :func:`normalize_url` gives a URL its default driver and
:func:`mask_password` prints it safely.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from sqlalchemy_taskqueue._urls import (
    DATABASE_URL_ENV,
    TEST_DATABASE_URL_ENV,
    mask_password,
    normalize_url,
)
from sqlalchemy_taskqueue.backends.postgresql._embedded import (
    resolve_database_url,
    start_embedded_server,
)
from sqlalchemy_taskqueue.models import task_table
from sqlalchemy_taskqueue.status import FINISHED_STATUSES, TaskStatus

__all__ = [
    "DATABASE_URL_ENV",
    "TEST_DATABASE_URL_ENV",
    "mask_password",
    "normalize_url",
    "resolve_database_url",
    "start_embedded_server",
    "task_factory",
    "throwaway_database",
]


def task_factory(model: type[Any], session: Session) -> Any:
    """A factory_boy ``SQLAlchemyModelFactory`` for ``model`` that flushes into ``session``.

    Example::

        TaskFactory = task_factory(Task, session)
        TaskFactory.create_batch(3, type="email")
    """
    import factory
    from factory.alchemy import SQLAlchemyModelFactory

    task_table(model)  # rejects anything that is not a task model

    def when(*statuses: TaskStatus, value: Any) -> Any:
        """``value()`` for a row in one of ``statuses``, else ``None``."""
        return factory.LazyAttribute(lambda row: value() if row.status in statuses else None)

    def now() -> datetime:
        return datetime.now(timezone.utc)

    started = (TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.FAILED)
    leased = (TaskStatus.IN_PROGRESS,)

    meta = type(
        "Meta",
        (),
        {"model": model, "sqlalchemy_session": session, "sqlalchemy_session_persistence": "flush"},
    )
    return type(
        f"{model.__name__}Factory",
        (SQLAlchemyModelFactory,),
        {
            "Meta": meta,
            "type": "example",
            "payload": factory.Sequence(lambda n: {"n": n}),
            "status": TaskStatus.PENDING,
            "started_at": when(*started, value=now),
            "completed_at": when(*FINISHED_STATUSES, value=now),
            "progress": factory.LazyAttribute(
                lambda row: 100 if row.status == TaskStatus.COMPLETED else 0
            ),
            "lease_owner": when(*leased, value=lambda: "task_factory"),
            "lease_token": when(*leased, value=uuid.uuid4),
            "lease_expires_at": when(*leased, value=lambda: now() + timedelta(minutes=5)),
        },
    )


@contextmanager
def throwaway_database(server_url: str, prefix: str = "taskqueue_test") -> Iterator[str]:
    """Create an empty database on the server at ``server_url`` and yield its URL; drop it
    (closing any connection still open to it) on exit.

    The server's user needs the ``CREATEDB`` privilege; PostgreSQL 13 or later.

    Example::

        with throwaway_database(os.environ["TASKQUEUE_TEST_DATABASE_URL"]) as url:
            engine = create_engine(url)
            Base.metadata.create_all(engine)
            ...
    """
    if not prefix.isidentifier() or not prefix.islower():
        raise ValueError(f"prefix must be a lower-case identifier, got {prefix!r}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
