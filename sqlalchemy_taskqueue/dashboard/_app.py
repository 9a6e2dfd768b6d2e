"""The dashboard itself: routes a :class:`~._http.Request` to its page or action and
renders the answer with Jinja2 (autoescaped: a payload, an error message, a task type or
a column value is always shown as text).

Every read goes through the repository's monitoring methods and never locks a queue row;
every action goes through the repository's own fenced methods, in a transaction of its
own, and answers with a redirect (POST, then GET).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue._validation import MANAGED_COLUMNS
from sqlalchemy_taskqueue.exceptions import TaskQueueError, optional_dependency
from sqlalchemy_taskqueue.repository import TaskRepository
from sqlalchemy_taskqueue.status import TaskStatus

from ._http import (
    AUTH_COOKIE,
    CSRF_COOKIE,
    CSRF_FIELD,
    Credentials,
    Request,
    Response,
    cookie,
    csrf_token_of,
    has_valid_csrf,
    parse_form,
)

with optional_dependency("dashboard", "jinja2", feature="the dashboard"):
    from jinja2 import Environment, PackageLoader, select_autoescape

__all__ = ["Dashboard", "is_async_factory"]

#: The session lent to the request being handled (see :meth:`Dashboard.handle`).
_LENT: ContextVar[Session | None] = ContextVar("taskqueue_dashboard_session", default=None)


def is_async_factory(factory: Any) -> bool:
    """Whether ``factory`` makes ``AsyncSession`` objects (an ``async_sessionmaker``).

    Example::

        is_async_factory(sessionmaker(engine))  # False
    """
    made = getattr(factory, "class_", None)
    if not isinstance(made, type):
        return False
    try:
        from sqlalchemy.ext.asyncio import AsyncSession
    except ImportError:  # pragma: no cover - SQLAlchemy without its asyncio extension
        return False
    return issubclass(made, AsyncSession)


#: How far back the overview counts finished tasks.
OVERVIEW_WINDOW = timedelta(hours=24)
#: Tasks per page of the task list.
PAGE_SIZE = 50
#: How often open pages refresh their live parts, in milliseconds.
REFRESH_MS = 2000
#: The columns of every task model; the others are the application's own.
_QUEUE_COLUMNS = MANAGED_COLUMNS | {"timeout_seconds"}
_STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
_TASK_PATH = re.compile(r"/tasks/([0-9]{1,18})(/retry|/cancel|/discard)?")
#: Where an action may send the browser back to: a path of this dashboard, printable
#: ASCII without spaces (nothing a browser would read as another site, no header break).
_BACK = re.compile(r"/(?![/\\])[\x21-\x7e]*")
_SCHEDULE_PATH = re.compile(r"/schedules/(pause|resume|run)")


class _Refused(Exception):
    """A request the dashboard answers with an error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _parse_date(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _Refused(400, f"{name} must be a date or a date and time, got {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


class Dashboard:
    """The dashboard of one queue (its task model), served by an adapter.

    Example::

        dashboard = Dashboard(sessionmaker(engine), Task)
        response = dashboard.handle(Request("GET", "/", {}, {}))
    """

    def __init__(
        self,
        session_factory: Callable[[], Any],
        model: type[Any],
        *,
        read_only: bool = False,
        title: str = "Task queue",
        credentials: Credentials | None = None,
    ) -> None:
        self._session_factory = session_factory
        #: An ``async_sessionmaker``: the ASGI form lends each request one of its
        #: sessions (run through ``run_sync``); ``None`` for a plain ``sessionmaker``.
        self.async_session_factory = session_factory if is_async_factory(session_factory) else None
        self._model = model
        self.read_only = read_only
        self._title = title
        self._credentials = credentials
        self._secret = secrets.token_bytes(32)
        self._columns = _column_keys(model)
        table = model.__table__
        self._app_columns = [column.name for column in table.c if column.name not in _QUEUE_COLUMNS]
        self._templates = Environment(
            loader=PackageLoader("sqlalchemy_taskqueue.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters["pretty_json"] = _pretty_json
        self._templates.filters["when"] = self._format_when

    # ------------------------------------------------------------------ dispatch

    def handle(self, request: Request, *, session: Session | None = None) -> Response:
        """The answer to ``request``; with ``session``, every read and action of the
        request uses it (a session lent by the caller, as the ASGI form lends the sync
        face of an ``AsyncSession``) instead of one from the session factory.

        Example::

            dashboard.handle(Request("GET", "/tasks", {"status": ["failed"]}, {}))
        """
        token = _LENT.set(session)
        try:
            return self._handle(request)
        finally:
            _LENT.reset(token)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A session for one read or one action: the lent one, or a new one."""
        lent = _LENT.get()
        if lent is None:
            if self.async_session_factory is not None:
                raise TypeError("an async_sessionmaker serves the ASGI form of the dashboard only")
            with self._session_factory() as session:
                yield session
            return
        try:
            yield lent
        finally:
            if lent.in_transaction():  # a read ends its transaction, as closing would
                lent.rollback()

    def _handle(self, request: Request) -> Response:
        credentials = self._credentials
        if credentials is not None:
            if not credentials.admits(request):
                return credentials.challenge()
            if credentials.token is not None and request.arg("token") == credentials.token:
                # remembered by a digest, and out of the address bar (and the history)
                kept = _first_values(request)
                query = f"?{urlencode(kept)}" if kept else ""
                return Response(
                    303,
                    "",
                    headers=[
                        ("location", f"{request.base}{request.path}{query}"),
                        cookie(AUTH_COOKIE, credentials.cookie_value, request),
                    ],
                )
        try:
            if request.method in ("GET", "HEAD"):
                response = self._get(request)
            elif request.method == "POST":
                response = self._post(request)
            else:
                raise _Refused(405, f"method {request.method} is not allowed")
        except _Refused as refused:
            response = self._page(request, "error.html", refused.status, message=refused.message)
        return response

    def _get(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        pages: dict[str, Callable[[Request], Response]] = {
            "/": self._overview,
            "/tasks": self._tasks,
            "/failed": self._failed,
            "/workers": self._workers,
            "/schedules": self._schedules,
            "/controls": self._controls,
        }
        if path in pages:
            return pages[path](request)
        match = _TASK_PATH.fullmatch(path)
        if match and match.group(2) is None:
            return self._task(request, int(match.group(1)))
        raise _Refused(404, f"no page at {path}")

    def _post(self, request: Request) -> Response:
        form = parse_form(request)
        if not has_valid_csrf(request, form):
            raise _Refused(403, "this action lacks its CSRF token: reload the page and try again")
        if self.read_only:
            raise _Refused(403, "this dashboard is read-only")
        path = request.path.rstrip("/")
        match = _TASK_PATH.fullmatch(path)
        if match and match.group(2):
            task_id = int(match.group(1))
            task_actions: dict[str, tuple[Callable[[TaskRepository[Any]], Any], str]] = {
                "/retry": (
                    lambda repo: repo.retry_task(task_id),
                    f"task {task_id} is pending again",
                ),
                "/cancel": (lambda repo: self._cancel(repo, task_id), f"task {task_id} cancelled"),
                "/discard": (
                    lambda repo: self._discard(repo, task_id),
                    f"task {task_id} discarded",
                ),
            }
            action, done = task_actions[match.group(2)]
            return self._act(request, form, action, done)
        match = _SCHEDULE_PATH.fullmatch(path)
        if match:
            name, verb = form.get("name", ""), match.group(1)
            actions: dict[str, Callable[[TaskRepository[Any]], Any]] = {
                "pause": lambda repo: repo.pause_schedule(name),
                "resume": lambda repo: repo.resume_schedule(name),
                "run": lambda repo: repo.run_schedule(name),
            }
            return self._act(request, form, actions[verb], f"schedule {name}: {verb} done")
        task_type = form.get("task_type", "").strip() or None
        scope = task_type or "the whole queue"
        by_type: dict[str, tuple[Callable[[TaskRepository[Any]], Any], str]] = {
            "/controls/pause": (lambda repo: repo.pause(task_type), f"paused {scope}"),
            "/controls/resume": (lambda repo: repo.resume(task_type), f"resumed {scope}"),
            "/controls/rate-limit": (
                lambda repo: self._set_limit(repo, form),
                f"rate limit of {task_type} set",
            ),
            "/controls/rate-limit/clear": (
                lambda repo: repo.clear_rate_limit(task_type or ""),
                f"rate limit of {task_type} cleared",
            ),
        }
        if path in by_type:
            action, done = by_type[path]
            return self._act(request, form, action, done)
        if path == "/failed/retry":  # the filters of the page it was sent from
            return self._act(
                request,
                form,
                self._retry_matching(request),
                lambda count: f"{count} failed task(s) pending again",
            )
        raise _Refused(404, f"no action at {path}")

    # ------------------------------------------------------------------ actions

    @staticmethod
    def _cancel(repo: TaskRepository[Any], task_id: int) -> None:
        if not repo.cancel_task(task_id):
            raise _Refused(409, f"task {task_id} has already finished")

    @staticmethod
    def _discard(repo: TaskRepository[Any], task_id: int) -> None:
        if not repo.discard_task(task_id):
            raise _Refused(409, f"task {task_id} has not finished: cancel it first")

    def _retry_matching(self, request: Request) -> Callable[[TaskRepository[Any]], int]:
        filters = self._filters(request)

        def retry(repo: TaskRepository[Any]) -> int:
            return repo.retry_failed_tasks(
                filters["task_type"],
                created_after=filters["created_after"],
                created_before=filters["created_before"],
                columns=filters["columns"],
            )

        return retry

    @staticmethod
    def _set_limit(repo: TaskRepository[Any], form: dict[str, str]) -> None:
        try:
            limit = int(form.get("limit", ""))
            seconds = float(form.get("per_seconds", ""))
            per = timedelta(seconds=seconds)
        except (ValueError, OverflowError):
            raise _Refused(
                400, "the limit must be a whole number and its period a number of seconds"
            ) from None
        repo.set_rate_limit(form.get("task_type", ""), limit, per=per)

    def _act(
        self,
        request: Request,
        form: dict[str, str],
        action: Callable[[TaskRepository[Any]], Any],
        done: str | Callable[[Any], str],
    ) -> Response:
        try:
            with self._session() as session, session.begin():
                outcome = action(self._repository(session))
        except (TaskQueueError, ValueError, TypeError, OverflowError) as error:
            raise _Refused(400, str(error)) from None
        back = form.get("next", "")
        if not _BACK.fullmatch(back):  # never a redirect to another site
            back = "/"
        notice = done(outcome) if callable(done) else done
        separator = "&" if "?" in back else "?"
        signed = urlencode({"notice": notice, "sig": self._signature(notice)})
        return Response(303, "", headers=[("location", f"{request.base}{back}{separator}{signed}")])

    def _signature(self, notice: str) -> str:
        """Only notices this dashboard wrote are shown: a link cannot put words in it."""
        return hmac.new(self._secret, notice.encode(), hashlib.sha256).hexdigest()[:32]

    def _notice(self, request: Request) -> str | None:
        notice, signature = request.arg("notice"), request.arg("sig") or ""
        if notice is None or not hmac.compare_digest(
            signature.encode(), self._signature(notice).encode()
        ):
            return None
        return notice

    # ------------------------------------------------------------------ pages

    def _repository(self, session: Session) -> TaskRepository[Any]:
        return TaskRepository(session, self._model)

    def _overview(self, request: Request) -> Response:
        with self._session() as session:
            repo = self._repository(session)
            # the pending tasks from the queue's depth, the others through their partial
            # indexes: no count reads the whole table
            depth = repo.queue_depth()
            counts = repo.recent_status_counts(OVERVIEW_WINDOW)
            timeline = repo.outcome_timeline(timedelta(hours=1), timedelta(minutes=5))
            paused = repo.paused()
            keys = repo.keys_at_limit()
            limits = repo.rate_limits()
            handled = {task_type for worker in repo.workers() for task_type in worker.task_types}
        by_type: dict[str, dict[str, int]] = {}
        for row in depth:
            by_type.setdefault(row.task_type, {})[TaskStatus.PENDING.value] = (
                row.ready + row.scheduled
            )
        for count in counts:
            by_type.setdefault(count.task_type, {})[count.status.value] = count.count
        totals = {
            status.value: sum(per_type.get(status.value, 0) for per_type in by_type.values())
            for status in TaskStatus
        }
        finished = sum(bar.completed + bar.failed for bar in timeline)
        failed = sum(bar.failed for bar in timeline)
        peak = max([bar.completed + bar.failed for bar in timeline] + [1])
        return self._page(
            request,
            "overview.html",
            200,
            by_type=by_type,
            totals=totals,
            depth=depth,
            timeline=timeline,
            peak=peak,
            finished=finished,
            failure_rate=(failed / finished if finished else 0.0),
            paused=paused,
            keys=keys,
            limits=[limit for limit in limits if limit.limit],
            unhandled=sorted({row.task_type for row in depth} - handled),
            window_hours=int(OVERVIEW_WINDOW.total_seconds() // 3600),
        )

    def _filters(self, request: Request) -> dict[str, Any]:
        status = request.arg("status")
        columns = {}
        for name in self._app_columns:
            value = request.arg(f"col.{name}")
            if value is not None:
                columns[name] = self._column_value(name, value)
        before_id = request.arg("before_id")
        if before_id is not None and not re.fullmatch(r"[0-9]{1,18}", before_id):
            raise _Refused(400, f"before_id must be a task id, got {before_id!r}")
        return {
            "status": status,
            "task_type": request.arg("type"),
            "created_after": _parse_date("from", request.arg("from")),
            "created_before": _parse_date("to", request.arg("to")),
            "columns": columns,
            "search": request.arg("search"),
            "before_id": int(before_id) if before_id else None,
        }

    def _column_value(self, name: str, text: str) -> Any:
        column = self._model.__table__.c[name]
        try:
            python_type = column.type.python_type
        except NotImplementedError:
            return text
        if python_type is bool:
            return text.lower() in ("1", "true", "yes", "on")
        if python_type is int:
            if not re.fullmatch(r"-?[0-9]{1,18}", text):
                raise _Refused(400, f"{name} must be a whole number, got {text!r}")
            return int(text)
        if python_type is float:
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise _Refused(400, f"{name} must be a number, got {text!r}")
            return value
        return text

    def _browse(self, request: Request, filters: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            with self._session() as session:
                return self._repository(session).browse_tasks(**filters, limit=PAGE_SIZE)
        except (ValueError, TypeError, TaskQueueError) as error:
            raise _Refused(400, str(error)) from None

    def _tasks(self, request: Request, *, template: str = "tasks.html") -> Response:
        filters = self._filters(request)
        if template == "failed.html":
            filters["status"] = TaskStatus.FAILED.value
        tasks = self._browse(request, filters)
        kept = {
            name: values[0]
            for name, values in request.query.items()
            if name not in ("before_id", "notice", "sig", "token") and values and values[0]
        }
        next_page = (
            urlencode({**kept, "before_id": tasks[-1]["id"]}) if len(tasks) == PAGE_SIZE else None
        )
        matching = {
            name: value
            for name, value in kept.items()
            if name in ("type", "from", "to") or name.startswith("col.")
        }
        return self._page(
            request,
            template,
            200,
            tasks=tasks,
            retry_url="/failed/retry" + (f"?{urlencode(matching)}" if matching else ""),
            filtered=bool(matching),
            filters=kept,
            next_page=next_page,
            statuses=[status.value for status in TaskStatus],
            app_columns=self._app_columns,
        )

    def _failed(self, request: Request) -> Response:
        return self._tasks(request, template="failed.html")

    def _task(self, request: Request, task_id: int) -> Response:
        with self._session() as session:
            task = self._repository(session).get_task(task_id)
            if task is None:
                raise _Refused(404, f"no task {task_id}")
            row = {name: getattr(task, attribute) for name, attribute in self._columns}
        template = "task_live.html" if request.arg("part") == "live" else "task.html"
        return self._page(
            request,
            template,
            200,
            task=row,
            app_columns=self._app_columns,
            running=row["status"] == TaskStatus.IN_PROGRESS.value,
        )

    def _workers(self, request: Request) -> Response:
        with self._session() as session:
            workers = self._repository(session).workers()
        return self._page(request, "workers.html", 200, workers=workers)

    def _schedules(self, request: Request) -> Response:
        with self._session() as session:
            schedules = self._repository(session).schedules()
        return self._page(request, "schedules.html", 200, schedules=schedules)

    def _controls(self, request: Request) -> Response:
        with self._session() as session:
            repo = self._repository(session)
            paused, limits, keys = repo.paused(), repo.rate_limits(), repo.keys_at_limit()
        return self._page(request, "controls.html", 200, paused=paused, limits=limits, keys=keys)

    # ------------------------------------------------------------------ rendering

    def _static(self, name: str) -> Response:
        if name not in _STATIC:
            raise _Refused(404, f"no file {name}")
        body = resources.files("sqlalchemy_taskqueue.dashboard").joinpath("static").joinpath(name)
        return Response(200, body.read_bytes(), content_type=f"{_STATIC[name]}; charset=utf-8")

    @staticmethod
    def _format_when(value: datetime | None) -> str:
        if value is None:
            return "—"
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    def _page(self, request: Request, template: str, status: int, **context: Any) -> Response:
        token, new = csrf_token_of(request)
        body = self._templates.get_template(template).render(
            base=request.base,
            title=self._title,
            read_only=self.read_only,
            csrf_field=CSRF_FIELD,
            csrf_token=token,
            notice=self._notice(request),
            path=request.path,
            here=request.path + (f"?{urlencode(_first_values(request))}" if request.query else ""),
            refresh_ms=REFRESH_MS,
            **context,
        )
        headers = []
        if new:
            headers.append(cookie(CSRF_COOKIE, token, request))
        return Response(status, body, headers=headers)


def _first_values(request: Request) -> dict[str, str]:
    return {
        name: values[0]
        for name, values in request.query.items()
        if values and name not in ("notice", "sig", "token")
    }


def _column_keys(model: type[Any]) -> list[tuple[str, str]]:
    """(column name, attribute name) of every column of ``model``."""
    return [(prop.columns[0].name, prop.key) for prop in inspect(model).column_attrs]
