"""Handlers: the functions that do the work of each task type.

A handler is called as ``handler(task, ctx)``; ``task`` is the claimed row and ``ctx`` a
:class:`~sqlalchemy_taskqueue.worker._context.TaskContext`.  Whatever it returns (a JSON value)
is stored in the task's ``result``; an exception fails the attempt.

Register handlers with a plain mapping, or with a :class:`HandlerRegistry`, which can
also carry the task model and per-type timeouts (that is what ``taskqueue worker
MODULE:ATTR`` loads)::

    tasks = HandlerRegistry(Task)

    @tasks.handler("data_export", timeout=timedelta(minutes=10))
    def export(task, ctx):
        ctx.update_progress(50)
        return {"rows": 10}

A registry also carries periodic schedules (:mod:`sqlalchemy_taskqueue.scheduling`)::

    @tasks.periodic("nightly_report", cron="0 3 * * *", timezone="Europe/Berlin")
    def nightly(task, ctx): ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic

from typing_extensions import TypeVar

from sqlalchemy_taskqueue._validation import require_app_columns, task_type_name
from sqlalchemy_taskqueue.durations import Duration, to_seconds
from sqlalchemy_taskqueue.models import task_table
from sqlalchemy_taskqueue.scheduling._schedule import (
    DEFAULT_CATCH_UP,
    Missed,
    Schedule,
    make_schedule,
)

__all__ = ["Handler", "HandlerRegistry", "HandlerSpec", "normalize_handlers", "require_handler"]

#: ``handler(task, ctx) -> JSON result``.
Handler = Callable[[Any, Any], Any]
_F = TypeVar("_F", bound=Handler)
#: The task model a registry serves (``HandlerRegistry[Task]``); ``Any`` without one.
_TaskT = TypeVar("_TaskT", default=Any)


@dataclass(frozen=True)
class HandlerSpec:
    """A registered handler and its per-type attempt timeout (seconds, or ``None``).

    Example::

        spec = registry.spec("bulk_import")
        spec.function, spec.timeout_seconds
    """

    function: Handler
    timeout_seconds: float | None = None


class HandlerRegistry(Mapping[str, Handler], Generic[_TaskT]):
    """Handlers per task type, registered with a decorator.

    :param model: the task model the handlers serve (used by ``taskqueue worker``); the
        registry is typed by it (``HandlerRegistry[Task]``), and a worker for another
        model is refused.

    Example::

        tasks = HandlerRegistry(Task)

        @tasks.handler("send_email")
        def send_email(task, ctx):
            ...
    """

    def __init__(self, model: type[_TaskT] | None = None) -> None:
        if model is not None:
            task_table(model)
        self.model: type[_TaskT] | None = model
        self._specs: dict[str, HandlerSpec] = {}
        self._schedules: dict[str, Schedule] = {}

    def handler(self, task_type: str, *, timeout: Duration | None = None) -> Callable[[_F], _F]:
        """Decorator registering ``function`` as the handler of ``task_type``.

        Example::

            @tasks.handler("bulk_import", timeout=600)
            def bulk_import(task, ctx): ...
        """

        def register(function: _F) -> _F:
            self.add(task_type, function, timeout=timeout)
            return function

        return register

    def add(self, task_type: str, function: Handler, *, timeout: Duration | None = None) -> None:
        """Register ``function`` for ``task_type`` (each type has one handler).

        Example::

            tasks.add("send_email", send_email, timeout=30)
        """
        if not isinstance(task_type, str) or not task_type.strip():
            raise ValueError(f"task_type must be a non-empty string, got {task_type!r}")
        require_handler(task_type, function)
        name = task_type_name(task_type)
        if name in self._specs:
            raise ValueError(f"a handler for {name!r} is already registered")
        seconds = None if timeout is None else to_seconds(f"timeout of {name!r}", timeout)
        self._specs[name] = HandlerSpec(function, seconds)

    def periodic(
        self,
        task_type: str,
        *,
        cron: str | None = None,
        every: timedelta | str | None = None,
        name: str | None = None,
        payload: Any = None,
        timezone: str = "UTC",
        missed: Missed = "latest",
        catch_up: timedelta = DEFAULT_CATCH_UP,
        priority: int = 0,
        max_retries: int = 3,
        overlap: bool = False,
        timeout: Duration | None = None,
        **columns: Any,
    ) -> Callable[[_F], _F]:
        """Decorator registering ``function`` as the handler of ``task_type`` and a
        schedule that enqueues a task of that type on ``cron`` or ``every`` (see
        :meth:`schedule` for the keywords).  The schedule is checked first, so a bad one
        registers nothing.

        Example::

            @tasks.periodic("nightly_report", cron="0 3 * * *", timezone="Europe/Berlin")
            def nightly(task, ctx):
                ...
        """
        schedule = self._new_schedule(
            task_type,
            cron=cron,
            every=every,
            name=name,
            payload=payload,
            timezone=timezone,
            missed=missed,
            catch_up=catch_up,
            priority=priority,
            max_retries=max_retries,
            overlap=overlap,
            columns=columns,
        )

        def register(function: _F) -> _F:
            self.add(task_type, function, timeout=timeout)
            self._schedules[schedule.name] = schedule
            return function

        return register

    def schedule(
        self,
        task_type: str,
        *,
        cron: str | None = None,
        every: timedelta | str | None = None,
        name: str | None = None,
        payload: Any = None,
        timezone: str = "UTC",
        missed: Missed = "latest",
        catch_up: timedelta = DEFAULT_CATCH_UP,
        priority: int = 0,
        max_retries: int = 3,
        overlap: bool = False,
        **columns: Any,
    ) -> Schedule:
        """Schedule tasks of ``task_type`` (whose handler is registered separately, here
        or in another worker's registry) and return the checked schedule.

        :param cron: a cron expression: five fields, or six with seconds first, read in
            ``timezone`` (daylight saving handled: a 02:30 daily fire happens once on the
            days the clocks change).
        :param every: an interval instead of ``cron``: a ``timedelta`` of at least a
            second or a duration such as ``"10m"``; fires fall on multiples of it since
            the Unix epoch, so every worker agrees on them.
        :param name: the schedule's unique name (default: the task type).
        :param payload: the JSON payload of each task (default ``{}``).
        :param timezone: an IANA time zone name for ``cron``.
        :param missed: fires missed while no worker ran: ``"latest"`` enqueues the last
            one, ``"skip"`` none, ``"all"`` each one within ``catch_up`` (at most six days).
        :param overlap: enqueue a fire even while the previous fire's task is pending or
            running (by default such a fire is held back: no pile-up).
        :param columns: values of the model's own columns for each task.
        :raises ValueError: a value is wrong (or the name is taken), with a message
            naming the schedule and the problem; nothing is registered.
        :raises TypeError: a value of the wrong kind, likewise.

        Example::

            tasks.schedule("purge", every=timedelta(minutes=10), payload={"older_than": "7d"})
        """
        schedule = self._new_schedule(
            task_type,
            cron=cron,
            every=every,
            name=name,
            payload=payload,
            timezone=timezone,
            missed=missed,
            catch_up=catch_up,
            priority=priority,
            max_retries=max_retries,
            overlap=overlap,
            columns=columns,
        )
        self._schedules[schedule.name] = schedule
        return schedule

    @property
    def schedules(self) -> list[Schedule]:
        """The schedules registered here, by name.

        Example::

            [s.name for s in tasks.schedules]  # ['nightly_report', 'purge']
        """
        return [self._schedules[name] for name in sorted(self._schedules)]

    def _new_schedule(
        self, task_type: str, *, columns: Mapping[str, Any], **options: Any
    ) -> Schedule:
        """A checked schedule whose name is still free (and, with a model, whose columns
        are the model's own)."""
        schedule = make_schedule(task_type, columns=columns, **options)
        if schedule.name in self._schedules:
            raise ValueError(
                f"schedule {schedule.name!r}: a schedule of that name is already registered"
            )
        if self.model is not None:
            try:
                require_app_columns(self.model.__name__, task_table(self.model), schedule.columns)
            except TypeError as exc:
                raise TypeError(f"schedule {schedule.name!r}: {exc}") from None
        return schedule

    def spec(self, task_type: str) -> HandlerSpec | None:
        """The handler and timeout registered for ``task_type``, if any.

        Example::

            tasks.spec("bulk_import").timeout_seconds  # 600.0
        """
        return self._specs.get(_key(task_type))

    def __getitem__(self, task_type: str) -> Handler:
        return self._specs[task_type].function

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def normalize_handlers(
    handlers: Mapping[str, Handler] | HandlerRegistry[Any],
    timeouts: Mapping[str, Duration] | None = None,
) -> dict[str, HandlerSpec]:
    """Validate handlers (and per-type timeouts) and return one spec per task type.

    Example::

        normalize_handlers({"email": send_email}, {"email": 30})
    """
    if not isinstance(handlers, Mapping):
        raise TypeError(
            f"handlers must be a mapping of task type to handler or a HandlerRegistry, "
            f"got {handlers!r}"
        )
    specs: dict[str, HandlerSpec] = {}
    for task_type, function in handlers.items():
        if not isinstance(task_type, str) or not task_type.strip():
            raise ValueError(f"task types must be non-empty strings, got {task_type!r}")
        require_handler(task_type, function)
        registered = handlers.spec(task_type) if isinstance(handlers, HandlerRegistry) else None
        specs[task_type_name(task_type)] = registered or HandlerSpec(function)
    for key, timeout in (timeouts or {}).items():
        task_type = _key(key)
        if task_type not in specs:
            raise ValueError(f"a timeout is given for {task_type!r}, which has no handler")
        specs[task_type] = HandlerSpec(
            specs[task_type].function, to_seconds(f"timeout of {task_type!r}", timeout)
        )
    return specs


def require_handler(task_type: str, function: Any) -> None:
    """``TypeError`` naming the handler and the reason, unless ``function`` can be called
    as ``handler(task, ctx)`` (a function, a method, a callable object or a
    ``functools.partial``); one whose signature Python cannot read is let through.

    >>> require_handler("email", lambda task, ctx: None)
    >>> require_handler("email", lambda payload: None)
    Traceback (most recent call last):
    ...
    TypeError: the handler for 'email' (<lambda>) cannot be called as handler(task, ctx): too many positional arguments
    """
    if not callable(function):
        raise TypeError(f"the handler for {task_type!r} is not callable: {function!r}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins and C callables have none to read
        return
    try:
        signature.bind(object(), object())
    except TypeError as exc:
        raise TypeError(
            f"the handler for {task_type!r} ({_handler_name(function)}) cannot be called "
            f"as handler(task, ctx): {exc}"
        ) from None


def _handler_name(function: Any) -> str:
    """How a person finds the handler in their code: its qualified name, a partial's
    function's, or a callable object's class."""
    target = getattr(function, "func", function)  # functools.partial
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return str(name)


def _key(task_type: Any) -> Any:
    """The key a task type is registered under (the text stored for it); anything that is
    not a string is left as it is, for the caller to report."""
    return task_type_name(task_type) if isinstance(task_type, str) else task_type
