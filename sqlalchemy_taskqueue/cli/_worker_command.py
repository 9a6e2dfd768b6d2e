"""``taskqueue worker``: run a worker for an app's handlers."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from sqlalchemy_taskqueue._engines import (
    create_async_worker_engine,
    create_worker_engine,
    dispose_async_engine,
    dispose_engine,
    url_backend,
)
from sqlalchemy_taskqueue._urls import mask_password
from sqlalchemy_taskqueue.exceptions import TaskQueueError
from sqlalchemy_taskqueue.worker import Worker
from sqlalchemy_taskqueue.worker._base import MAX_CONCURRENCY, MAX_PREFETCH, is_coroutine_handler

from ._group import (
    DURATION,
    POSITIVE_DURATION,
    cli,
    configure_logging,
    database_url_option,
    database_url_or_fail,
    extra_or_fail,
)
from ._loading import load_worker_target

__all__ = ["worker"]


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
    type=click.IntRange(min=1, max=MAX_CONCURRENCY),
    default=4,
    show_default=True,
    help="Tasks run at the same time (threads).",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0, max=MAX_PREFETCH),
    default=None,
    help="Tasks claimed beyond the free slots: more throughput for many short tasks "
    "(default: sized from the tasks' pace; 0 turns it off).",
)
@click.option(
    "--types", help="Comma-separated task types to claim (default: every type with a handler)."
)
@click.option(
    "--lease",
    type=POSITIVE_DURATION,
    default="60s",
    show_default=True,
    help="Lease of a claimed task, renewed by heartbeats.",
)
@click.option(
    "--poll-interval",
    type=POSITIVE_DURATION,
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
    "--timeout",
    type=POSITIVE_DURATION,
    default=None,
    help="Default attempt timeout for types without one.",
)
@click.option(
    "--no-listen",
    is_flag=True,
    help="Poll only; no LISTEN/NOTIFY (e.g. behind PgBouncer in transaction mode).",
)
@click.option("--until-empty", is_flag=True, help="Exit once nothing is claimable.")
@click.option(
    "--async",
    "use_async",
    is_flag=True,
    help="Run an AsyncWorker on one event loop through asyncpg (the 'async' extra; psycopg 3 "
    "URLs keep psycopg): async "
    "handlers run on the loop, plain functions on threads.  Chosen automatically when a "
    "handler is an async function.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve Prometheus metrics on this port (needs the 'metrics' extra).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Interface the metrics are served on (0.0.0.0: every interface; the endpoint "
    "has no authentication).",
)
@click.option(
    "--metrics-cache",
    type=DURATION,
    default="15s",
    show_default=True,
    help="How long one reading of the queue-wide gauges serves scrapes (0: read at each).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe log lines written to stderr (key=value lines).",
)
def worker(
    target: str,
    database_url: str | None,
    model_reference: str | None,
    concurrency: int,
    prefetch: int | None,
    types: str | None,
    lease: timedelta,
    poll_interval: timedelta,
    grace: timedelta,
    timeout: timedelta | None,
    no_listen: bool,
    until_empty: bool,
    use_async: bool,
    metrics_port: int | None,
    metrics_host: str,
    metrics_cache: timedelta,
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
    url = database_url_or_fail(database_url)
    if metrics_port is not None:
        with extra_or_fail("metrics", "prometheus_client", feature="--metrics-port"):
            from sqlalchemy_taskqueue.contrib.prometheus import serve_worker_metrics
    engine = create_worker_engine(url, concurrency=concurrency)
    metrics_server = None
    if metrics_port is not None:
        try:
            metrics_server = serve_worker_metrics(
                metrics_port,
                sessionmaker(engine),
                model,
                addr=metrics_host,
                cache_for=metrics_cache,
            )
        except OSError as exc:  # the port is taken, or the host not ours to bind (or unknown)
            dispose_engine(engine)
            raise click.BadParameter(
                f"cannot serve metrics on host {metrics_host!r} port {metrics_port}: "
                f"{exc.strerror or exc}",
                param_hint="--metrics-host/--metrics-port",
            ) from None
    options: dict[str, Any] = {
        "concurrency": concurrency,
        "prefetch": prefetch,
        "task_types": task_types,
        "lease_duration": lease,
        "poll_interval": poll_interval,
        "shutdown_grace": grace,
        "default_timeout": timeout,
        "listen": not no_listen,
        "on_event": metrics_server.metrics.on_event if metrics_server else None,
    }
    use_async = use_async or any(is_coroutine_handler(h) for h in handlers.values())
    logging.getLogger("sqlalchemy_taskqueue.worker").info(
        "worker.database url=%s table=%s async=%s",
        mask_password(url),
        model.__tablename__,
        use_async,
    )
    try:
        if use_async:
            _run_async(url, model, handlers, options, until_empty)
        else:
            try:
                runner = Worker(sessionmaker(engine), model, handlers, **options)
            except (TypeError, ValueError) as exc:
                raise click.UsageError(str(exc)) from None
            runner.run(until_empty=until_empty)
    except click.ClickException:
        raise
    except TaskQueueError as exc:  # an unusable table, or a run until empty giving up
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        raise click.ClickException(
            f"the worker stopped: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        dispose_engine(engine)


def _run_async(
    url: str, model: type[Any], handlers: Any, options: dict[str, Any], until_empty: bool
) -> None:
    """Run an AsyncWorker for ``handlers`` on a new event loop, through asyncpg."""
    try:
        with extra_or_fail("async", "greenlet", "asyncpg", "psycopg", feature="--async"):
            from sqlalchemy.ext.asyncio import async_sessionmaker

            from sqlalchemy_taskqueue.worker._asyncio import AsyncWorker

            url_backend(url).default_async_url(make_url(url)).get_dialect().import_dbapi()
            engine = create_async_worker_engine(url, concurrency=options["concurrency"])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        runner = AsyncWorker(async_sessionmaker(engine), model, handlers, **options)
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None

    async def work() -> None:
        try:
            await runner.run(until_empty=until_empty)
        finally:
            await dispose_async_engine(engine)

    asyncio.run(work())
