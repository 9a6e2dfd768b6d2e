"""Flow-control commands: ``pause``, ``resume``, ``limit`` and ``limits``.

``taskqueue pause [TYPE]`` stops claims of a type (of every type without one) at every
worker's next claim; ``taskqueue resume [TYPE]`` lets them go on; ``taskqueue limit TYPE
LIMIT --per 1s`` rate-limits a type (``--clear`` lifts it); ``taskqueue limits`` shows
the pauses, the rate limits with the budget each has used, and the concurrency keys
whose every slot is taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import click

from sqlalchemy_taskqueue._concurrency import require_key_slots_table
from sqlalchemy_taskqueue._controls import WHOLE_QUEUE, require_controls_table
from sqlalchemy_taskqueue.repository import TaskRepository

from ._group import POSITIVE_DURATION, cli
from ._operations import (
    json_option,
    open_repository,
    print_json,
    print_table,
    queue_options,
    span,
)

__all__ = ["limit", "limits", "pause", "resume"]


@cli.command()
@click.argument("task_type", required=False)
@queue_options
def pause(
    task_type: str | None, database_url: str | None, table: str, model_reference: str | None
) -> None:
    """Stop claims of TASK_TYPE (of every type without one); running tasks finish.

    Example: taskqueue pause data_export
    """
    with _controls_repository(database_url, table, model_reference) as repo:
        repo.pause(task_type)
    click.echo(f"{_what(task_type)} paused: workers claim none of it until resumed")


@cli.command()
@click.argument("task_type", required=False)
@queue_options
def resume(
    task_type: str | None, database_url: str | None, table: str, model_reference: str | None
) -> None:
    """Let claims of TASK_TYPE (of the whole queue without one) go on.

    Example: taskqueue resume data_export
    """
    with _controls_repository(database_url, table, model_reference) as repo:
        repo.resume(task_type)
        still = repo.paused()
    click.echo(f"{_what(task_type)} resumed")
    if task_type is None and still:
        click.echo(f"still paused on their own: {', '.join(still)}")


@cli.command()
@click.argument("task_type")
@click.argument("rate", metavar="LIMIT", type=click.IntRange(min=1), required=False)
@queue_options
@click.option(
    "--per",
    type=POSITIVE_DURATION,
    help="The window LIMIT counts claims in (e.g. 1s, 1m).",
)
@click.option("--clear", is_flag=True, help="Lift the type's rate limit.")
def limit(
    task_type: str,
    rate: int | None,
    database_url: str | None,
    table: str,
    model_reference: str | None,
    per: timedelta | None,
    clear: bool,
) -> None:
    """Allow at most LIMIT claims of TASK_TYPE in any window of --per, across every worker.

    Example: taskqueue limit webhook 20 --per 1s
    """
    if clear == (rate is not None):
        raise click.UsageError("give either LIMIT with --per, or --clear")
    if rate is not None and per is None:
        raise click.UsageError("LIMIT needs --per (e.g. --per 1s)")
    with _controls_repository(database_url, table, model_reference) as repo:
        if rate is None or per is None:
            lifted = repo.clear_rate_limit(task_type)
        else:
            repo.set_rate_limit(task_type, rate, per=per)
    if rate is None or per is None:
        click.echo(f"task type {task_type}: rate limit {'lifted' if lifted else 'none to lift'}")
    else:
        click.echo(f"task type {task_type}: at most {rate} claims per {span(per)}")


@cli.command()
@queue_options
@json_option
def limits(
    database_url: str | None, table: str, model_reference: str | None, as_json: bool
) -> None:
    """The queue's flow controls: what is paused, each rate limit with the claims it
    counted in its current window, and the concurrency keys at their limit.

    Example: taskqueue limits --json
    """
    with _controls_repository(database_url, table, model_reference) as repo:
        paused = repo.paused()
        rates = repo.rate_limits()
        full = repo.keys_at_limit()
    if as_json:
        print_json(
            {
                "paused": paused,
                "rate_limits": [
                    {
                        "task_type": rate.task_type,
                        "limit": rate.limit,
                        "per_seconds": rate.per.total_seconds(),
                        "recent_starts": rate.recent_starts,
                        "at_limit": rate.at_limit,
                    }
                    for rate in rates
                ],
                "keys_at_limit": [
                    {
                        "concurrency_key": key.concurrency_key,
                        "limit": key.limit,
                        "running": key.running,
                        "waiting": key.waiting,
                    }
                    for key in full
                ],
            }
        )
        return
    print_table(
        "Paused",
        ["task type"],
        [["(the whole queue)" if name == WHOLE_QUEUE else name] for name in paused],
    )
    print_table(
        "Rate limits",
        ["task type", "limit", "per", "claims in window", "state"],
        [
            [
                rate.task_type,
                rate.limit,
                span(rate.per),
                rate.recent_starts,
                "at limit" if rate.at_limit else "-",
            ]
            for rate in rates
        ],
    )
    print_table(
        "Concurrency keys at their limit",
        ["key", "limit", "running", "waiting"],
        [[key.concurrency_key, key.limit, key.running, key.waiting] for key in full],
    )


@contextmanager
def _controls_repository(
    database_url: str | None, table: str, model_reference: str | None
) -> Iterator[TaskRepository[Any]]:
    with open_repository(database_url, table, model_reference) as repo:
        connection = repo.session.connection()
        require_controls_table(connection, repo.model.__table__)
        require_key_slots_table(connection, repo.model.__table__)
        yield repo


def _what(task_type: str | None) -> str:
    return "the whole queue" if task_type is None else f"task type {task_type}"
