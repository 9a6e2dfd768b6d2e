"""Reading back how many tasks of each concurrency key ran at once, from the start and
end that the test app's ``keyed`` handler records (both by the database clock)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from queue_app import Execution, Task
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import TaskRepository

#: 10 keys of limit 1 and 5 of limit 3.
KEY_LIMITS = {**{f"one-{n}": 1 for n in range(10)}, **{f"three-{n}": 3 for n in range(5)}}


def enqueue_keyed(session: Session, tasks: int, ms: tuple[int, int], seed: int = 0) -> None:
    """``tasks`` tasks of the ``keyed`` handler, interleaved over :data:`KEY_LIMITS`, each
    working a random ``ms[0]..ms[1]`` milliseconds (in the caller's transaction)."""
    rng = random.Random(seed)
    repo = TaskRepository(session, Task)
    keys = list(KEY_LIMITS)
    for n in range(tasks):
        key = keys[n % len(keys)]
        repo.enqueue(
            "keyed",
            {"ms": rng.randint(*ms)},
            concurrency_key=key,
            concurrency_limit=KEY_LIMITS[key],
            max_retries=10,
        )


class Run(NamedTuple):
    """One handler call of the ``keyed`` handler."""

    key: str
    start: datetime
    end: datetime | None  # None: no end recorded (its process was killed, or it still runs)
    pid: int


def keyed_runs(
    executor: Session | Connection, killed_at: Mapping[int, datetime] | None = None
) -> list[Run]:
    """Every call of the ``keyed`` handler; one whose process was killed (its pid in
    ``killed_at``) without recording its end ends when the process was killed."""
    killed_at = killed_at or {}
    rows = executor.execute(
        select(Execution.task_id, Execution.attempt, Execution.pid, Execution.note, Execution.at)
    ).all()
    keys = {row[0]: row[1] for row in executor.execute(select(Task.id, Task.concurrency_key))}
    ends = {(r.task_id, r.attempt, r.pid): r.at for r in rows if r.note == "end"}
    return [
        Run(
            keys[r.task_id],
            r.at,
            ends.get((r.task_id, r.attempt, r.pid), killed_at.get(r.pid)),
            r.pid,
        )
        for r in rows
        if r.note == "start"
    ]


def most_at_once(runs: list[Run]) -> int:
    """The most runs going on at one instant (a run that ends as another starts does not
    overlap it); a run without an end counts as going on for ever."""
    events: list[tuple[Any, int]] = [(run.start, 1) for run in runs]
    events += [(run.end, -1) for run in runs if run.end is not None]
    most = going = 0
    for _, step in sorted(events):
        going += step
        most = max(most, going)
    return most


def keys_over_their_limit(runs: list[Run], limits: Mapping[str, int]) -> dict[str, int]:
    """The keys that ever ran more tasks at once than their limit, with how many."""
    most = {key: most_at_once([run for run in runs if run.key == key]) for key in limits}
    return {key: count for key, count in most.items() if count > limits[key]}
