"""A web app that enqueues an export inside the request's transaction and lets the client
poll for status and progress (Flask).

Needs: a clone of the repository and the ``migrations`` and ``web`` extras
(``pip install -e '.[migrations,web]'``).

Endpoints:

* ``POST /projects/<id>/exports`` — enqueue, answer ``202`` at once with the task id and
  a ``Location`` to poll; an optional JSON body ``{"email": ...}`` names who is told
  when the export is ready.
* ``GET /tasks/<id>`` — status, progress (0-100), result or error.
* ``GET /projects/<id>/exports/progress`` — progress of the project's active export, if
  any (``GetTaskProgress`` in the original Go design).

Run it from the root of the clone: ``python -m examples.web_polling`` (serves on
http://127.0.0.1:8000 with a worker in the same process), then in another terminal::

    curl -X POST localhost:8000/projects/1/exports -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com"}'
    curl localhost:8000/tasks/1      # repeat: progress moves 10 ... 90, then completed

Knobs: ``--pace SECONDS`` (default 2): simulated work after each of the export's first
three phases, so an export takes about 6 s and polling shows its progress move (0: full
speed); ``--port`` (default 8000).  Ctrl-C stops the server and the worker; the
example's database and folder (:mod:`examples.sandbox`) are removed.
"""

from __future__ import annotations

import socketserver
import threading
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from sqlalchemy_taskqueue import TaskRepository, Worker

from .data_export import DATA_EXPORT, make_export_handler, request_export
from .sandbox import missing_extra, run, sandbox
from .shop import Project, Task, migrate
from .web_api import can_exist, demo_project, export_email, progress_body, task_body, web_options

try:
    from flask import Flask, request
    from werkzeug.serving import make_server
except ImportError as exc:
    raise missing_extra("examples.web_polling", "migrations,web", exc) from None


def create_app(engine: Engine, *, pace: float = 0) -> Flask:
    """The Flask application, using ``engine`` for its per-request sessions; its exports
    take ``pace`` seconds of simulated work per phase (:func:`examples.data_export.pace`)."""
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
            task_id = request_export(session, project_id, email, pace=pace)
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


def main(argv: list[str]) -> int:
    """Serve the app with a worker until Ctrl-C."""
    options = web_options("examples.web_polling").parse_args(argv)
    with sandbox("taskqueue_example_web", migrate) as box:
        box.announce("examples.web_polling")
        demo_project(box.engine, options)
        handlers = {DATA_EXPORT: make_export_handler(box.engine, box.folder)}
        worker = Worker(sessionmaker(box.engine), Task, handlers)
        thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
        thread.start()
        server = make_server("127.0.0.1", options.port, create_app(box.engine, pace=options.pace))
        if isinstance(server, socketserver.ThreadingMixIn):  # it is: threaded by default
            server.block_on_close = False  # Ctrl-C never waits for a client's open connection
        try:
            server.serve_forever()  # returns on Ctrl-C
        finally:
            worker.stop()
            thread.join()
    return 0


if __name__ == "__main__":
    run(main)
