"""Loading the app's handlers and model from ``MODULE:ATTR`` references."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import click
from sqlalchemy.orm import DeclarativeBase

from sqlalchemy_taskqueue.models import TaskMixin, task_table
from sqlalchemy_taskqueue.worker._handlers import HandlerRegistry

__all__ = ["load_model", "load_object", "load_worker_target", "model_for_table"]


def load_object(reference: str) -> Any:
    """Import ``package.module:attribute`` (the current directory is importable).

    Example::

        registry = load_object("myapp.tasks:registry")
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"{reference!r} is not of the form MODULE:ATTR")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(f"{module_name!r} has no attribute {attribute!r}") from None
    return target


def model_for_table(table_name: str) -> type[Any]:
    """A task model for an existing queue table, for operator commands.

    Only the library's columns are mapped; ``schema.table`` names a table in a schema.

    Example::

        model_for_table("jobs.tasks").__table__.fullname  # 'jobs.tasks'
    """
    if not table_name or not table_name.strip():
        raise click.BadParameter("must name a table", param_hint="--table")
    schema, _, name = table_name.rpartition(".")

    class Base(DeclarativeBase):
        pass

    namespace: dict[str, Any] = {"__tablename__": name}
    if schema:
        namespace["__table_args__"] = {"schema": schema}
    return type("OperatorTask", (TaskMixin, Base), namespace)


def load_model(reference: str) -> type[Any]:
    """The task model named by ``MODULE:ATTR``.

    Example::

        Task = load_model("myapp.models:Task")
    """
    model = load_object(reference)
    try:
        task_table(model)
    except TypeError as exc:
        raise click.BadParameter(str(exc)) from None
    return model  # type: ignore[no-any-return]


def load_worker_target(
    reference: str, model_reference: str | None
) -> tuple[Mapping[str, Any], type[Any]]:
    """Handlers and model for ``taskqueue worker``.

    ``reference`` names a :class:`HandlerRegistry` (which knows its model) or a plain
    ``{task_type: handler}`` mapping, in which case ``--model`` is required.

    Example::

        handlers, model = load_worker_target("myapp.tasks:handlers", "myapp.models:Task")
    """
    handlers = load_object(reference)
    if not isinstance(handlers, Mapping):
        raise click.BadParameter(
            f"{reference} is a {type(handlers).__name__}, not a HandlerRegistry or a mapping "
            "of task types to handlers"
        )
    if model_reference is not None:
        return handlers, load_model(model_reference)
    model = handlers.model if isinstance(handlers, HandlerRegistry) else None
    if model is None:
        raise click.UsageError(
            f"{reference} does not name its task model: create it as HandlerRegistry(Task) "
            "or pass --model MODULE:ATTR"
        )
    return handlers, model
