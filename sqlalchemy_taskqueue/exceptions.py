"""The exceptions raised by sqlalchemy-taskqueue.

Every error the library raises on purpose derives from :class:`TaskQueueError`, so an
application can catch the whole family with one ``except`` clause.  Several classes also
derive from the built-in exception that describes them best (``LookupError``,
``ValueError``) so that generic handlers keep working.

Each class's docstring is its default message::

    >>> str(TaskNotFoundError())
    'No task with that id exists.'
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError

__all__ = [
    "InvalidTransitionError",
    "LeaseLostError",
    "MissingExtraError",
    "ScheduleNotFoundError",
    "TaskInterrupted",
    "TaskNotFoundError",
    "TaskQueueDatabaseError",
    "TaskQueueError",
    "TaskTableError",
    "UnsupportedDialectError",
    "optional_dependency",
    "wrap_database_errors",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class TaskQueueError(Exception):
    """A task queue operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class TaskNotFoundError(TaskQueueError, LookupError):
    """No task with that id exists."""

    def __init__(self, task_id: int | None = None, message: str | None = None) -> None:
        self.task_id = task_id
        if message is None and task_id is not None:
            message = f"No task with id {task_id} exists."
        super().__init__(message)


class ScheduleNotFoundError(TaskQueueError, LookupError):
    """No schedule with that name exists (no worker carrying it has run yet)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        message = None
        if name is not None:
            message = (
                f"No schedule named {name!r} exists; a schedule is recorded when a worker "
                "whose registry declares it starts (taskqueue schedules lists them)."
            )
        super().__init__(message)


class InvalidTransitionError(TaskQueueError, ValueError):
    """The task is not in a state that allows this change."""

    def __init__(
        self,
        task_id: int | None = None,
        *,
        action: str = "",
        status: str | None = None,
        allowed: tuple[str, ...] = (),
        reason: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.action = action
        self.status = status
        self.allowed = allowed
        message = None
        if task_id is not None and reason is not None:
            message = f"Cannot {action} task {task_id}: {reason}."
        elif task_id is not None:
            needed = " or ".join(allowed) if allowed else "another state"
            message = f"Cannot {action} task {task_id}: it is {status}, not {needed}."
        super().__init__(message)


class LeaseLostError(TaskQueueError):
    """The caller's lease on this task is no longer current; nothing was changed."""

    def __init__(self, task_id: int | None = None, *, action: str = "update") -> None:
        self.task_id = task_id
        message = None
        if task_id is not None:
            message = (
                f"Cannot {action} task {task_id}: this lease is no longer current "
                "(it expired and the task was rescued, or another worker owns it now); "
                "nothing was changed."
            )
        super().__init__(message)


class UnsupportedDialectError(TaskQueueError):
    """This database backend is not supported yet; use PostgreSQL."""


class TaskTableError(TaskQueueError):
    """The queue's table in the database is missing, or lacks columns or indexes the queue
    needs; migrate it (``alembic upgrade head``)."""

    def __init__(
        self, table: str | None = None, missing: list[str] | None = None, message: str | None = None
    ) -> None:
        self.table = table
        #: what the table lacks (``"column 'lease_token'"``, ``"index 'ix_tasks_claimable'"``);
        #: ``None`` when the table itself does not exist
        self.missing = missing
        super().__init__(message)


class TaskQueueDatabaseError(TaskQueueError):
    """The database refused a task queue statement; see ``__cause__`` for the driver error."""


class MissingExtraError(TaskQueueError, ImportError):
    """A feature needs an optional dependency that is not installed; install the extra it
    belongs to."""

    def __init__(self, extra: str, module: str | None = None, feature: str | None = None) -> None:
        #: the extra to install (``"metrics"``: ``pip install 'sqlalchemy-taskqueue[metrics]'``)
        self.extra = extra
        missing = f" ({module} is not installed)" if module else ""
        needs = feature or f"this needs the '{extra}' extra"
        super().__init__(f"{needs}{missing}: pip install 'sqlalchemy-taskqueue[{extra}]'")
        self.name = module


@contextmanager
def optional_dependency(extra: str, *modules: str, feature: str | None = None) -> Iterator[None]:
    """Turn the ``ImportError`` of an optional dependency (one of ``modules``, or a module
    inside one of them) into a one-line :class:`MissingExtraError` naming the ``extra``
    to install; any other ``ImportError`` (a bug of ours, or of the app) leaves as it is.

    Example::

        with optional_dependency("metrics", "prometheus_client"):
            import prometheus_client
    """
    try:
        yield
    except ImportError as exc:  # a MissingExtraError from inside too: said for ``feature``
        name = exc.name or ""
        if name.partition(".")[0] not in modules:
            raise
        message = None if feature is None else f"{feature} needs the '{extra}' extra"
        raise MissingExtraError(extra, name, message) from exc


class TaskInterrupted(TaskQueueError):
    """The attempt was asked to stop (shutdown, timeout or lost lease)."""


def wrap_database_errors(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator: driver errors leave as :class:`TaskQueueDatabaseError` (cause kept),
    and so does the bare ``OSError`` asyncpg raises for a connection it cannot open (an
    ``OSError`` raised elsewhere, by the application's own code, leaves as it is).

    Example::

        @wrap_database_errors
        def queue_depth(self): ...
    """

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except DBAPIError as exc:
            raise TaskQueueDatabaseError(
                f"{method.__name__} failed in the database: {exc.orig!r}"
            ) from exc
        except OSError as exc:  # asyncpg's refused connection, which SQLAlchemy passes on
            if not _raised_connecting(exc):
                raise  # the application's own (a hook reading a file ...), not the database's
            raise TaskQueueDatabaseError(
                f"{method.__name__} failed in the database: {exc!r}"
            ) from exc

    return wrapper


def _raised_connecting(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while SQLAlchemy's pool opened a connection."""
    trace = exc.__traceback__
    while trace is not None:
        if str(trace.tb_frame.f_globals.get("__name__", "")).startswith("sqlalchemy.pool"):
            return True
        trace = trace.tb_next
    return False
