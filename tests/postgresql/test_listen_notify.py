"""LISTEN/NOTIFY: the queue's channel is a valid PostgreSQL channel name; tasks put back
in the queue (handed back, rescued, retried) are announced on it as an enqueue is,
unless the repository was made with ``notify=False``; and a notification wakes an idle
worker long before its poll, on each driver that can LISTEN."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from processes import wait_for
from repository_harness import Repo
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker
from twins import make_repository, running
from worker_harness import MakeWorker, enqueue

from sqlalchemy_taskqueue import TaskContext
from sqlalchemy_taskqueue._schema import notify_channel
from sqlalchemy_taskqueue.backends.postgresql import _statements as statements


def test_long_schema_qualified_names_get_a_valid_channel(session: Session) -> None:
    from sqlalchemy import MetaData, Table

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
    listener = connect_listening(database_url, notify_channel(repo.model.__table__))
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


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_notify_wakes_an_idle_worker_long_before_its_poll(
    make_worker: MakeWorker, database_url: str, clean_table: type[Any], driver: str
) -> None:
    """On each driver that can LISTEN: psycopg2 and psycopg 3 for the threaded worker,
    asyncpg and psycopg 3 for the async one."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    engine = create_engine(make_url(database_url).set(drivername=f"postgresql+{driver}"))
    session_factory = sessionmaker(engine)
    done: dict[int, float] = {}
    finished = threading.Event()

    def job(task: Any, ctx: TaskContext) -> None:
        done[task.id] = time.monotonic()
        finished.set()

    worker = make_worker(session_factory, clean_table, {"job": job}, poll_interval=60)
    try:
        with running(worker):
            assert worker.listening.wait(10)
            wait_for(worker.idle.is_set)
            enqueued_at = time.monotonic()
            task_id = enqueue(session_factory, clean_table, "job")
            assert finished.wait(10)
    finally:
        engine.dispose()
    # picked up on the notification: nowhere near the 60 s poll interval
    assert done[task_id] - enqueued_at < 5
