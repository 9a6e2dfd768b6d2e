"""``taskqueue workers``: the workers running now, from the queue's worker registry."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from sqlalchemy_taskqueue._registry import require_workers_table

from ._group import cli
from ._operations import json_option, open_repository, print_json, print_table, queue_options

__all__ = ["workers"]


@cli.command()
@queue_options
@json_option
def workers(
    database_url: str | None, table: str, model_reference: str | None, as_json: bool
) -> None:
    """The workers running now: where, which types, how many slots, since when, and
    their last heartbeat (a worker that died drops out one lease after it).

    Example: taskqueue workers --json
    """
    with open_repository(database_url, table, model_reference) as repo:
        require_workers_table(repo.session.connection(), repo.model.__table__)
        live = repo.workers()
    if as_json:
        print_json(
            [
                {
                    "worker_id": worker.worker_id,
                    "host": worker.host,
                    "pid": worker.pid,
                    "task_types": worker.task_types,
                    "slots": worker.slots,
                    "version": worker.version,
                    "started_at": worker.started_at.isoformat(),
                    "heartbeat_at": worker.heartbeat_at.isoformat(),
                }
                for worker in live
            ]
        )
        return
    now = datetime.now(timezone.utc)
    print_table(
        "Workers",
        ["worker", "host", "pid", "types", "slots", "version", "up (s)", "heartbeat (s ago)"],
        [
            [
                worker.worker_id,
                worker.host,
                worker.pid,
                ", ".join(worker.task_types),
                worker.slots,
                worker.version,
                f"{(now - worker.started_at).total_seconds():.0f}",
                f"{max((now - worker.heartbeat_at).total_seconds(), 0.0):.1f}",
            ]
            for worker in live
        ],
    )
    if not live:
        click.echo("no worker has registered: is one running against this database and table?")
