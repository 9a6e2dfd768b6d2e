"""Operator commands: ``stats``, ``stuck``, ``failed``, ``show``, ``retry``, ``cancel``,
``cleanup`` and ``enqueue``.

Each opens one short transaction on the queue table named by ``--table`` (default
``tasks``) or by the app's model (``--model MODULE:ATTR``), and exits non-zero with a
clear message on bad input: 2 for a bad argument, 1 when the queue refuses (unknown id,
task in the wrong state).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from sqlalchemy_taskqueue._json import UndecodableJSON
from sqlalchemy_taskqueue._urls import mask_password
from sqlalchemy_taskqueue._validation import MAX_JSON_DEPTH
from sqlalchemy_taskqueue.exceptions import TaskQueueDatabaseError, TaskQueueError
from sqlalchemy_taskqueue.models import require_database_schema
from sqlalchemy_taskqueue.monitoring import QueueStats
from sqlalchemy_taskqueue.repository import TaskRepository
from sqlalchemy_taskqueue.status import TaskStatus

from ._group import DURATION, POSITIVE_DURATION, cli, database_url_option, database_url_or_fail
from ._loading import load_model, model_for_table

__all__ = ["json_option", "open_repository", "print_json", "print_table", "queue_options", "span"]

TABLE_ENV = "TASKQUEUE_TABLE"
#: How ``taskqueue stats`` marks a type with ready tasks that no worker claimed lately.
UNCLAIMED_MARK = "(unclaimed)"
UNHANDLED_MARK = "(no worker)"


def queue_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--database-url``, ``--table`` and ``--model``.

    Example::

        @cli.command()
        @queue_options
        def depth(database_url: str | None, table: str, model_reference: str | None) -> None:
            with open_repository(database_url, table, model_reference) as repo:
                click.echo(repo.queue_depth())
    """
    function = click.option(
        "--model",
        "model_reference",
        metavar="MODULE:ATTR",
        help="The app's task model (instead of --table).",
    )(function)
    function = click.option(
        "--table",
        envvar=TABLE_ENV,
        show_envvar=True,
        default="tasks",
        show_default=True,
        help="The queue table.",
    )(function)
    return database_url_option(function)  # type: ignore[no-any-return]


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator adding ``--json`` (passed to the command as ``as_json``).

    Example::

        @cli.command()
        @queue_options
        @json_option
        def depth(database_url, table, model_reference, as_json): ...
    """
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(function)


@contextmanager
def open_repository(
    database_url: str | None,
    table: str,
    model_reference: str | None,
    *,
    check_table: bool = True,
) -> Iterator[TaskRepository[Any]]:
    """A repository in one transaction, committed when the block succeeds.

    A value the repository refuses (``ValueError``/``TypeError``) is a usage error (exit
    2); a refusal by the queue (unknown id, wrong state) or the database exits 1, and so
    does a table that is missing or lacks the queue's columns or indexes (checked first
    unless ``check_table`` is false).

    Example::

        with open_repository("postgresql://app@db/app", "tasks", None) as repo:
            repo.retry_task(42)
    """
    model = load_model(model_reference) if model_reference else model_for_table(table)
    url = database_url_or_fail(database_url)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with Session(engine) as session:
            if check_table:  # before any statement that would fail for it less clearly
                require_database_schema(session.connection(), model.__table__)
            yield TaskRepository(session, model)
            session.commit()
    except (SQLAlchemyError, TaskQueueDatabaseError) as exc:
        detail = str(exc.__cause__ or exc).strip().splitlines()[0]
        raise click.ClickException(
            f"cannot use the queue at {mask_password(url)} (table {model.__tablename__}): {detail}"
        ) from None
    except TaskQueueError as exc:
        raise click.ClickException(str(exc)) from None
    except (TypeError, ValueError) as exc:  # a value the queue refuses: a bad argument
        raise click.UsageError(str(exc)) from None
    finally:
        engine.dispose()


def console() -> Console:
    """The rich console the commands print to (120 columns, no highlighting).

    Example::

        console().print(stats_tables(repo.queue_stats())[0])
    """
    return Console(highlight=False, soft_wrap=False, width=120)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON (datetimes as ISO text, other objects as ``str``).

    Example::

        print_json(repo.queue_stats().as_dict())
    """
    click.echo(json.dumps(value, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


_NUMBER = re.compile(r"^-?[0-9.]+$")


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A rich table; columns whose cells are all numbers are right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    table = Table(title=title, title_justify="left", header_style="bold")
    for index, column in enumerate(columns):
        numeric = bool(cells) and all(_NUMBER.match(row[index]) for row in cells)
        table.add_column(column, justify="right" if numeric else "left")
    for row in cells:
        table.add_row(*row)
    return table


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as a table under ``title``, or ``title: none`` when there are none.

    Example::

        print_table("Workers", ["id", "host"], [[1, "web-1"]])
    """
    if rows:
        console().print(_table(title, columns, rows))
    else:
        click.echo(f"{title}: none")


def stats_tables(stats: QueueStats) -> list[Table]:
    """The ``taskqueue stats`` tables.

    Example::

        for table in stats_tables(repo.queue_stats(timedelta(hours=1))):
            console().print(table)
    """
    by_type: dict[str, dict[str, int]] = {}
    for count in stats.status_counts:
        by_type.setdefault(count.task_type, {})[count.status.value] = count.count
    statuses = ["pending", "in_progress", "completed", "failed", "cancelled"]
    depth = {item.task_type: item for item in stats.queue_depth}
    unclaimed = set(stats.unclaimed_types)
    unhandled = set(stats.unhandled_types)
    counts = _table(
        "Tasks by type and status",
        ["type", *statuses, "ready", "scheduled", "oldest ready (s)"],
        [
            [
                _marked(task_type, unhandled, unclaimed),
                *(counts.get(status, 0) for status in statuses),
                depth[task_type].ready if task_type in depth else 0,
                depth[task_type].scheduled if task_type in depth else 0,
                f"{depth[task_type].oldest_ready_seconds:.1f}" if task_type in depth else "-",
            ]
            for task_type, counts in sorted(by_type.items())
        ],
    )
    times = {item.task_type: item for item in stats.processing_times}
    rates = _table(
        f"Finished in the last {span(stats.window)}",
        [
            "type",
            "completed",
            "failed",
            "success %",
            "retry %",
            "per minute",
            "avg (s)",
            "p95 (s)",
        ],
        [
            [
                rate.task_type,
                rate.completed,
                rate.failed,
                f"{100 * rate.success_rate:.1f}",
                f"{100 * rate.retry_rate:.1f}",
                f"{rate.throughput_per_minute:.2f}",
                f"{times[rate.task_type].average_seconds:.3f}" if rate.task_type in times else "-",
                f"{times[rate.task_type].p95_seconds:.3f}" if rate.task_type in times else "-",
            ]
            for rate in stats.outcome_rates
        ],
    )
    return [counts, rates]


def _marked(task_type: str, unhandled: set[str], unclaimed: set[str]) -> str:
    """The type, marked when no live worker claims it (which also leaves it unclaimed),
    or else when no worker claimed it lately."""
    if task_type in unhandled:
        return f"{task_type} {UNHANDLED_MARK}"
    if task_type in unclaimed:
        return f"{task_type} {UNCLAIMED_MARK}"
    return task_type


def span(window: timedelta) -> str:
    """``90m``, ``24h``, ``7d``: a window as people write it."""
    seconds = int(window.total_seconds())
    for unit, size, smallest in (("d", 86400, 2 * 86400), ("h", 3600, 3600), ("m", 60, 60)):
        if seconds >= smallest and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@cli.command()
@queue_options
@json_option
@click.option(
    "--window",
    type=POSITIVE_DURATION,
    default="24h",
    show_default=True,
    help="Period for rates, throughput and run times.",
)
def stats(
    database_url: str | None,
    table: str,
    model_reference: str | None,
    as_json: bool,
    window: timedelta,
) -> None:
    """Tasks by type and status, queue depth, and rates and run times over a window.

    Example: taskqueue stats --window 1h --json
    """
    with open_repository(database_url, table, model_reference) as repo:
        snapshot = repo.queue_stats(window)
    if as_json:
        print_json(snapshot.as_dict())
        return
    out = console()
    for rendered in stats_tables(snapshot):
        out.print(rendered)
    if snapshot.unclaimed_types:
        out.print(
            f"{UNCLAIMED_MARK}: ready tasks, none claimed in the last hour: "
            "is a worker with a handler for this type running?"
        )
    if snapshot.unhandled_types:
        out.print(
            f"{UNHANDLED_MARK}: pending tasks that no running worker claims "
            "(`taskqueue workers` lists the workers and their types)"
        )
    if snapshot.stuck:
        out.print(f"{len(snapshot.stuck)} stuck task(s): run `taskqueue stuck` for details.")


@cli.command()
@queue_options
@json_option
@click.option(
    "--older-than",
    type=POSITIVE_DURATION,
    default="1h",
    show_default=True,
    help="Report tasks in progress for longer than this (and any expired lease).",
)
def stuck(
    database_url: str | None,
    table: str,
    model_reference: str | None,
    as_json: bool,
    older_than: timedelta,
) -> None:
    """Tasks in progress for too long, or whose worker stopped renewing its lease.

    Example: taskqueue stuck --older-than 30m
    """
    with open_repository(database_url, table, model_reference) as repo:
        tasks = repo.stuck_tasks(older_than)
    if as_json:
        print_json([task.__dict__ for task in tasks])
        return
    print_table(
        "Stuck tasks",
        ["id", "type", "started", "owner", "lease expires", "retries", "progress %"],
        [
            [
                task.id,
                task.task_type,
                _when(task.started_at),
                task.lease_owner or "-",
                _when(task.lease_expires_at) + (" (expired)" if task.lease_expired else ""),
                task.retry_count,
                task.progress,
            ]
            for task in tasks
        ],
    )


@cli.command()
@queue_options
@json_option
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Most failed tasks to list, newest first.",
)
@click.option("--type", "task_type", help="Only this task type.")
def failed(
    database_url: str | None,
    table: str,
    model_reference: str | None,
    as_json: bool,
    limit: int,
    task_type: str | None,
) -> None:
    """The latest failed tasks with their error messages.

    Example: taskqueue failed --type webhook --limit 5
    """
    with open_repository(database_url, table, model_reference) as repo:
        failures = repo.recent_failures(limit=limit, task_type=task_type)
    if as_json:
        print_json([failure.__dict__ for failure in failures])
        return
    print_table(
        "Failed tasks",
        ["id", "type", "failed at", "retries", "error"],
        [
            [
                failure.id,
                failure.task_type,
                _when(failure.completed_at),
                failure.retry_count,
                failure.error_message or "",
            ]
            for failure in failures
        ],
    )


@cli.command()
@click.argument("task_id", type=click.IntRange(min=1))
@queue_options
@json_option
def show(
    task_id: int, database_url: str | None, table: str, model_reference: str | None, as_json: bool
) -> None:
    """Every column of one task.

    Example: taskqueue show 42 --json
    """
    with open_repository(database_url, table, model_reference) as repo:
        task = repo.get_task(task_id)
        if task is None:
            raise click.ClickException(f"No task with id {task_id} exists.")
        values = {column.key: getattr(task, column.key) for column in repo.model.__table__.c}
    if as_json:
        print_json(values)
        return
    width = max(len(name) for name in values)
    for name, value in values.items():
        readable = name in {"payload", "result"} and not isinstance(value, UndecodableJSON)
        shown = json.dumps(value) if readable else value
        click.echo(f"{name.ljust(width)}  {'-' if value is None else shown}")


@cli.command()
@click.argument("task_id", type=click.IntRange(min=1), required=False)
@queue_options
@click.option("--all-failed", is_flag=True, help="Retry every failed task (see --type).")
@click.option("--type", "task_type", help="With --all-failed: only this task type.")
def retry(
    task_id: int | None,
    database_url: str | None,
    table: str,
    model_reference: str | None,
    all_failed: bool,
    task_type: str | None,
) -> None:
    """Put a failed task (or every failed task) back in the queue, due now.

    Example: taskqueue retry --all-failed --type webhook
    """
    if (task_id is None) == (not all_failed):
        raise click.UsageError("give either a TASK_ID or --all-failed")
    if task_type is not None and not all_failed:
        raise click.UsageError("--type goes with --all-failed")
    with open_repository(database_url, table, model_reference) as repo:
        if task_id is not None:
            repo.retry_task(task_id)
            click.echo(f"task {task_id} is pending again")
        else:
            count = repo.retry_failed_tasks(task_type)
            click.echo(f"{count} failed task(s) are pending again")


@cli.command()
@click.argument("task_id", type=click.IntRange(min=1))
@queue_options
def cancel(task_id: int, database_url: str | None, table: str, model_reference: str | None) -> None:
    """Cancel a pending or running task (a running one's worker is told to stop).

    Example: taskqueue cancel 42
    """
    with open_repository(database_url, table, model_reference) as repo:
        task = repo.get_task(task_id)
        running = task is not None and task.status == TaskStatus.IN_PROGRESS
        if not repo.cancel_task(task_id):
            task = repo.get_task(task_id)
            status = task.status if task is not None else "gone"
            raise click.ClickException(
                f"task {task_id} is {status}; only pending or running tasks can be cancelled"
            )
    if running:
        click.echo(f"task {task_id} cancelled (its worker stops it at its next heartbeat)")
    else:
        click.echo(f"task {task_id} cancelled")


@cli.command()
@queue_options
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    help="Delete finished tasks that finished longer ago than this (e.g. 7d).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Rows deleted per batch, each batch its own transaction.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def cleanup(
    database_url: str | None,
    table: str,
    model_reference: str | None,
    older_than: timedelta,
    batch_size: int,
    dry_run: bool,
) -> None:
    """Delete old completed, failed and cancelled tasks, one committed batch at a time.

    Example: taskqueue cleanup --older-than 7d --dry-run
    """
    if dry_run:
        with open_repository(database_url, table, model_reference) as repo:
            count = repo.count_old_tasks(older_than)
        click.echo(f"would delete {count} finished task(s) older than {span(older_than)}")
        return
    total = 0
    checked = False
    while True:
        # one committed transaction per batch; the table is checked before the first
        with open_repository(database_url, table, model_reference, check_table=not checked) as repo:
            checked = True
            deleted = repo.cleanup_old_tasks(older_than, batch_size=batch_size, max_batches=1)
        total += deleted
        if deleted < batch_size:
            break
    click.echo(f"deleted {total} finished task(s) older than {span(older_than)}")


@cli.command()
@click.argument("task_type")
@queue_options
@click.option("--payload", default="{}", show_default=True, help="The payload, as JSON.")
@click.option("--priority", type=int, default=0, show_default=True, help="Lower runs first.")
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Failed attempts that are retried (0: fail at once).",
)
@click.option("--delay", type=DURATION, default=None, help="Not claimable before this delay.")
@click.option("--unique", is_flag=True, help="Skip when an equal task is already active.")
@click.option(
    "--concurrency-key",
    default=None,
    help="Tasks sharing this key run at most --concurrency-limit at a time.",
)
@click.option(
    "--concurrency-limit",
    type=int,
    default=1,
    show_default=True,
    help="How many tasks of --concurrency-key may run at once.",
)
def enqueue(
    task_type: str,
    database_url: str | None,
    table: str,
    model_reference: str | None,
    payload: str,
    priority: int,
    max_retries: int,
    delay: timedelta | None,
    unique: bool,
    concurrency_key: str | None,
    concurrency_limit: int,
) -> None:
    """Add a task (prints its id).

    Example: taskqueue enqueue sync_account --payload '{"id": 7}' --concurrency-key account:7
    """
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from None
    except RecursionError:  # the repository's own limit is far lower: say that one
        raise click.BadParameter(
            f"nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
            param_hint="--payload",
        ) from None
    options: dict[str, Any] = {
        "priority": priority,
        "max_retries": max_retries,
        "run_at": delay,
        "concurrency_key": concurrency_key,
        "concurrency_limit": concurrency_limit,
    }
    try:
        with open_repository(database_url, table, model_reference) as repo:
            if unique:
                task_id, created = repo.enqueue_if_not_exists(task_type, value, **options)
            else:
                task_id, created = repo.enqueue(task_type, value, **options), True
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(task_id if created else f"{task_id} (already active; nothing enqueued)")
