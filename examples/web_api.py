"""The polling API's request checks and response bodies, shared by the Flask example
(:mod:`examples.web_polling`) and its FastAPI twin (:mod:`examples.web_polling_async`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .shop import Project, create_sample_project


def export_email(body: Any) -> tuple[str | None, str | None]:
    """``(email, error)`` from a ``POST .../exports`` body: the optional address of the
    user told when the export is ready, or why the body is refused.

    >>> export_email({"email": "ada@example.com"}), export_email({})
    (('ada@example.com', None), (None, None))
    >>> export_email({"email": "nope"})
    (None, "'email' must be an e-mail address")
    """
    email = body.get("email") if isinstance(body, dict) else None
    if email is not None and (not isinstance(email, str) or "@" not in email):
        return None, "'email' must be an e-mail address"
    return email, None


#: The largest id a ``bigint`` key can hold: a larger one names no row.
MAX_ID = 2**63 - 1


def can_exist(row_id: int) -> bool:
    """Whether ``row_id`` could name a row (a positive ``bigint``): a path id beyond it is
    answered 404 without a query, which the database (and ``get_task``) would refuse.

    >>> can_exist(42), can_exist(2**63)
    (True, False)
    """
    return 0 < row_id <= MAX_ID


def task_body(task: Any) -> dict[str, Any]:
    """What ``GET /tasks/<id>`` answers: status, progress, result or error."""
    return {
        "task_id": task.id,
        "type": task.type,
        "status": str(task.status),
        "progress": task.progress,
        "result": task.result,
        "error": task.error_message,
    }


def progress_body(project_id: int, progress: int | None) -> dict[str, Any]:
    """What ``GET /projects/<id>/exports/progress`` answers."""
    return {"project_id": project_id, "active": progress is not None, "progress": progress}


def demo_project(engine: Engine) -> None:
    """The project the examples' servers export (made once), announced on the console."""
    with Session(engine) as session, session.begin():
        project = session.query(Project).filter_by(name="web-demo").one_or_none()
        project = project or create_sample_project(session, "web-demo", items=1000)
        print(f"project {project.id} is ready: POST /projects/{project.id}/exports")
