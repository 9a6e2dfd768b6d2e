"""The examples' parts (handlers, web apps, models), exercised on a database of the
test's own; the commands as a person runs them are in test_example_commands.py."""

from __future__ import annotations

import csv
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from processes import wait_for
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

from examples import (
    bulk_import,
    custom_columns,
    data_export,
    web_polling,
    web_polling_async,
)
from examples.shop import Item, Notification, Project, Task, create_sample_project, migrate
from sqlalchemy_taskqueue import TaskContext, TaskRepository, TaskStatus, Worker


@pytest.fixture
def app_engine(empty_database_url: str) -> Iterator[Engine]:
    engine = sa.create_engine(empty_database_url, pool_size=10)
    migrate(engine)
    yield engine
    engine.dispose()


def run_recorded(
    engine: Engine, handler: Callable[[Any, TaskContext], Any], task_type: str
) -> tuple[Any, list[int]]:
    """Claim one task and run ``handler`` with a real context whose writes are recorded."""
    factory = sessionmaker(engine)
    with factory() as session:
        task = TaskRepository(session, Task).dequeue(task_type)
        session.commit()
    assert task is not None
    seen: list[int] = []

    def write(task_id: int, progress: int, lease_token: uuid.UUID) -> bool:
        seen.append(progress)
        with factory() as session:
            TaskRepository(session, Task).update_progress(
                task_id, progress, lease_token=lease_token
            )
            session.commit()
        return True

    context = TaskContext(
        task, progress_writer=write, progress_interval=0, worker_stopping=threading.Event()
    )
    result = handler(task, context)
    with factory() as session:
        TaskRepository(session, Task).complete_task(
            task.id, result=result, lease_token=task.lease_token
        )
        session.commit()
    return result, seen


def test_data_export_runs_four_phases_and_writes_a_csv(app_engine: Engine, tmp_path: Path) -> None:
    with Session(app_engine) as session, session.begin():
        project = create_sample_project(session, "acme", items=120)
        data_export.request_export(session, project.id, "ada@example.com")
    handler = data_export.make_export_handler(app_engine, tmp_path)
    result, progress = run_recorded(app_engine, handler, data_export.DATA_EXPORT)
    assert progress == [10, 30, 40, 70, 75, 90, 95]
    with Path(result["path"]).open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["sku", "name", "price"] and len(rows) == 121 and result["rows"] == 120
    assert rows[1] == ["acme-00000", "Item 0", "0.99"]
    with Session(app_engine) as session:
        [note] = session.scalars(select(Notification)).all()
    assert note.recipient == "ada@example.com" and result["path"] in note.message


def test_data_export_of_a_missing_project_fails(app_engine: Engine, tmp_path: Path) -> None:
    with Session(app_engine) as session, session.begin():
        task_id = data_export.request_export(session, 999, "ada@example.com")
    handlers = {data_export.DATA_EXPORT: data_export.make_export_handler(app_engine, tmp_path)}
    Worker(sessionmaker(app_engine), Task, handlers, poll_interval=0.05).run(until_empty=True)
    with Session(app_engine) as session:
        task = session.get(Task, task_id)
        assert task is not None and task.error_message == "LookupError: project 999 does not exist"


def test_bulk_import_dedupes_skips_bad_rows_and_reports_progress(
    app_engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "items.csv"
    bad = bulk_import.write_sample_csv(path, 2500, bad_every=400)
    with Session(app_engine) as session, session.begin():
        project = Project(name="imports")
        session.add(project)
        session.flush()
        project_id = project.id
        first, created = bulk_import.request_import(session, project_id, path)
        second, created_again = bulk_import.request_import(session, project_id, path)
    assert created and (second, created_again) == (first, False)
    handler = bulk_import.make_import_handler(app_engine)
    result, progress = run_recorded(app_engine, handler, bulk_import.BULK_IMPORT)
    assert bad == 6
    assert result == {
        "rows": 2500,
        "imported": 2494,
        "skipped": 6,
        "bad_lines": [401, 801, 1201, 1601, 2001, 2401],
    }
    # 10 (read), 20 (parsed), one update per 100 rows, 95
    assert progress[:2] == [10, 20] and progress[-1] == 95 and len(progress) == 2 + 25 + 1
    assert progress == sorted(progress)
    with Session(app_engine) as session:
        assert session.scalar(select(func.count()).select_from(Item)) == 2494
        # a finished import may be requested again
        _, created_after = bulk_import.request_import(session, project_id, path)
        session.commit()
    assert created_after


@pytest.mark.parametrize("price", ["NaN", "Infinity", "1e12", "99999999.995"])
def test_bulk_import_skips_a_price_the_table_cannot_hold(
    app_engine: Engine, tmp_path: Path, price: str
) -> None:
    """A price that is not a finite amount Item.price (numeric(10, 2)) can store is a bad
    row like any other: logged and skipped, not the end of the whole import."""
    path = tmp_path / "items.csv"
    path.write_text(
        f"sku,name,price\nA-1,Good,1.50\nA-2,Odd,{price}\nA-3,Good too,99999999.99\n",
        encoding="utf-8",
    )
    with Session(app_engine) as session, session.begin():
        project = Project(name=f"prices-{uuid.uuid4().hex[:6]}")
        session.add(project)
        session.flush()
        project_id = project.id
        bulk_import.request_import(session, project_id, path)
    handler = bulk_import.make_import_handler(app_engine)
    result, _ = run_recorded(app_engine, handler, bulk_import.BULK_IMPORT)
    assert result == {"rows": 3, "imported": 2, "skipped": 1, "bad_lines": [3]}
    with Session(app_engine) as session:
        skus = session.scalars(select(Item.sku).where(Item.project_id == project_id)).all()
    assert sorted(skus) == ["A-1", "A-3"]


def test_bulk_import_retry_does_not_duplicate_rows(app_engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    bulk_import.write_sample_csv(path, 300)
    with Session(app_engine) as session, session.begin():
        project = Project(name="twice")
        session.add(project)
        session.flush()
        bulk_import.request_import(session, project.id, path, flaky=True)
    factory = sessionmaker(app_engine)
    from sqlalchemy_taskqueue import BackoffPolicy

    worker = Worker(
        factory,
        Task,
        {bulk_import.BULK_IMPORT: bulk_import.make_import_handler(app_engine)},
        poll_interval=0.05,
        backoff=BackoffPolicy(base_seconds=0.05, jitter=0),
    )
    deadline = time.monotonic() + 30
    while True:
        worker.run(until_empty=True)
        with Session(app_engine) as session:
            task = session.scalars(select(Task)).one()
        if task.status is TaskStatus.COMPLETED:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)  # the retry's backoff
    assert task.retry_count == 1 and task.result["imported"] == 300
    with Session(app_engine) as session:
        assert session.scalar(select(func.count()).select_from(Item)) == 300


class HttpClient:
    """A real HTTP client against the app served on a local port."""

    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.loads(error.read())


@pytest.fixture
def served(app_engine: Engine) -> Iterator[HttpClient]:
    server = make_server("127.0.0.1", 0, web_polling.create_app(app_engine), threaded=True)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield HttpClient(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join(10)


def request_export_over_http(client: HttpClient, project_id: int) -> int:
    """Bad requests are refused; a good one answers 202 with a pending task to poll."""
    assert client.call("POST", f"/projects/{project_id}/exports", {"email": "nope"})[0] == 400
    assert client.call("POST", "/projects/999/exports", {"email": "a@b.c"})[0] == 404
    assert client.call("GET", "/tasks/999")[0] == 404
    beyond = 2**63  # no bigint id is this large: not found, not a server error
    assert client.call("GET", f"/tasks/{beyond}")[0] == 404
    assert client.call("POST", f"/projects/{beyond}/exports", {})[0] == 404
    status, headers, body = client.call(
        "POST", f"/projects/{project_id}/exports", {"email": "ada@example.com"}
    )
    assert status == 202
    task_id = int(body["task_id"])
    location = {name.lower(): value for name, value in headers.items()}["location"]
    assert location == f"/tasks/{task_id}"
    assert client.call("GET", f"/tasks/{task_id}")[2]["status"] == "pending"
    assert client.call("GET", f"/projects/{project_id}/exports/progress")[2] == {
        "project_id": project_id,
        "active": True,
        "progress": 0,
    }
    return task_id


def poll_until_exported(client: HttpClient, project_id: int, task_id: int) -> None:
    """Poll the task as a client would until it completed with the export's result."""
    deadline = time.monotonic() + 30
    while (body := client.call("GET", f"/tasks/{task_id}")[2])["status"] != "completed":
        assert time.monotonic() < deadline, body
        time.sleep(0.05)  # the client's polling interval
    assert body["progress"] == 100 and body["result"]["rows"] == 50 and body["error"] is None
    assert client.call("GET", f"/projects/{project_id}/exports/progress")[2]["active"] is False
    assert client.call("POST", f"/projects/{project_id}/exports")[0] == 202  # no e-mail


def test_web_polling_over_http(app_engine: Engine, served: HttpClient, tmp_path: Path) -> None:
    with Session(app_engine) as session, session.begin():
        project_id = create_sample_project(session, "web", items=50).id
    task_id = request_export_over_http(served, project_id)

    handlers = {data_export.DATA_EXPORT: data_export.make_export_handler(app_engine, tmp_path)}
    worker = Worker(sessionmaker(app_engine), Task, handlers, poll_interval=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        poll_until_exported(served, project_id, task_id)
    finally:
        worker.stop()
        thread.join(10)


@contextmanager
def served_async(app_engine: Engine, handlers: Any = None) -> Iterator[HttpClient]:
    """The FastAPI example served by uvicorn on a local port, on a thread of its own."""
    import uvicorn

    url = web_polling_async.asyncpg_url(app_engine.url.render_as_string(hide_password=False))
    app = web_polling_async.create_app(url, handlers)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout=30)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield HttpClient(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive()


def test_async_web_polling_over_http(app_engine: Engine, tmp_path: Path) -> None:
    with Session(app_engine) as session, session.begin():
        project_id = create_sample_project(session, "web-async", items=50).id
    with served_async(app_engine) as client:
        task_id = request_export_over_http(client, project_id)
        # a refused request writes nothing: still one task
        with Session(app_engine) as session:
            assert session.scalar(select(func.count()).select_from(Task)) == 1

    # the app with its AsyncWorker: the pending export is done while the client polls
    handlers = {data_export.DATA_EXPORT: data_export.make_export_handler(app_engine, tmp_path)}
    with served_async(app_engine, handlers) as client:
        poll_until_exported(client, project_id, task_id)


def test_web_polling_rolls_the_task_back_with_the_request(app_engine: Engine) -> None:
    app = web_polling.create_app(app_engine)
    with Session(app_engine) as session, session.begin():
        create_sample_project(session, "rollback", items=1)
    with Session(app_engine) as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 0
    assert (
        app.test_client().post("/projects/424242/exports", json={"email": "a@b.c"}).status_code
        == 404
    )
    with Session(app_engine) as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 0


def test_custom_columns_migrate_and_join(app_engine: Engine) -> None:
    custom_columns.upgrade(app_engine)
    with app_engine.connect() as connection:
        diff = compare_metadata(
            MigrationContext.configure(connection), custom_columns.Base.metadata
        )
    assert diff == []
    with Session(app_engine) as session, session.begin():
        alpha = create_sample_project(session, "alpha", items=0)
        beta = create_sample_project(session, "beta", items=0)
        custom_columns.enqueue_for_project(session, alpha, "reindex", "ada")
        custom_columns.enqueue_for_project(session, alpha, "export", "grace")
        done = custom_columns.enqueue_for_project(session, beta, "export", "ada")
        session.flush()
        session.get(custom_columns.ProjectTask, done).status = TaskStatus.CANCELLED  # type: ignore[union-attr]
    with Session(app_engine) as session:
        assert custom_columns.active_tasks_per_project(session) == [("alpha", 2)]
        asked = custom_columns.tasks_requested_by(session, "ada")
        assert [(task.project.name, task.type) for task in asked] == [
            ("alpha", "reindex"),
            ("beta", "export"),
        ]
