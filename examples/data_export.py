"""Data export: the four-phase export with progress, producing a real CSV file.

Phases and progress (what a polling client sees)::

    fetch items      10 -> 30 %
    generate CSV     40 -> 70 %
    store the file   75 -> 90 %
    notify the user  95 %, then completed (100 %)

Needs: a clone of the repository and the ``migrations`` extra
(``pip install -e '.[migrations]'``).

Run it from the root of the clone: ``python -m examples.data_export``.  It enqueues an
export of a sample project of 250 items, runs a worker until the export is done and
prints the task's final state and the first lines of the CSV.  It runs on a database of
its own and a temporary folder, both removed at the end (:mod:`examples.sandbox`).
"""

from __future__ import annotations

import csv
import io
import itertools
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import TaskContext, TaskRepository

from .sandbox import run, sandbox
from .shop import (
    Item,
    Notification,
    Project,
    Task,
    create_sample_project,
    migrate,
    run_and_show,
)

DATA_EXPORT = "data_export"


def request_export(
    session: Session, project_id: int, user_email: str | None, *, pace: float = 0
) -> int:
    """What a request handler does: enqueue in the request's own transaction.

    ``pace`` (seconds of simulated work after each of the first three phases) slows the
    export down, for the demo's progress bars and for a client polling its progress.
    """
    return TaskRepository(session, Task).enqueue(
        DATA_EXPORT, export_payload(project_id, user_email, pace=pace)
    )


def export_payload(project_id: int, user_email: str | None, *, pace: float = 0) -> dict[str, Any]:
    """The export task's payload (shared by the sync and async web examples)."""
    payload: dict[str, Any] = {"project_id": project_id, "user_email": user_email}
    if pace:
        payload["pace"] = pace
    return payload


def pace(ctx: TaskContext) -> None:
    """Simulated work: ``payload["pace"]`` seconds per step (none by default), cut short
    when the worker stops (the task is then handed back)."""
    deadline = time.monotonic() + float(ctx.payload.get("pace", 0))
    while (left := deadline - time.monotonic()) > 0:
        ctx.raise_if_stopping()
        time.sleep(min(left, 0.1))  # the simulated work itself


def make_export_handler(engine: Engine, export_dir: Path) -> Any:
    """The handler, bound to the app's database and the folder exports are stored in."""

    def export_project(task: Any, ctx: TaskContext) -> dict[str, Any]:
        project_id = int(ctx.payload["project_id"])

        # Phase 1: fetch (10 -> 30 %)
        ctx.update_progress(10)
        with Session(engine) as session:
            project = session.get(Project, project_id)
            if project is None:
                raise LookupError(f"project {project_id} does not exist")
            rows = session.execute(
                select(Item.sku, Item.name, Item.price)
                .where(Item.project_id == project_id)
                .order_by(Item.id)
            ).all()
            project_name = project.name
        ctx.update_progress(30)
        pace(ctx)

        # Phase 2: generate the CSV (40 -> 70 %)
        ctx.update_progress(40)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["sku", "name", "price"])
        writer.writerows((sku, name, f"{price:.2f}") for sku, name, price in rows)
        ctx.update_progress(70)
        pace(ctx)

        # Phase 3: store it (75 -> 90 %)
        ctx.update_progress(75)
        export_dir.mkdir(parents=True, exist_ok=True)
        path = export_dir / f"project-{project_id}-task-{task.id}.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8")
        ctx.update_progress(90)
        pace(ctx)

        # Phase 4: notify (95 %)
        if ctx.payload.get("user_email"):
            with Session(engine) as session, session.begin():
                session.add(
                    Notification(
                        recipient=ctx.payload["user_email"],
                        message=f"Your export of {project_name} is ready: {path}",
                    )
                )
        ctx.update_progress(95)
        return {"path": str(path), "rows": len(rows)}

    return export_project


def main(argv: list[str]) -> int:
    """Export a sample project with a worker; 0 when the export completed."""
    with sandbox("taskqueue_example_export", migrate) as box:
        box.announce("examples.data_export")
        with Session(box.engine) as session, session.begin():
            project = create_sample_project(session, "acme", items=250)
            task_id = request_export(session, project.id, "ada@example.com")
        print(f"enqueued export task {task_id}")
        handlers = {DATA_EXPORT: make_export_handler(box.engine, box.folder)}
        task = run_and_show(box.engine, handlers, task_id)
        if task.result is None:
            return 1
        with Path(task.result["path"]).open(encoding="utf-8") as handle:
            lines = [line.rstrip() for line in itertools.islice(handle, 3)]
        print("the CSV begins:", *lines, sep="\n  ")
    return 0


if __name__ == "__main__":
    run(main)
