"""The dashboard's tests: a task model with an application column, and clients that
talk to the dashboard through its WSGI and ASGI forms as a browser would (cookies kept,
forms posted url-encoded)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from conftest import declare_task_model, queue_tables
from sqlalchemy import BigInteger, Engine, text
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker
from werkzeug.test import Client

from sqlalchemy_taskqueue import TaskRepository
from sqlalchemy_taskqueue.dashboard import create_wsgi_app

TOKEN_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def project_model(engine: Engine) -> Iterator[type[Any]]:
    """A task model carrying the application's own ``project_id`` column."""
    project_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    model = declare_task_model("tasks_dashboard", project_id=project_id)
    model.metadata.create_all(engine)
    yield model
    model.metadata.drop_all(engine)


@pytest.fixture
def model(project_model: type[Any], engine: Engine) -> type[Any]:
    tables = ", ".join(table.name for table in queue_tables(project_model))
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    return project_model


@pytest.fixture
def queue(session_factory: sessionmaker[Session], model: type[Any]) -> Iterator[Any]:
    """A repository on a session of its own (``queue.session.commit()`` to publish)."""
    with session_factory() as session:
        yield TaskRepository(session, model)


class Browser:
    """A WSGI client that keeps cookies and posts a page's forms with their CSRF token."""

    def __init__(self, app: Any) -> None:
        self.client = Client(app)
        self.last_token = ""

    def get(self, path: str, **kwargs: Any) -> Any:
        response = self.client.get(path, **kwargs)
        found = TOKEN_FIELD.search(response.get_data(as_text=True))
        if found:
            self.last_token = found.group(1)
        return response

    def post(self, path: str, fields: dict[str, str] | None = None, *, csrf: bool = True) -> Any:
        data = dict(fields or {})
        if csrf:
            data.setdefault("csrf_token", self.last_token)
        return self.client.post(
            path,
            data=urlencode(data),
            content_type="application/x-www-form-urlencoded",
        )


@pytest.fixture
def browser(session_factory: sessionmaker[Session], model: type[Any]) -> Browser:
    return Browser(create_wsgi_app(session_factory, model))


def text_of(response: Any) -> str:
    return str(response.get_data(as_text=True))


def asgi_get(
    app: Any, path: str, *, root_path: str = "", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """One GET through the ASGI interface, as a server mounting it at ``root_path``."""
    return asgi_request(app, "GET", path, root_path=root_path, headers=headers)


def asgi_request(
    app: Any,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    root_path: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    """One request through the ASGI interface; its status, headers (the last of each
    name) and body."""
    parts = urlsplit(path)
    scope = {
        "type": "http",
        "method": method,
        "path": root_path + parts.path,
        "root_path": root_path,
        "query_string": parts.query.encode(),
        "headers": [(b"host", b"testserver")]
        + [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, answer = sent
    answer_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], answer_headers, answer["body"].decode()


def cookie_value(set_cookie: str, name: str) -> str:
    jar: SimpleCookie = SimpleCookie()
    jar.load(set_cookie)
    return jar[name].value
