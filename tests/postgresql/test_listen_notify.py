"""LISTEN/NOTIFY: the queue's channel is a valid PostgreSQL channel name, and tasks put
back in the queue (handed back, rescued, retried) are announced on it as an enqueue
is, unless the repository was made with ``notify=False``."""

from __future__ import annotations

from typing import Any

import pytest
from repository_harness import Repo
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from twins import make_repository

from sqlalchemy_taskqueue import statements


def test_long_schema_qualified_names_get_a_valid_channel(session: Session) -> None:
    from sqlalchemy import MetaData, Table

    from sqlalchemy_taskqueue.statements import notify_channel

    long_table = Table("t" * 46, MetaData(), schema="tenant_" + "s" * 20)
    other = Table("t" * 45 + "u", MetaData(), schema="tenant_" + "s" * 20)
    channel = notify_channel(long_table)
    assert len(channel.encode()) <= 63 and channel.startswith("taskqueue_tenant_")
    assert channel == notify_channel(long_table) != notify_channel(other)
    session.execute(select(func.pg_notify(channel, "")))  # PostgreSQL accepts it
    session.rollback()


@pytest.mark.parametrize("notify", [True, False])
def test_tasks_put_back_in_the_queue_wake_listening_workers(
    repo: Repo, session: Session, database_url: str, notify: bool
) -> None:
    """Handed back, rescued or retried: each is claimable again at once, so the
    repository announces it on the queue's channel, as an enqueue does (one
    notification per transaction), unless made with ``notify=False``."""
    table = repo.model.__tablename__
    quiet = make_repository(session, repo.model, notify=notify)
    listener = connect_listening(database_url, statements.notify_channel(repo.model.__table__))
    try:
        ids = repo.enqueue_many("a", [{}, {}], max_retries=1)
        ids.append(repo.enqueue("a", {}, max_retries=0))
        session.commit()
        drain_notifications(listener)  # the enqueue's own
        first, second, third = repo.dequeue_many("a", limit=3)
        session.commit()
        session.execute(text(f"UPDATE {table} SET lease_expires_at = now() WHERE id = {second.id}"))
        repo.fail_task(third.id, "boom")
        session.commit()
        for put_back in (
            lambda: quiet.release_tasks([(first.id, first.lease_token)]),
            lambda: quiet.rescue_expired_leases(),
            lambda: quiet.retry_task(third.id),
        ):
            put_back()
            session.commit()
            assert drain_notifications(listener) == (1 if notify else 0)
        assert sorted(task.id for task in repo.dequeue_many("a", limit=3)) == ids
    finally:
        listener.close()


def connect_listening(database_url: str, channel: str) -> Any:
    """A psycopg2 connection listening on ``channel``."""
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    connection = psycopg2.connect(**url.translate_connect_args(username="user", database="dbname"))
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(statements.listen_statement(channel))
    return connection


def drain_notifications(connection: Any) -> int:
    """How many notifications arrived (all of them are delivered by the time the
    notifying transaction's commit returned)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # reads what the server has sent meanwhile
    count = len(connection.notifies)
    connection.notifies.clear()
    return count
