"""The polling API's request checks and response bodies, shared by the Flask example
(:mod:`examples.web_polling`) and its FastAPI twin (:mod:`examples.web_polling_async`)."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .shop import create_sample_project

#: Seconds of simulated work after each of the export's first three phases, by default:
#: an export then takes about 6 s, so polling ``GET /tasks/<id>`` sees progress move.
DEFAULT_PACE = 2.0


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


def web_options(example: str) -> argparse.ArgumentParser:
    """The web examples' command line: ``--port`` and ``--pace``.

    >>> web_options("examples.web_polling").parse_args(["--pace", "0.5"])
    Namespace(port=8000, pace=0.5)
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m {example}",
        description="Serve the polling API on 127.0.0.1 with a worker; Ctrl-C stops both "
        "and drops the example's database.",
    )
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    parser.add_argument(
        "--pace",
        type=float,
        default=DEFAULT_PACE,
        metavar="SECONDS",
        help="simulated work after each of an export's first three phases, so that polling "
        f"shows its progress move (default {DEFAULT_PACE}: about {3 * DEFAULT_PACE:.0f} s "
        "an export; 0 for full speed)",
    )
    return parser


def demo_project(engine: Engine, options: argparse.Namespace) -> int:
    """The project the examples' servers export, with what to type to watch an export."""
    with Session(engine) as session, session.begin():
        project_id = create_sample_project(session, "web-demo", items=1000).id
    base = f"http://127.0.0.1:{options.port}"
    print(
        f"project {project_id} is ready; an export takes about {3 * options.pace:.0f} s "
        f"(--pace {options.pace}). In another terminal:\n"
        f"  curl -X POST {base}/projects/{project_id}/exports\n"
        f"  curl {base}/tasks/1    # again and again: progress moves, then completed (100)",
        flush=True,
    )
    return project_id
