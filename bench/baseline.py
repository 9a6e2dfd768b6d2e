"""The hand-written baseline: what a careful engineer writes with psycopg2 and no library.

Same table (the ``TaskMixin`` schema with its partial indexes), same server, same run.
Two drain shapes: one task per transaction (claim, commit, complete, commit) and 100
per statement (claim 100 in one ``UPDATE``, complete them in one ``UPDATE ... = ANY``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
from sqlalchemy.engine import make_url

TABLE = "bench_tasks"

CLAIM = f"""
UPDATE {TABLE} SET status = 'in_progress', started_at = now()
WHERE id IN (
    SELECT id FROM {TABLE}
    WHERE status = 'pending' AND type = 'noop' AND run_at <= now()
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, payload
"""
COMPLETE = f"""
UPDATE {TABLE} SET status = 'completed', progress = 100, completed_at = now()
WHERE id = ANY(%(ids)s)
"""


def connect(url: str) -> Any:
    """A psycopg2 connection to the database of an SQLAlchemy ``url``."""
    parsed = make_url(url)
    arguments = parsed.translate_connect_args(username="user", database="dbname")
    return psycopg2.connect(**arguments, **dict(parsed.query))


def dsn(url: str) -> str:
    """The libpq URI form of an SQLAlchemy ``url`` (for asyncpg and psycopg 3)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def enqueue_one_by_one(url: str, count: int) -> float:
    """Tasks per second, one ``INSERT ... RETURNING id`` and commit each."""
    connection = connect(url)
    cursor = connection.cursor()
    started = time.perf_counter()
    for n in range(count):
        cursor.execute(
            f"INSERT INTO {TABLE} (type, payload) VALUES (%s, %s) RETURNING id",
            ("noop", json.dumps({"n": n})),
        )
        cursor.fetchone()
        connection.commit()
    elapsed = time.perf_counter() - started
    connection.close()
    return count / elapsed


def enqueue_bulk(url: str, count: int, batch: int) -> float:
    """Tasks per second, ``batch`` rows per ``INSERT ... SELECT unnest(...)`` and commit."""
    connection = connect(url)
    cursor = connection.cursor()
    started = time.perf_counter()
    for first in range(0, count, batch):
        payloads = [json.dumps({"n": n}) for n in range(first, min(first + batch, count))]
        cursor.execute(
            f"INSERT INTO {TABLE} (type, payload) "
            "SELECT 'noop', p FROM unnest(%s::jsonb[]) AS p RETURNING id",
            (payloads,),
        )
        cursor.fetchall()
        connection.commit()
    elapsed = time.perf_counter() - started
    connection.close()
    return count / elapsed


def _drain(url: str, per_statement: int) -> None:
    connection = connect(url)
    cursor = connection.cursor()
    while True:
        cursor.execute(CLAIM, {"limit": per_statement})
        claimed = [row[0] for row in cursor.fetchall()]
        connection.commit()
        if not claimed:
            break
        cursor.execute(COMPLETE, {"ids": claimed})
        connection.commit()
    connection.close()


def drain(url: str, count: int, *, per_statement: int, processes: int) -> float:
    """Tasks per second for ``processes`` processes draining ``count`` no-op tasks."""
    return count / run_processes(_drain, (url, per_statement), processes)


def quiesce(url: str) -> None:
    """Vacuum the whole database and flush the WAL and dirty pages written so far
    (``VACUUM``, ``CHECKPOINT``; the checkpoint needs a superuser and is skipped
    otherwise), so that no measurement pays for the writes of the one before, or shares
    the machine with autovacuum cleaning up after it."""
    connection = connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM")
            with contextlib.suppress(psycopg2.Error):
                cursor.execute("CHECKPOINT")
    finally:
        connection.close()


def run_processes(target: Callable[..., None], args: tuple[Any, ...], processes: int) -> float:
    """Seconds until ``processes`` forked processes running ``target(*args)`` all end."""
    context = multiprocessing.get_context("fork")
    # the children inherit the parent's objects: keep their garbage collector off them
    # (the standard advice for forked workers), whichever library they run
    gc.freeze()
    children = [context.Process(target=target, args=args) for _ in range(processes)]
    started = time.perf_counter()
    for child in children:
        child.start()
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"a benchmark process failed (exit {child.exitcode})")
    return time.perf_counter() - started


def progress_updates(url: str, task_ids: list[int], updates: int) -> float:
    """Progress writes per second, one thread per task, each write its own transaction."""

    def write(task_id: int) -> None:
        connection = connect(url)
        cursor = connection.cursor()
        for n in range(updates):
            cursor.execute(f"UPDATE {TABLE} SET progress = %s WHERE id = %s", (n % 100, task_id))
            connection.commit()
        connection.close()

    threads = [threading.Thread(target=write, args=(task_id,)) for task_id in task_ids]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(task_ids) * updates / (time.perf_counter() - started)
