"""How fast the dashboard's pages render on a big queue: 1,000,000 finished and 100,000
pending tasks (five types, an application column), each page requested through the
dashboard's WSGI form in this process, median of several requests, with the plans of
the queries behind the heaviest pages.  Target: every page under 200 ms.

Run: ``make bench-dashboard`` (or ``python bench/dashboard.py --finished 100000``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from sqlalchemy import BigInteger, Engine, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from werkzeug.test import Client

from sqlalchemy_taskqueue import TaskMixin, TaskRepository
from sqlalchemy_taskqueue.contrib.testing import (
    DATABASE_URL_ENV,
    resolve_database_url,
    throwaway_database,
)
from sqlalchemy_taskqueue.dashboard import create_wsgi_app

TARGET_MS = 200.0


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    __tablename__ = "dashboard_bench_tasks"
    project_id: Mapped[int | None] = mapped_column(BigInteger, index=True)


def fill(engine: Engine, finished: int, pending: int) -> None:
    """``finished`` tasks over the last 30 days (95 % completed, 4 % failed, 1 %
    cancelled) and ``pending`` due tasks, over five types and 1,000 projects."""
    table = Task.__tablename__
    with engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT INTO {table} (type, payload, status, progress, started_at, "
                "completed_at, created_at, run_at, project_id, error_message) "
                "SELECT 'type-' || (n % 5), jsonb_build_object('n', n), "
                "CASE WHEN n % 100 = 0 THEN 'cancelled' WHEN n % 25 = 0 THEN 'failed' "
                "ELSE 'completed' END, 100, at, at, at, at, n % 1000, "
                "CASE WHEN n % 25 = 0 AND n % 100 <> 0 THEN 'boom' END "
                "FROM (SELECT n, now() - interval '30 days' * (1 - n::float / :count) AS at "
                "FROM generate_series(1, :count) AS n) AS rows"
            ),
            {"count": finished},
        )
        connection.execute(
            text(
                f"INSERT INTO {table} (type, payload, project_id) "
                "SELECT 'type-' || (n % 5), jsonb_build_object('n', n), n % 1000 "
                "FROM generate_series(1, :count) AS n"
            ),
            {"count": pending},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"VACUUM ANALYZE {table}"))


def page_times(app: Any, paths: list[str], repeat: int) -> list[tuple[str, float]]:
    client = Client(app)
    results = []
    for path in paths:
        client.get(path)  # warm: templates compiled, statements cached
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(path)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        results.append((path, statistics.median(samples)))
    return results


def plan(engine: Engine, sql: str) -> str:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}")
        return "\n".join(row[0] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=1_000_000, help="finished tasks")
    parser.add_argument("--pending", type=int, default=100_000, help="pending tasks")
    parser.add_argument("--repeat", type=int, default=5, help="requests per page")
    args = parser.parse_args()
    server_url = resolve_database_url("TASKQUEUE_BENCH_DATABASE_URL", DATABASE_URL_ENV)
    with throwaway_database(server_url, "taskqueue_dashboard_bench") as url:
        engine = create_engine(url)
        try:
            Base.metadata.create_all(engine)
            started = time.perf_counter()
            fill(engine, args.finished, args.pending)
            print(
                f"{args.finished:,} finished and {args.pending:,} pending tasks "
                f"({time.perf_counter() - started:.0f} s to fill)",
                file=sys.stderr,
            )
            factory = sessionmaker(engine)
            with Session(engine) as session:
                some = TaskRepository(session, Task).browse_tasks(status="failed", limit=1)
            failed_id = some[0]["id"]
            middle = args.finished // 2
            paths = [
                "/",
                "/tasks",
                "/tasks?status=failed",
                "/tasks?status=cancelled&type=type-0",
                "/tasks?status=pending&type=type-2",
                "/tasks?col.project_id=17",
                f"/tasks?search={failed_id}",
                f"/tasks?before_id={middle}",
                "/tasks?from=2026-01-01&to=2026-01-02",
                f"/tasks/{failed_id}",
                "/failed",
                "/workers",
                "/schedules",
                "/controls",
                # the worst cases: a filter no row matches, a search by dedupe key
                "/tasks?status=cancelled&type=type-3",
                "/tasks?search=no-such-key",
            ]
            results = page_times(create_wsgi_app(factory, Task), paths, args.repeat)
            print("| page | ms (median) | target |")
            print("|---|---:|---|")
            for path, ms in results:
                mark = "ok" if ms < TARGET_MS else "MISSED"
                print(f"| `{path}` | {ms:.1f} | < {TARGET_MS:.0f} ms: {mark} |")
            table = Task.__tablename__
            for title, sql in [
                (
                    "failed tasks, newest first",
                    f"SELECT * FROM {table} WHERE status = 'failed' ORDER BY id DESC LIMIT 50",
                ),
                (
                    "by an application column",
                    f"SELECT * FROM {table} WHERE project_id = 17 ORDER BY id DESC LIMIT 50",
                ),
                (
                    "the overview's counts of running and recently finished tasks",
                    f"SELECT type, status, count(*) FROM {table} WHERE status = 'in_progress' "
                    "GROUP BY type, status UNION ALL SELECT type, status, count(*) "
                    f"FROM {table} WHERE status IN ('completed', 'failed', 'cancelled') "
                    "AND completed_at >= now() - interval '24 hours' GROUP BY type, status",
                ),
            ]:
                print(f"\nplan, {title}:\n{plan(engine, sql)}")
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
