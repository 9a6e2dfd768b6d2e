"""The web polling example on the async twin: FastAPI, ``AsyncSession`` over asyncpg,
``AsyncTaskRepository`` in the request handlers and an ``AsyncWorker`` in the app's own
event loop.

Needs: a clone of the repository and the ``migrations`` and ``web-async`` extras
(``pip install -e '.[migrations,web-async]'``).

The endpoints are those of :mod:`examples.web_polling`:

* ``POST /projects/{id}/exports`` — enqueue in the request's transaction, answer ``202``
  with the task id and a ``Location`` to poll; optional JSON body ``{"email": ...}``.
* ``GET /tasks/{id}`` — status, progress (0-100), result or error.
* ``GET /projects/{id}/exports/progress`` — progress of the project's active export.

The export handler is the sync example's plain function: the ``AsyncWorker`` runs it
in its thread pool, so its blocking database and file work never stalls the requests
served on the loop.

Run it from the root of the clone: ``python -m examples.web_polling_async``.  It serves
on http://127.0.0.1:8000 and is polled with the ``curl`` commands shown in
:mod:`examples.web_polling` (and printed at start).  Knobs, as there: ``--pace SECONDS``
of simulated work after each of an export's first three phases (default 2, about 6 s
an export, so polling shows progress move; 0 for full speed) and ``--port`` (8000).
Ctrl-C shuts the app down, its worker handing back an unfinished export, and removes
the example's database and folder (:mod:`examples.sandbox`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from sqlalchemy_taskqueue import AsyncTaskRepository, AsyncWorker

from .data_export import DATA_EXPORT, export_payload, make_export_handler
from .sandbox import missing_extra, run, sandbox
from .shop import Project, Task, migrate
from .web_api import can_exist, demo_project, export_email, progress_body, task_body, web_options

try:
    import asyncpg  # noqa: F401  (the driver the app's URL names)
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
except ImportError as exc:
    raise missing_extra("examples.web_polling_async", "migrations,web-async", exc) from None


def asyncpg_url(url: str) -> str:
    """The same database through asyncpg.

    >>> asyncpg_url("postgresql://app@db/shop")
    'postgresql+asyncpg://app@db/shop'
    """
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(False)


def create_app(
    database_url: str, handlers: Mapping[str, Any] | None = None, *, pace: float = 0
) -> FastAPI:
    """The FastAPI application on ``database_url`` (an asyncpg URL); its exports take
    ``pace`` seconds of simulated work per phase (:func:`examples.data_export.pace`).

    With ``handlers``, an :class:`~sqlalchemy_taskqueue.AsyncWorker` runs them in the
    app's event loop for the app's lifetime (the server handles signals; the app's
    shutdown stops the worker gracefully).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(database_url, pool_size=10)
        app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
        worker = AsyncWorker(app.state.sessions, Task, handlers) if handlers else None
        running = (
            asyncio.ensure_future(worker.run(install_signal_handlers=False)) if worker else None
        )
        try:
            yield
        finally:
            if worker is not None and running is not None:
                worker.stop()
                await running
            await engine.dispose()

    app = FastAPI(title="exports", lifespan=lifespan)

    @app.post("/projects/{project_id}/exports")
    async def start_export(project_id: int, request: Request) -> JSONResponse:
        email, error = export_email(await request.json() if await request.body() else {})
        if error is not None:
            return JSONResponse({"error": error}, 400)
        # the request's unit of work: the task commits with it or not at all
        async with request.app.state.sessions.begin() as session:
            if not can_exist(project_id) or await session.get(Project, project_id) is None:
                return JSONResponse({"error": f"project {project_id} does not exist"}, 404)
            repo = AsyncTaskRepository(session, Task)
            task_id = await repo.enqueue(DATA_EXPORT, export_payload(project_id, email, pace=pace))
        body = {"task_id": task_id, "status": "pending", "progress": 0}
        return JSONResponse(body, 202, headers={"Location": f"/tasks/{task_id}"})

    @app.get("/tasks/{task_id}")
    async def task_status(task_id: int, request: Request) -> JSONResponse:
        task = None
        if can_exist(task_id):
            async with request.app.state.sessions() as session:
                task = await AsyncTaskRepository(session, Task).get_task(task_id)
        if task is None:
            return JSONResponse({"error": f"task {task_id} does not exist"}, 404)
        return JSONResponse(task_body(task))

    @app.get("/projects/{project_id}/exports/progress")
    async def export_progress(project_id: int, request: Request) -> dict[str, Any]:
        async with request.app.state.sessions() as session:
            progress = await AsyncTaskRepository(session, Task).get_task_progress(
                DATA_EXPORT, project_id=project_id
            )
        return progress_body(project_id, progress)

    return app


def main(argv: list[str]) -> int:
    """Serve the app, its worker in the app's event loop, until Ctrl-C."""
    options = web_options("examples.web_polling_async").parse_args(argv)
    with sandbox("taskqueue_example_web_async", migrate) as box:
        box.announce("examples.web_polling_async")
        demo_project(box.engine, options)
        url = asyncpg_url(box.engine.url.render_as_string(hide_password=False))
        handlers = {DATA_EXPORT: make_export_handler(box.engine, box.folder)}
        app = create_app(url, handlers, pace=options.pace)
        uvicorn.run(app, host="127.0.0.1", port=options.port)
    return 0


if __name__ == "__main__":
    run(main)
