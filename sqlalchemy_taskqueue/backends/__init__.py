"""Database backends: the operation-level seam and one package per database.

:mod:`sqlalchemy_taskqueue.backends.base` defines the :class:`~.base.Backend` protocol and
its :class:`~.base.Capabilities`; each database has a package here, named after its
SQLAlchemy dialect, whose ``BACKEND`` implements the protocol.  :func:`backend_for`
finds the backend of a dialect; the rest of the package asks it for every queue
operation and never builds SQL itself.

Example::

    from sqlalchemy_taskqueue.backends import backend_for

    backend_for(engine.dialect).capabilities.update_returning  # True
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL, Dialect

from sqlalchemy_taskqueue.exceptions import UnsupportedDialectError

if TYPE_CHECKING:
    from .base import Backend

__all__ = [
    "backend_for",
    "backend_for_url",
    "find_backend",
    "is_driver_error",
    "is_permanent_error",
    "partial_index_options",
    "supported_dialects",
]


@functools.cache
def supported_dialects() -> tuple[str, ...]:
    """The names of the dialects a backend serves, sorted.

    Example::

        supported_dialects()  # ('postgresql',)
    """
    return tuple(sorted(info.name for info in pkgutil.iter_modules(__path__) if info.ispkg))


@functools.cache
def find_backend(dialect_name: str) -> Backend | None:
    """The backend serving the dialect called ``dialect_name``, or ``None``.

    Example::

        find_backend(engine.dialect.name)
    """
    if dialect_name not in supported_dialects():
        return None
    module = importlib.import_module(f"{__name__}.{dialect_name}")
    backend: Backend = module.BACKEND
    return backend


def backend_for_url(url: URL) -> Backend | None:
    """The backend serving the database ``url`` names (by its scheme: ``postgres://``
    is PostgreSQL's too), or ``None``.

    Example::

        backend_for_url(make_url("postgres://app@db/app"))  # the PostgreSQL backend
    """
    scheme = url.get_backend_name()
    return next((backend for backend in _every_backend() if scheme in backend.url_schemes), None)


def backend_for(dialect: Dialect) -> Backend:
    """The backend of ``dialect``;
    :class:`~sqlalchemy_taskqueue.exceptions.UnsupportedDialectError` naming the database
    when the queue cannot run on it.

    Example::

        backend = backend_for(session.get_bind().dialect)
    """
    backend = find_backend(dialect.name)
    if backend is None:
        raise UnsupportedDialectError(
            f"sqlalchemy-taskqueue does not support the {dialect.name!r} dialect yet; "
            f"supported: {', '.join(supported_dialects())}."
        )
    return backend


def _every_backend() -> Iterator[Backend]:
    for name in supported_dialects():
        backend = find_backend(name)
        assert backend is not None, name
        yield backend


def is_permanent_error(exc: BaseException) -> bool:
    """Whether a database refused a statement for good (so retrying it cannot help), as
    the backend whose driver raised ``exc`` reads it.

    >>> is_permanent_error(ValueError("not a database error"))
    False
    """
    return any(backend.is_permanent_error(exc) for backend in _every_backend())


def is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the driver of a database the queue supports (some
    drivers' errors reach the caller without SQLAlchemy's wrapping).

    >>> is_driver_error(ValueError("a bug"))
    False
    """
    return any(backend.is_driver_error(exc) for backend in _every_backend())


def partial_index_options(where: str) -> dict[str, Any]:
    """The keyword arguments that make an index partial on every database whose backend
    has partial indexes (each backend contributes its dialect's own).

    Example::

        Index("ix_tasks_claimable", "priority", **partial_index_options("status = 'pending'"))
    """
    options: dict[str, Any] = {}
    for backend in _every_backend():
        options.update(backend.index_options(where))
    return options
