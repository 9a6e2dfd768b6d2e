"""A web dashboard for a queue, to mount in your application or serve on its own
(``taskqueue dashboard``): counts and throughput, tasks by filter, a task's details with
live progress, retrying and cancelling, workers, schedules and flow controls.

Install the extra: ``pip install 'sqlalchemy-taskqueue[dashboard]'``.

Example::

    from fastapi import FastAPI
    from sqlalchemy_taskqueue.dashboard import create_app

    app = FastAPI()
    app.mount("/jobs", create_app(SessionLocal, Task))   # behind your own auth
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from ._adapters import AsgiDashboard, WsgiDashboard
from ._app import Dashboard, is_async_factory
from ._http import Credentials

__all__ = ["AsgiDashboard", "Credentials", "WsgiDashboard", "create_app", "create_wsgi_app"]


def _dashboard(
    session_factory: Callable[[], Any],
    model: type[Any],
    *,
    read_only: bool,
    title: str,
    credentials: Credentials | None,
) -> Dashboard:
    if not callable(session_factory):
        raise TypeError(
            f"session_factory must be callable (a sessionmaker), got {session_factory!r}"
        )
    if not hasattr(model, "__table__") or "lease_token" not in model.__table__.c:
        raise TypeError(f"model must be a task model (a TaskMixin subclass), got {model!r}")
    if not isinstance(read_only, bool):
        raise TypeError(f"read_only must be a bool, got {read_only!r}")
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"title must be a non-empty string, got {title!r}")
    if credentials is not None and not isinstance(credentials, Credentials):
        raise TypeError(f"credentials must be a Credentials, got {credentials!r}")
    return Dashboard(
        session_factory, model, read_only=read_only, title=title, credentials=credentials
    )


def create_app(
    session_factory: Callable[[], Any],
    model: type[Any],
    *,
    read_only: bool = False,
    title: str = "Task queue",
    credentials: Credentials | None = None,
) -> AsgiDashboard:
    """The dashboard of ``model``'s queue as an ASGI application, to mount in Starlette or
    FastAPI (it relies on the host application's authentication) or serve with any ASGI
    server.  ``session_factory`` is a ``sessionmaker`` or the app's own
    ``async_sessionmaker``.  ``read_only=True`` hides every action and refuses them; ``credentials``
    makes it ask for a token or a basic-auth password itself.

    Example::

        app.mount("/jobs", create_app(sessionmaker(engine), Task, read_only=True))
    """
    return AsgiDashboard(
        _dashboard(
            session_factory, model, read_only=read_only, title=title, credentials=credentials
        )
    )


def create_wsgi_app(
    session_factory: Callable[[], Session],
    model: type[Any],
    *,
    read_only: bool = False,
    title: str = "Task queue",
    credentials: Credentials | None = None,
) -> WsgiDashboard:
    """The same dashboard as a WSGI application, for Flask (mounted with werkzeug's
    ``DispatcherMiddleware``) or any WSGI server.

    Example::

        flask_app.wsgi_app = DispatcherMiddleware(
            flask_app.wsgi_app, {"/jobs": create_wsgi_app(sessionmaker(engine), Task)}
        )
    """
    if is_async_factory(session_factory):
        raise TypeError(
            "create_wsgi_app needs a sessionmaker: an async_sessionmaker serves create_app"
        )
    return WsgiDashboard(
        _dashboard(
            session_factory, model, read_only=read_only, title=title, credentials=credentials
        )
    )
