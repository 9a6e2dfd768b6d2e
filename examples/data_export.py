"""Data export: the four-phase export with progress, producing a real CSV file.

Phases and progress (what a polling client sees)::

    fetch items      10 -> 30 %
    generate CSV     40 -> 70 %
    store the file   75 -> 90 %
    notify the user  95 %, then completed (100 %)

Run it: ``python -m examples.data_export`` (enqueues an export and runs a worker).
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import TaskContext, TaskRepository

from .shop import (
    Item,
    Notification,
    Project,
    Task,
    connect,
    create_sample_project,
    migrate,
    run_and_show,
)

DATA_EXPORT = "data_export"
EXPORT_DIR = Path(os.environ.get("EXPORT_DIR", "exports"))


def request_export(
    session: Session, project_id: int, user_email: str | None, *, pace: float = 0
) -> int:
    """What a request handler does: enqueue in the request's own transaction.

    ``pace`` (seconds per phase) slows the export down for the demo's progress bars.
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
    """Demo pacing: ``payload["pace"]`` seconds of simulated work per step (default none)."""
    delay = float(ctx.payload.get("pace", 0))
    if delay:
        time.sleep(delay)


def make_export_handler(engine: Engine, export_dir: Path = EXPORT_DIR) -> Any:
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


def main() -> None:
    engine = connect()
    migrate(engine)
    with Session(engine) as session, session.begin():
        project = create_sample_project(session, f"export-demo-{os.getpid()}", items=250)
        task_id = request_export(session, project.id, "ada@example.com")
    print(f"enqueued export task {task_id}")
    run_and_show(engine, {DATA_EXPORT: make_export_handler(engine)}, task_id)


if __name__ == "__main__":
    main()
