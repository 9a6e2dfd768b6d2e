"""Run every fault-injection scenario at full size and print the README's reliability
table (Markdown), then one JSON line per scenario.

Usage: ``make faults`` (or ``python tests/faults/report.py --scale 0.5`` for a quicker
run).  The server comes from ``TASKQUEUE_TEST_DATABASE_URL`` / ``TASKQUEUE_DATABASE_URL``,
then PostgreSQL on 127.0.0.1:5432, then an embedded one; the restart scenario always
uses an embedded server of its own, never a shared one.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import TABLE_HEADER, FaultReport
from scenarios import (
    frozen_network,
    idle_in_transaction,
    keyed_worker_sigkill,
    periodic_schedule,
    poison_documents,
    server_restart,
    skewed_clocks,
    stranded_worker,
    terminated_connections,
    worker_sigkill,
)
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from sqlalchemy_taskqueue._urls import DATABASE_URL_ENV, TEST_DATABASE_URL_ENV, mask_password
from sqlalchemy_taskqueue.contrib.testing import resolve_database_url


def describe_server(url: str) -> str:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        version = connection.scalar(text("SHOW server_version"))
        fsync = connection.scalar(text("SHOW fsync"))
        commit = connection.scalar(text("SHOW synchronous_commit"))
    engine.dispose()
    return f"PostgreSQL {version} (fsync={fsync}, synchronous_commit={commit})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply task counts")
    args = parser.parse_args()
    if args.scale <= 0:
        parser.error("--scale must be positive")

    def size(tasks: int) -> int:
        return max(int(tasks * args.scale), 10)

    server_url = resolve_database_url(TEST_DATABASE_URL_ENV, DATABASE_URL_ENV)
    print(f"server: {mask_password(server_url)}, {describe_server(server_url)}")
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}")

    def both_twins(
        scenario: Callable[[Path, str], FaultReport],
    ) -> list[Callable[[Path], FaultReport]]:
        """The scenario with ``taskqueue worker``, then with ``taskqueue worker --async``."""

        def async_twin(work: Path) -> FaultReport:
            report = scenario(work, "async")
            report.scenario += ", AsyncWorker"
            return report

        return [lambda work: scenario(work, "sync"), async_twin]

    scenarios: list[Callable[[Path], FaultReport]] = [
        *both_twins(
            lambda work, twin: worker_sigkill(
                server_url, work, tasks=size(2000), kills=15, twin=twin
            )
        ),
        *both_twins(
            lambda work, twin: keyed_worker_sigkill(
                server_url, work, tasks=size(1500), kills=10, twin=twin
            )
        ),
        *both_twins(
            lambda work, twin: terminated_connections(
                server_url, work, tasks=size(2000), kills=15, twin=twin
            )
        ),
        *both_twins(
            lambda work, twin: server_restart(
                work, tasks=size(2000), restarts=2, outage=2.0, twin=twin
            )
        ),
        lambda work: idle_in_transaction(server_url, work, tasks=size(3000)),
        *both_twins(
            lambda work, twin: stranded_worker(
                server_url, work, how="network cut", tasks=4, twin=twin
            )
        ),
        *both_twins(
            lambda work, twin: stranded_worker(server_url, work, how="SIGSTOP", tasks=4, twin=twin)
        ),
        *both_twins(lambda work, twin: frozen_network(server_url, work, grace=5.0, twin=twin)),
        lambda work: skewed_clocks(server_url, work, tasks=size(1000)),
        lambda work: periodic_schedule(
            server_url, work, seconds=max(60 * args.scale, 20), kills=8, terminations=5
        ),
        *(
            scenario
            for kind in ("payload", "result")
            for scenario in both_twins(
                lambda work, twin, kind=kind: poison_documents(
                    server_url, work, kind=kind, tasks=size(1000), poison=20, twin=twin
                )
            )
        ),
    ]
    reports = []
    for scenario in scenarios:
        with tempfile.TemporaryDirectory(prefix="taskqueue-faults-") as work:
            report = scenario(Path(work))
        print(f"  done: {report.scenario}", file=sys.stderr, flush=True)
        reports.append(report)
    print()
    print(TABLE_HEADER)
    for report in reports:
        print(report.table_row())
    print()
    for report in reports:
        print(report.json_line())
    if any(report.lost or report.completed_twice for report in reports):
        sys.exit("a scenario lost a task (or a fire) or completed one twice (or enqueued it)")


if __name__ == "__main__":
    main()
