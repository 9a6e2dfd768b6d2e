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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic

from typing_extensions import TypeVar

from sqlalchemy_taskqueue._validation import task_type_name
from sqlalchemy_taskqueue.durations import Duration, to_seconds
from sqlalchemy_taskqueue.models import task_table

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
