"""A web app that enqueues an export inside the request's transaction and lets the client
poll for status and progress (Flask; install the ``web`` extra).

Endpoints:

* ``POST /projects/<id>/exports`` — enqueue, answer ``202`` at once with the task id and
  a ``Location`` to poll; an optional JSON body ``{"email": ...}`` names who is told
  when the export is ready.
* ``GET /tasks/<id>`` — status, progress (0-100), result or error.
* ``GET /projects/<id>/exports/progress`` — progress of the project's active export, if
  any (``GetTaskProgress`` in the original Go design).

Run it: ``python -m examples.web_polling`` (serves on http://127.0.0.1:8000 with a worker
in the same process), then::

    curl -X POST localhost:8000/projects/1/exports -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com"}'
    curl localhost:8000/tasks/1
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask, request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from sqlalchemy_taskqueue import TaskRepository, Worker

from .data_export import DATA_EXPORT, make_export_handler, request_export
from .shop import Project, Task, connect, migrate
from .web_api import can_exist, demo_project, export_email, progress_body, task_body


def create_app(engine: Engine) -> Flask:
    """The Flask application, using ``engine`` for its per-request sessions."""
    app = Flask(__name__)
    factory = sessionmaker(engine)

    @app.post("/projects/<int:project_id>/exports")
    def start_export(project_id: int) -> Any:
        email, error = export_email(request.get_json(silent=True) or {})
        if error is not None:
            return {"error": error}, 400
        # the request's unit of work: the task commits with it or not at all
        with factory.begin() as session:
            if not can_exist(project_id) or session.get(Project, project_id) is None:
                return {"error": f"project {project_id} does not exist"}, 404
            task_id = request_export(session, project_id, email)
        body = {"task_id": task_id, "status": "pending", "progress": 0}
        return body, 202, {"Location": f"/tasks/{task_id}"}

    @app.get("/tasks/<int:task_id>")
    def task_status(task_id: int) -> Any:
        with factory() as session:
            task = TaskRepository(session, Task).get_task(task_id) if can_exist(task_id) else None
            if task is None:
                return {"error": f"task {task_id} does not exist"}, 404
            return task_body(task)

    @app.get("/projects/<int:project_id>/exports/progress")
    def export_progress(project_id: int) -> Any:
        with factory() as session:
            progress = TaskRepository(session, Task).get_task_progress(
                DATA_EXPORT, project_id=project_id
            )
        return progress_body(project_id, progress)

    return app


def main() -> None:
    engine = connect()
    migrate(engine)
    demo_project(engine)
    worker = Worker(sessionmaker(engine), Task, {DATA_EXPORT: make_export_handler(engine)})
    threading.Thread(target=worker.run, daemon=True).start()
    create_app(engine).run(host="127.0.0.1", port=8000)


if __name__ == "__main__":
    main()
