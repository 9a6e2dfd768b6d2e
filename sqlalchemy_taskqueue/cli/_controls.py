"""Flow-control commands: ``pause``, ``resume`` and ``limits``.

``taskqueue pause [TYPE]`` stops claims of a type (of every type without one) at every
worker's next claim; ``taskqueue resume [TYPE]`` lets them go on; ``taskqueue limits``
shows what is paused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from sqlalchemy_taskqueue._controls import WHOLE_QUEUE, require_controls_table
from sqlalchemy_taskqueue.repository import TaskRepository

from ._group import cli
from ._operations import json_option, open_repository, print_json, print_table, queue_options

__all__ = ["limits", "pause", "resume"]


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
@queue_options
@json_option
def limits(
    database_url: str | None, table: str, model_reference: str | None, as_json: bool
) -> None:
    """The queue's flow controls: what is paused.

    Example: taskqueue limits --json
    """
    with _controls_repository(database_url, table, model_reference) as repo:
        paused = repo.paused()
    if as_json:
        print_json({"paused": paused})
        return
    print_table(
        "Paused",
        ["task type"],
        [["(the whole queue)" if name == WHOLE_QUEUE else name] for name in paused],
    )


@contextmanager
def _controls_repository(
    database_url: str | None, table: str, model_reference: str | None
) -> Iterator[TaskRepository[Any]]:
    with open_repository(database_url, table, model_reference) as repo:
        require_controls_table(repo.session.connection(), repo.model.__table__)
        yield repo


def _what(task_type: str | None) -> str:
    return "the whole queue" if task_type is None else f"task type {task_type}"
