"""The ``taskqueue`` command group and the options its commands share."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import click
from click.core import ParameterSource
from sqlalchemy.engine import make_url
from sqlalchemy.exc import NoSuchModuleError

from sqlalchemy_taskqueue._urls import (
    DATABASE_URL_ENV,
    mask_password,
    normalize_url,
    require_encoded_password,
)
from sqlalchemy_taskqueue.backends import backend_for_url, supported_dialects
from sqlalchemy_taskqueue.durations import parse_duration
from sqlalchemy_taskqueue.exceptions import MissingExtraError, optional_dependency
from sqlalchemy_taskqueue.worker._logging import LOG_FORMAT

__all__ = [
    "DURATION",
    "POSITIVE_DURATION",
    "cli",
    "configure_logging",
    "database_url_option",
    "database_url_or_fail",
    "extra_or_fail",
]


class DurationType(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """``90s``, ``15m``, ``12h``, ``7d`` or seconds."""

    name = "duration"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        """The option's value as a ``timedelta``; a usage error when it is not a duration.

        >>> DURATION.convert("90s", None, None)
        datetime.timedelta(seconds=90)
        """
        try:
            duration = value if isinstance(value, timedelta) else parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if self.positive and duration <= timedelta(0):
            self.fail(f"must be positive, got {value!r}", param, ctx)
        return duration


#: A duration option (``0`` allowed) and one that must be longer than zero.
DURATION = DurationType()
POSITIVE_DURATION = DurationType(positive=True)


def database_url_option(function: Any) -> Any:
    """Decorator adding ``--database-url`` (or ``TASKQUEUE_DATABASE_URL``) to a command.

    Example::

        @cli.command()
        @database_url_option
        def ping(database_url: str) -> None:
            create_engine(database_url_or_fail(database_url)).connect().close()
    """
    return click.option(
        "--database-url",
        envvar=DATABASE_URL_ENV,
        required=False,
        show_envvar=True,
        help="SQLAlchemy URL of the queue's database.",
    )(function)


def database_url_or_fail(database_url: str | None) -> str:
    """The URL normalised for SQLAlchemy, or a usage error (exit 2) naming the option.

    A URL given to the command wins; else the one given before it
    (``taskqueue --database-url URL stats``); else ``TASKQUEUE_DATABASE_URL``.

    >>> database_url_or_fail("postgres://app@db/app")
    'postgresql+psycopg2://app@db/app'
    """
    context = click.get_current_context(silent=True)
    if context is not None and not _from_command_line(context):
        # the command's own option also reads TASKQUEUE_DATABASE_URL: a URL typed before
        # the command must still win over the environment
        root = context.find_root()
        if root is not context and (database_url is None or _from_command_line(root)):
            database_url = (root.obj or {}).get("database_url") or database_url
    if not database_url:
        raise click.UsageError("Missing option '--database-url' (or set TASKQUEUE_DATABASE_URL).")
    masked = mask_password(database_url)
    try:
        # refused before anything connects: libpq would print the rest of the password
        # as a host name it cannot resolve
        require_encoded_password(database_url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--database-url") from None
    try:
        url = normalize_url(database_url)
    except Exception:
        raise click.BadParameter(
            f"{masked!r} is not a database URL "
            "(e.g. postgresql+psycopg2://user:password@host:5432/dbname)",
            param_hint="--database-url",
        ) from None
    parsed = make_url(url)
    if backend_for_url(parsed) is None:
        raise click.BadParameter(
            f"{masked!r} is a {parsed.get_backend_name()!r} URL; the queue runs on "
            f"{', '.join(supported_dialects())}",
            param_hint="--database-url",
        )
    try:
        dialect = parsed.get_dialect()
        dialect.import_dbapi()  # the driver itself, not only SQLAlchemy's dialect for it
    except (NoSuchModuleError, ImportError) as exc:
        raise click.BadParameter(
            f"{masked!r} names a driver that is not installed ({exc})",
            param_hint="--database-url",
        ) from None
    if getattr(dialect, "is_async", False):
        raise click.BadParameter(
            f"{masked!r} names an async driver; the command line needs a synchronous one "
            "(e.g. postgresql+psycopg2://...)",
            param_hint="--database-url",
        )
    return url


def _from_command_line(context: click.Context) -> bool:
    """Whether ``context``'s ``--database-url`` was typed (not read from the environment)."""
    return context.get_parameter_source("database_url") is ParameterSource.COMMANDLINE


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sqlalchemy-taskqueue")
@click.option(
    "--database-url",
    envvar=DATABASE_URL_ENV,
    show_envvar=True,
    help="SQLAlchemy URL of the queue's database (for every command).",
)
@click.pass_context
def cli(context: click.Context, database_url: str | None) -> None:
    """sqlalchemy-taskqueue: run workers and operate the task queue.

    Example: TASKQUEUE_DATABASE_URL=postgresql://app@db/app taskqueue stats
    """
    context.ensure_object(dict)["database_url"] = database_url


@contextmanager
def extra_or_fail(extra: str, *modules: str, feature: str) -> Iterator[None]:
    """Exit 1 with one line naming the extra to install when the block fails to import
    one of ``modules`` (an optional dependency of ``feature``).

    Example::

        with extra_or_fail("metrics", "prometheus_client", feature="--metrics-port"):
            from sqlalchemy_taskqueue.contrib.prometheus import serve_worker_metrics
    """
    try:
        with optional_dependency(extra, *modules, feature=feature):
            yield
    except MissingExtraError as exc:
        raise click.ClickException(str(exc)) from None


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (``"debug"`` ... ``"error"``) in ``key=value`` format.

    Example::

        configure_logging("debug")
    """
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
