"""``taskqueue schedules``: list the periodic schedules workers recorded, and pause,
resume or run one by name, without the handlers' code (the rows say what to enqueue).

``taskqueue schedules`` alone lists them; the queue options (``--database-url``,
``--table``, ``--model``) go before or after the subcommand::

    taskqueue schedules --table jobs
    taskqueue schedules pause nightly_report
    taskqueue schedules run nightly_report --table jobs
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import click
from click.core import ParameterSource

from sqlalchemy_taskqueue.repository import TaskRepository
from sqlalchemy_taskqueue.scheduling import ScheduleState
from sqlalchemy_taskqueue.scheduling._table import require_schedules_table

from ._group import cli
from ._operations import json_option, open_repository, print_json, print_table, queue_options

__all__ = ["schedules"]

_QUEUE_OPTIONS = ("database_url", "table", "model_reference")


@cli.group(invoke_without_command=True)
@queue_options
@json_option
@click.pass_context
def schedules(
    ctx: click.Context,
    database_url: str | None,
    table: str,
    model_reference: str | None,
    as_json: bool,
) -> None:
    """List periodic schedules: next and last fire, paused, and whether a running worker
    carries them (orphaned: none has for a while, so they do not fire).

    Example: taskqueue schedules --json
    """
    ctx.obj = {"database_url": database_url, "table": table, "model_reference": model_reference}
    if ctx.invoked_subcommand is not None:
        return
    with _schedules_repository(ctx, {}) as repo:
        states = repo.schedules()
    if as_json:
        print_json([state.as_dict() for state in states])
        return
    print_table(
        "Schedules",
        ["name", "type", "schedule", "time zone", "next fire", "last fire", "last task", "state"],
        [
            [
                state.name,
                state.task_type,
                state.spec,
                state.timezone,
                _local(state.next_fire_at, state.timezone) if not state.paused else "-",
                _local(state.last_fire_at, state.timezone),
                state.last_task_id or "-",
                _state(state),
            ]
            for state in states
        ],
    )


def _subcommand(function: Callable[..., Any]) -> Callable[..., Any]:
    """A ``schedules`` subcommand taking ``NAME`` and the queue options."""
    function = queue_options(function)
    function = click.argument("name")(function)
    function = click.pass_context(function)
    return schedules.command()(function)


@_subcommand
def pause(ctx: click.Context, name: str, **options: Any) -> None:
    """Stop a schedule from firing (its tasks already enqueued still run).

    Example: taskqueue schedules pause nightly_report
    """
    with _schedules_repository(ctx, options) as repo:
        repo.pause_schedule(name)
    click.echo(f"schedule {name} paused")


@_subcommand
def resume(ctx: click.Context, name: str, **options: Any) -> None:
    """Let a paused schedule fire again (fires missed meanwhile follow its missed policy).

    Example: taskqueue schedules resume nightly_report
    """
    with _schedules_repository(ctx, options) as repo:
        repo.resume_schedule(name)
    click.echo(f"schedule {name} resumed")


@_subcommand
def run(ctx: click.Context, name: str, **options: Any) -> None:
    """Enqueue a schedule's task now, once (paused or not; its fire times are unchanged).

    Example: taskqueue schedules run nightly_report
    """
    with _schedules_repository(ctx, options) as repo:
        task_id = repo.run_schedule(name)
    click.echo(f"task {task_id} enqueued for schedule {name}")


@contextmanager
def _schedules_repository(
    ctx: click.Context, options: dict[str, Any]
) -> Iterator[TaskRepository[Any]]:
    """``open_repository`` with the queue options given to the subcommand, else to the
    group, once the schedules table is known to exist."""
    given = dict(ctx.obj or {})
    for key in _QUEUE_OPTIONS:
        if key in options and ctx.get_parameter_source(key) is not ParameterSource.DEFAULT:
            given[key] = options[key]
        given.setdefault(key, options.get(key))
    with open_repository(given["database_url"], given["table"], given["model_reference"]) as repo:
        require_schedules_table(repo.session.connection(), repo.model.__table__)
        yield repo


def _local(value: datetime | None, zone: str) -> str:
    """A time in the schedule's own zone, as its cron expression reads it."""
    if value is None:
        return "-"
    return value.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


def _state(state: ScheduleState) -> str:
    if state.orphaned:
        return "orphaned" + (", paused" if state.paused else "")
    return "paused" if state.paused else "active"
