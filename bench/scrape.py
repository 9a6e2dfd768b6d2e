"""What a Prometheus scrape of the queue-wide gauges costs on a large table.

Fills a throw-away table (``--rows`` tasks, in one of two shapes), serves the worker
metrics endpoint on 127.0.0.1, scrapes it ``--scrapes`` times in a row over HTTP, and
prints the wall time and the table's sequential and index scans they caused
(``pg_stat_user_tables``; the endpoint's connections are not pooled, so each backend
reports its scans when it exits).

* ``history``: a long history (finished rows) and a short queue: 97 % completed,
  2 % failed, 1 % pending, 0.1 % in progress.
* ``backlog``: every row pending and due (a queue that fell behind).

The endpoint reads the queue at most once per ``--cache`` seconds (the library's
default when not given; 0 reads it at every scrape, as every scrape did before the
readings were cached).

Run: ``python bench/scrape.py --rows 300000 --shape history [--cache 0]`` (server as
for ``make bench``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).parent.parent))
from sqlalchemy_taskqueue import TaskMixin
from sqlalchemy_taskqueue.contrib.prometheus import serve_worker_metrics
from sqlalchemy_taskqueue.contrib.testing import (
    DATABASE_URL_ENV,
    resolve_database_url,
    throwaway_database,
)


class Base(DeclarativeBase):
    pass


class ScrapeTask(TaskMixin, Base):
    __tablename__ = "scrape_tasks"


FILL = {
    # the status of row n (of :rows), five task types
    "history": """
        CASE WHEN n % 1000 < 970 THEN 'completed' WHEN n % 1000 < 990 THEN 'failed'
             WHEN n % 1000 < 999 THEN 'pending' ELSE 'in_progress' END
    """,
    "backlog": "'pending'",
}


def fill(engine: Engine, rows: int, shape: str) -> None:
    status = FILL[shape]
    with engine.begin() as connection:
        connection.execute(
            text(
                f"""
                INSERT INTO scrape_tasks (type, payload, status, run_at, created_at,
                                          started_at, completed_at, lease_expires_at)
                SELECT 'type_' || (n % 5), '{{}}', s,
                       now() - interval '1 hour', now() - interval '1 hour',
                       CASE WHEN s <> 'pending' THEN now() - interval '30 minutes' END,
                       CASE WHEN s IN ('completed', 'failed') THEN now() - (n % 3600) * interval '1 second' END,
                       CASE WHEN s = 'in_progress' THEN now() + interval '1 hour' END
                FROM (SELECT n, {status} AS s FROM generate_series(1, :rows) AS n) AS numbered
                """
            ),
            {"rows": rows},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE scrape_tasks"))


def scans(engine: Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                "WHERE relname = 'scrape_tasks'"
            )
        ).one()
    return int(row[0]), int(row[1])


def scans_once_alone(engine: Engine) -> tuple[int, int]:
    """:func:`scans` once every other backend on the database has exited (a backend
    reports its scans as it exits)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + 30
    while True:
        with engine.connect() as connection:
            if connection.execute(query).scalar_one() == 0:
                break
        if time.monotonic() > deadline:
            raise RuntimeError("the endpoint's connections did not close")
        time.sleep(0.05)  # polling a state, not waiting for one to happen by itself
    return scans(engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--shape", choices=sorted(FILL), default="history")
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--cache", type=float, default=None, help="seconds (default: 15)")
    args = parser.parse_args()
    cache = {} if args.cache is None else {"cache_for": args.cache}
    server_url = resolve_database_url("TASKQUEUE_BENCH_DATABASE_URL", DATABASE_URL_ENV)
    with throwaway_database(server_url, prefix="taskqueue_scrape") as url:
        engine = create_engine(url, poolclass=NullPool)
        Base.metadata.create_all(engine)
        fill(engine, args.rows, args.shape)
        endpoint = serve_worker_metrics(0, sessionmaker(engine), ScrapeTask, **cache)
        try:
            before = scans(engine)
            times = []
            start = time.perf_counter()
            for _ in range(args.scrapes):
                began = time.perf_counter()
                address = f"http://127.0.0.1:{endpoint.port}/metrics"
                with urllib.request.urlopen(address, timeout=60) as response:
                    assert b"taskqueue_up 1.0" in response.read()
                times.append(time.perf_counter() - began)
            total = time.perf_counter() - start
        finally:
            endpoint.stop()
        after = scans_once_alone(engine)
        engine.dispose()
    print(
        f"{args.rows} rows ({args.shape}), cache {args.cache if cache else 'default'}, "
        f"{args.scrapes} scrapes: {total:.2f} s "
        f"(first {times[0] * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f} ms), "
        f"{after[0] - before[0]} sequential scans, {after[1] - before[1]} index scans"
    )


if __name__ == "__main__":
    main()
