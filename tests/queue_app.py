"""A small application for the worker process tests (loaded by ``taskqueue worker``).

Its handlers record every execution in a table of their own, so the tests can check
that each task ran (and completed) exactly once.
"""

from __future__ import annotations

import os
import time
from functools import cache
from typing import Any

from sqlalchemy import BigInteger, Engine, Integer, Text, create_engine, insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.functions import FunctionElement

from sqlalchemy_taskqueue import HandlerRegistry, TaskContext, TaskMixin
from sqlalchemy_taskqueue._timestamps import Timestamp
from sqlalchemy_taskqueue.backends.sqlite import configure_engine


class Base(DeclarativeBase):
    pass


class Task(TaskMixin, Base):
    __tablename__ = "proc_tasks"


class WallClock(FunctionElement[Any]):
    """The database's clock now, not at its transaction's start."""

    type = Timestamp
    inherit_cache = True


@compiles(WallClock)
def _wall_clock(element: WallClock, compiler: Any, **kw: Any) -> str:
    return "clock_timestamp()"


@compiles(WallClock, "sqlite")
def _wall_clock_sqlite(element: WallClock, compiler: Any, **kw: Any) -> str:
    return "(strftime('%Y-%m-%d %H:%M:%f000', 'now'))"


class Execution(Base):
    """One row per handler call."""

    __tablename__ = "proc_executions"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    task_id: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer)
    pid: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text)
    #: when the handler started, by the database's clock
    at: Mapped[Any] = mapped_column(Timestamp, server_default=WallClock())


tasks = HandlerRegistry(Task)


@cache
def engine() -> Engine:
    engine = create_engine(os.environ["TASKQUEUE_DATABASE_URL"], pool_size=8)
    return configure_engine(engine) if engine.dialect.name == "sqlite" else engine


def record(task: Any, ctx: TaskContext, note: str | None = None) -> None:
    with engine().begin() as connection:
        connection.execute(
            insert(Execution).values(
                task_id=task.id, attempt=ctx.attempt, pid=os.getpid(), note=note
            )
        )


@tasks.handler("count")
def count(task: Any, ctx: TaskContext) -> int:
    record(task, ctx)
    return int(task.payload["n"])


@tasks.handler("sleepy")
def sleepy(task: Any, ctx: TaskContext) -> str:
    """Works for ``payload["seconds"]`` (ignoring stop requests); a retry finishes at once."""
    record(task, ctx)
    if ctx.attempt > 1:
        return "recovered"
    ctx.update_progress(10)
    deadline = time.monotonic() + float(task.payload["seconds"])
    while time.monotonic() < deadline:
        time.sleep(0.05)  # simulated work
    return "finished"


@tasks.handler("work")
def work(task: Any, ctx: TaskContext) -> int:
    """Records the call (and the worker's wall clock), works ``payload["ms"]``
    milliseconds, returns the worker's pid."""
    record(task, ctx, note=f"{time.time():.3f}")
    time.sleep(task.payload["ms"] / 1000)  # simulated work
    return os.getpid()


@tasks.handler("crash")
def crash(task: Any, ctx: TaskContext) -> None:
    """Kills its worker process at once, every time (a segfault, an OOM kill)."""
    record(task, ctx)
    os._exit(70)


@tasks.handler("oversized")
def oversized(task: Any, ctx: TaskContext) -> str:
    """Returns a result of ``payload["bytes"]`` bytes as JSON, over the worker's limit."""
    record(task, ctx)
    return "x" * (int(task.payload["bytes"]) - 2)


@tasks.handler("cancellable")
def cancellable(task: Any, ctx: TaskContext) -> str:
    """Works until asked to stop (at most a minute), as a well-behaved long task does."""
    record(task, ctx)
    deadline = time.monotonic() + 60
    while not ctx.should_stop() and time.monotonic() < deadline:
        time.sleep(0.02)  # simulated work between checks
    record(task, ctx, note=f"stopped: {ctx.stop_reason}")
    return "finished"


@tasks.handler("keyed")
def keyed(task: Any, ctx: TaskContext) -> None:
    """Records its start and its end (each by the database clock), working
    ``payload["ms"]`` milliseconds in between: the intervals tell how many tasks of a
    concurrency key ran at once."""
    record(task, ctx, note="start")
    time.sleep(task.payload["ms"] / 1000)  # simulated work
    record(task, ctx, note="end")


#: The periodic process tests give the worker a schedule through the environment:
#: ``every=1s;missed=latest;overlap=1`` (or ``cron=...``) declares ``tick`` with those
#: options.  Without it the app has no schedule.
SCHEDULE_ENV = "TASKQUEUE_TEST_SCHEDULE"


def tick(task: Any, ctx: TaskContext) -> str:
    """Records the call; returns the fire time it was enqueued for."""
    record(task, ctx)
    return str(task.run_at.isoformat())


def _declare_schedule(spec: str) -> None:
    options = dict(item.split("=", 1) for item in spec.split(";"))
    tasks.periodic(
        "tick",
        every=options.get("every"),
        cron=options.get("cron"),
        missed=options.get("missed", "latest"),  # type: ignore[arg-type]
        overlap=options.get("overlap") == "1",
    )(tick)


if os.environ.get(SCHEDULE_ENV):
    _declare_schedule(os.environ[SCHEDULE_ENV])
