"""``make demo``: the whole life of a queue in under a minute.

Needs: a clone of the repository and the ``migrations`` and ``cli`` extras, plus
``embedded`` when no PostgreSQL server is at hand (``make demo`` installs the ``dev``
extras, which hold them all; by hand: ``pip install -e '.[migrations,cli,embedded]'``
and ``python -m examples.demo`` from the root of the clone).

1. finds a server (``TASKQUEUE_DATABASE_URL``, a local PostgreSQL, or an embedded one
   started from the ``pgserver`` wheel in a temporary folder) and creates a database of
   its own on it, ``taskqueue_demo_<random hex>``, which the header names;
2. migrates it with Alembic (``alembic upgrade head``);
3. enqueues exports and imports (one import fails once and is retried with backoff; a
   duplicate import request is deduplicated);
4. runs two workers and shows a live progress bar per task;
5. prints each task's final status and the ``taskqueue stats`` tables.

Its CSV files live in a temporary folder.  The database, the folder (and an embedded
server) are removed at the end, also on Ctrl-C (:mod:`examples.sandbox`): nothing stays.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import BackoffPolicy, TaskStatus, Worker
from sqlalchemy_taskqueue.status import FINISHED_STATUSES

from .bulk_import import BULK_IMPORT, make_import_handler, request_import, write_sample_csv
from .data_export import DATA_EXPORT, make_export_handler, request_export
from .sandbox import Sandbox, missing_extra, run, sandbox
from .shop import Task, create_sample_project, migrate

try:
    from rich.console import Console
    from rich.live import Live
    from rich.logging import RichHandler
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
    from rich.table import Table

    from sqlalchemy_taskqueue.cli import cli
except ImportError as exc:
    raise missing_extra("examples.demo", "migrations,cli", exc) from None

DEMO_DATABASE_PREFIX = "taskqueue_demo"
TIME_LIMIT = 50.0

# a wide console when piped (make demo in CI), the terminal's width otherwise
console = Console() if sys.stdout.isatty() else Console(width=120)


def enqueue_work(engine: Engine, workdir: Path) -> list[int]:
    """Three exports and two imports, committed with the projects they belong to."""
    ids: list[int] = []
    with Session(engine) as session, session.begin():
        projects = [
            create_sample_project(session, name, items)
            for name, items in (("acme", 4000), ("globex", 1500), ("initech", 600))
        ]
        for project in projects:
            ids.append(request_export(session, project.id, f"ops@{project.name}.example", pace=0.6))
        catalog = workdir / "catalog.csv"
        write_sample_csv(catalog, 3000, bad_every=499)
        task_id, _ = request_import(session, projects[0].id, catalog, pace=0.08)
        ids.append(task_id)
        again, created = request_import(session, projects[0].id, catalog, pace=0.08)
        console.print(f"the same import requested twice -> task {again} (created={created})")
        flaky = workdir / "flaky.csv"
        write_sample_csv(flaky, 2000, seed=11)
        task_id, _ = request_import(session, projects[1].id, flaky, pace=0.08, flaky=True)
        ids.append(task_id)
    return ids


def watch(engine: Engine, ids: list[int]) -> dict[int, Any]:
    """Live progress bars until every task has finished (or the time limit)."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=40),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
    )
    bars = {
        task_id: progress.add_task(f"#{task_id}", total=100, status="pending") for task_id in ids
    }
    deadline = time.monotonic() + TIME_LIMIT
    rows: dict[int, Any] = {}
    with Live(progress, console=console, refresh_per_second=10):
        while time.monotonic() < deadline:
            with Session(engine) as session:
                rows = {
                    row.id: row
                    for row in session.execute(select(Task).where(Task.id.in_(ids))).scalars()
                }
                for task_id, row in rows.items():
                    label = f"#{task_id} {row.type:<11}"
                    retry = f" (retry {row.retry_count})" if row.retry_count else ""
                    progress.update(
                        bars[task_id],
                        completed=row.progress,
                        description=label,
                        status=f"{row.status}{retry}",
                    )
            if rows and all(row.status in FINISHED_STATUSES for row in rows.values()):
                break
            time.sleep(0.1)  # screen refresh rate
    return rows


def describe(row: Any) -> str:
    if row.status is not TaskStatus.COMPLETED:
        return str(row.error_message)
    result = row.result or {}
    if row.type == DATA_EXPORT:
        return f"{result.get('rows')} rows -> {Path(result.get('path', '')).name}"
    return f"{result.get('imported')} imported, {result.get('skipped')} bad rows skipped"


def summary(rows: dict[int, Any]) -> Table:
    table = Table(title="Final status", title_justify="left", header_style="bold")
    for column in ("id", "type", "status", "retries", "result / last error"):
        table.add_column(column)
    for task_id, row in sorted(rows.items()):
        table.add_row(str(task_id), row.type, str(row.status), str(row.retry_count), describe(row))
    return table


def start_workers(box: Sandbox, running: list[tuple[Worker, threading.Thread]]) -> None:
    """Two workers of two slots each, on threads of their own, each added to ``running``
    before its thread starts (so a Ctrl-C at any moment stops every worker started)."""
    handlers = {
        DATA_EXPORT: make_export_handler(box.engine, box.folder / "exports"),
        BULK_IMPORT: make_import_handler(box.engine),
    }
    for _ in range(2):
        worker = Worker(
            sessionmaker(box.engine),
            Task,
            handlers,
            concurrency=2,
            backoff=BackoffPolicy(base_seconds=0.5, jitter=0),
            progress_interval=0.1,
        )
        thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
        running.append((worker, thread))
        thread.start()


def main(argv: list[str]) -> int:
    """Run the demo; returns the exit status (0 when every task completed)."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )
    started = time.monotonic()
    with sandbox(DEMO_DATABASE_PREFIX, migrate) as box:
        console.print(f"[bold]sqlalchemy-taskqueue demo[/] on {box.database}")
        console.print("migrated: alembic upgrade head (tasks) + the example app's tables")
        ids = enqueue_work(box.engine, box.folder)
        console.print(f"enqueued {len(ids)} tasks: {ids}")
        running: list[tuple[Worker, threading.Thread]] = []
        try:
            start_workers(box, running)
            rows = watch(box.engine, ids)
        finally:
            for worker, _ in running:
                worker.stop()  # a worker whose run has not begun ends it at once
            for _, thread in running:
                if thread.ident is not None:  # started
                    thread.join()
        console.print()
        console.print(summary(rows))
        # what `taskqueue stats` prints, run in this process
        url = box.engine.url.render_as_string(hide_password=False)
        cli.main(["--database-url", url, "stats"], standalone_mode=False)
        exports = sorted((box.folder / "exports").glob("*.csv"))
        console.print(f"{len(exports)} CSV exports written to {box.folder / 'exports'}")
        ok = bool(rows) and all(row.status is TaskStatus.COMPLETED for row in rows.values())
        console.print(
            f"done in {time.monotonic() - started:.1f}s: "
            + ("[green]all tasks completed[/]" if ok else "[red]some tasks did not complete[/]")
        )
    console.print(f"dropped {box.database.rsplit('/', 1)[-1]} and removed {box.folder}")
    return 0 if ok else 1


if __name__ == "__main__":
    run(main)
