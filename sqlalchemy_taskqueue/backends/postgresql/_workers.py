"""The PostgreSQL statements of the worker registry (see :mod:`sqlalchemy_taskqueue._registry`)."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import (
    Delete,
    Insert,
    Interval,
    Select,
    Table,
    bindparam,
    delete,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.dml import ReturningDelete

from sqlalchemy_taskqueue._registry import workers_table

__all__ = [
    "forget_dead_workers_statement",
    "live_workers_statement",
    "record_worker_statement",
    "remove_worker_statement",
]


@functools.cache
def record_worker_statement(table: Table) -> Insert:
    """Write a worker's row, or refresh it: its heartbeat now, expiring one ``lease``
    later (an upsert, so a worker whose row was removed while it stalled writes it again).

    Parameters: ``worker_id``, ``host``, ``pid``, ``task_types`` (a list), ``slots``,
    ``version`` and ``lease`` (an interval).

    Example::

        session.execute(record_worker_statement(Task.__table__), {"worker_id": "w1", ...})
    """
    workers = workers_table(table)
    w = workers.c
    expires = func.now() + bindparam("lease", type_=Interval)
    stmt = pg_insert(workers).values(
        worker_id=bindparam("worker_id", type_=w.worker_id.type),
        host=bindparam("host", type_=w.host.type),
        pid=bindparam("pid", type_=w.pid.type),
        task_types=bindparam("task_types", type_=w.task_types.type),
        slots=bindparam("slots", type_=w.slots.type),
        version=bindparam("version", type_=w.version.type),
        heartbeat_at=func.now(),
        expires_at=expires,
    )
    return stmt.on_conflict_do_update(
        index_elements=[w.worker_id],
        set_={"heartbeat_at": func.now(), "expires_at": stmt.excluded.expires_at},
    )


def remove_worker_statement(table: Table, worker_id: str) -> Delete:
    """Delete a worker's row (it stopped gracefully).

    Example::

        session.execute(remove_worker_statement(Task.__table__, "web-1:4242:9f3c1a2b"))
    """
    workers = workers_table(table)
    return delete(workers).where(workers.c.worker_id == worker_id)


def live_workers_statement(table: Table) -> Select[Any]:
    """The rows of the workers whose registration has not expired, oldest first.

    Example::

        rows = session.execute(live_workers_statement(Task.__table__)).all()
    """
    workers = workers_table(table)
    return (
        select(workers)
        .where(workers.c.expires_at > func.now())
        .order_by(workers.c.started_at, workers.c.worker_id)
    )


def forget_dead_workers_statement(table: Table) -> ReturningDelete[Any]:
    """Delete the rows of workers that stopped heartbeating (expired); returns their ids.

    Example::

        gone = session.execute(forget_dead_workers_statement(Task.__table__)).scalars().all()
    """
    workers = workers_table(table)
    return delete(workers).where(workers.c.expires_at <= func.now()).returning(workers.c.worker_id)
