"""The dashboard as an ASGI application (Starlette, FastAPI, any ASGI server) and as a
WSGI application (Flask, any WSGI server): each turns its server's call into a
:class:`~._http.Request` for :meth:`~._app.Dashboard.handle` and writes the answer back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from ._app import Dashboard
from ._http import MAX_FORM_BYTES, Request, Response

__all__ = ["AsgiDashboard", "WsgiDashboard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


def _too_large() -> Response:
    return Response(413, "request body too large", content_type="text/plain; charset=utf-8")


class AsgiDashboard:
    """The dashboard as an ASGI 3 application.  With a ``sessionmaker`` its database
    work runs in a thread; with an ``async_sessionmaker`` it runs on the event loop
    through the ``AsyncSession`` (``run_sync``): either way the loop never blocks on it.

    Example::

        app.mount("/jobs", AsgiDashboard(Dashboard(sessionmaker(engine), Task)))
    """

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_FORM_BYTES:
                await self._send(send, _too_large())
                return
        root = scope.get("root_path", "")
        path = scope["path"]
        if root and (path == root or path.startswith(root + "/")):  # mounted below root
            path = path[len(root) :]
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", [])
        }
        request = Request(
            scope["method"],
            path or "/",
            parse_qs(scope.get("query_string", b"").decode("latin-1")),
            headers,
            body,
            base=root,
            secure=scope.get("scheme") == "https",
        )
        factory = self.dashboard.async_session_factory
        if factory is None:
            response = await asyncio.to_thread(self.dashboard.handle, request)
        else:  # the app's async engine: the pages run on the loop, awaiting the database
            async with factory() as session:
                response = await session.run_sync(
                    lambda lent: self.dashboard.handle(request, session=lent)
                )
        await self._send(send, response, head=scope["method"] == "HEAD")

    @staticmethod
    async def _send(
        send: Callable[[Message], Awaitable[None]], response: Response, *, head: bool = False
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in response.all_headers()
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if head else response.encoded()})


_REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
}


class WsgiDashboard:
    """The dashboard as a WSGI application.

    Example::

        from werkzeug.middleware.dispatcher import DispatcherMiddleware
        flask_app.wsgi_app = DispatcherMiddleware(flask_app.wsgi_app, {"/jobs": wsgi_dashboard})
    """

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_FORM_BYTES:
            response = _too_large()
        else:
            body = environ["wsgi.input"].read(length) if length > 0 else b""
            headers = {
                key[5:].replace("_", "-").lower(): value
                for key, value in environ.items()
                if key.startswith("HTTP_")
            }
            if environ.get("CONTENT_TYPE"):
                headers["content-type"] = environ["CONTENT_TYPE"]
            raw_path = environ.get("PATH_INFO", "") or "/"
            # WSGI hands paths over as latin-1 decoded bytes
            path = raw_path.encode("latin-1").decode("utf-8", "replace")
            request = Request(
                environ.get("REQUEST_METHOD", "GET"),
                path,
                parse_qs(environ.get("QUERY_STRING", "")),
                headers,
                body,
                base=environ.get("SCRIPT_NAME", "").rstrip("/"),
                secure=environ.get("wsgi.url_scheme") == "https",
            )
            response = self.dashboard.handle(request)
        status = f"{response.status} {_REASONS.get(response.status, '')}".strip()
        start_response(status, response.all_headers())
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else response.encoded()]
