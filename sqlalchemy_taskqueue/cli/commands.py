"""The ``taskqueue`` command group and the ``worker`` command."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import click
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from sqlalchemy_taskqueue.durations import parse_duration
from sqlalchemy_taskqueue.embedded import DATABASE_URL_ENV, mask_password, normalize_url
from sqlalchemy_taskqueue.worker import Worker

from .loading import load_worker_target

__all__ = ["cli"]

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


class DurationType(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """``90s``, ``15m``, ``12h``, ``7d`` or seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()


def database_url_option(function: Any) -> Any:
    return click.option(
        "--database-url",
        envvar=DATABASE_URL_ENV,
        required=True,
        show_envvar=True,
        help="SQLAlchemy URL of the queue's database.",
    )(function)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sqlalchemy-taskqueue")
def cli() -> None:
    """sqlalchemy-taskqueue: run workers and operate the task queue."""


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


@cli.command()
@click.argument("target", metavar="MODULE:ATTR")
@database_url_option
@click.option(
    "--model",
    "model_reference",
    metavar="MODULE:ATTR",
    help="The task model, when TARGET is a plain mapping of handlers.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Tasks run at the same time (threads).",
)
@click.option(
    "--types", help="Comma-separated task types to claim (default: every type with a handler)."
)
@click.option(
    "--lease",
    type=DURATION,
    default="60s",
    show_default=True,
    help="Lease of a claimed task, renewed by heartbeats.",
)
@click.option(
    "--poll-interval",
    type=DURATION,
    default="1s",
    show_default=True,
    help="Longest idle wait between claims.",
)
@click.option(
    "--grace",
    type=DURATION,
    default="30s",
    show_default=True,
    help="Time running tasks get to finish after SIGINT/SIGTERM.",
)
@click.option(
    "--timeout", type=DURATION, default=None, help="Default attempt timeout for types without one."
)
@click.option(
    "--no-listen",
    is_flag=True,
    help="Poll only; no LISTEN/NOTIFY (e.g. behind PgBouncer in transaction mode).",
)
@click.option("--until-empty", is_flag=True, help="Exit once nothing is claimable.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def worker(
    target: str,
    database_url: str,
    model_reference: str | None,
    concurrency: int,
    types: str | None,
    lease: timedelta,
    poll_interval: timedelta,
    grace: timedelta,
    timeout: timedelta | None,
    no_listen: bool,
    until_empty: bool,
    log_level: str,
) -> None:
    """Run a worker for the handlers in MODULE:ATTR.

    MODULE:ATTR names a HandlerRegistry created with the task model
    (``tasks = HandlerRegistry(Task)``), or a mapping of task types to handlers together
    with --model.  SIGINT/SIGTERM stop it gracefully; a second signal exits at once.

    Example: taskqueue worker myapp.tasks:registry --concurrency 8 --types export,import
    """
    configure_logging(log_level)
    handlers, model = load_worker_target(target, model_reference)
    task_types = [t.strip() for t in types.split(",") if t.strip()] if types else None
    if types is not None and not task_types:
        raise click.BadParameter("name at least one task type", param_hint="--types")
    url = normalize_url(database_url)
    engine = create_engine(
        url, pool_size=concurrency + 2, max_overflow=concurrency, pool_pre_ping=True
    )
    try:
        runner = Worker(
            sessionmaker(engine),
            model,
            handlers,
            concurrency=concurrency,
            task_types=task_types,
            lease_duration=lease,
            poll_interval=poll_interval,
            shutdown_grace=grace,
            default_timeout=timeout,
            listen=not no_listen,
        )
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    logging.getLogger("sqlalchemy_taskqueue.worker").info(
        "worker.database url=%s table=%s", mask_password(url), model.__tablename__
    )
    try:
        runner.run(until_empty=until_empty)
    finally:
        engine.dispose()
