"""Periodic schedules carried by several worker processes: each fire time enqueues
exactly one task, with no leader, through kills, terminated connections and downtime."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import fault_queue, wait_for
from queue_app import SCHEDULE_ENV
from scenarios import periodic_schedule
from sqlalchemy import text

from sqlalchemy_taskqueue.scheduling import make_schedule

pytestmark = pytest.mark.slow


def test_three_workers_enqueue_one_task_per_second_for_twenty_seconds(
    server_url: str, tmp_path: Path
) -> None:
    report = periodic_schedule(
        server_url, tmp_path, seconds=20, kills=0, terminations=0, overlap=False
    )
    counts = report.details["counts"]
    assert len(counts) >= 18, report  # every second from the first fire to the last
    assert set(counts) == {1}, f"fire times missed (0) or enqueued twice (>1): {counts}"
    assert report.reexecutions == 0, report
    assert set(report.details["exits"]) == {0}, report


def test_kills_and_terminated_connections_neither_lose_nor_repeat_a_fire(
    server_url: str, tmp_path: Path
) -> None:
    report = periodic_schedule(server_url, tmp_path, seconds=20, kills=3, terminations=2)
    assert report.faults == 5, report
    assert report.tasks >= 18, report
    assert (report.lost, report.completed_twice) == (0, 0), report
    assert set(report.details["exits"]) == {0}, report


@pytest.mark.parametrize(("missed", "expected"), [("latest", 1), ("skip", 0), ("all", 3)])
def test_fires_missed_while_every_worker_was_down_follow_the_policy(
    server_url: str, tmp_path: Path, missed: str, expected: int
) -> None:
    """A worker records an hourly schedule and stops; the schedule's next fire time is
    then moved three fire times back, as if every worker had been down across them (an
    hour of downtime, without waiting for it); a worker started again fires them as the
    policy says."""
    with fault_queue(server_url, tmp_path) as queue:
        now = queue.now()
        # hourly, half an hour from now: the fires are missed, not merely late
        cron = f"{(now.minute + 30) % 60} * * * *"
        env = {SCHEDULE_ENV: f"cron={cron};missed={missed};overlap=1"}
        queue.spawn(env=env)
        wait_for(lambda: next_fire(queue) is not None)
        assert queue.stop_workers() == [0]
        schedule = make_schedule("tick", cron=cron)
        latest = schedule.previous_fire(now)
        down_from = latest - timedelta(hours=2)
        with queue.engine.begin() as connection:
            connection.execute(
                text("UPDATE proc_tasks_schedules SET next_fire_at = :at WHERE name = 'tick'"),
                {"at": down_from},
            )
        worker = queue.spawn(env=env)
        wait_for(lambda: next_fire(queue) > latest)  # the worker's first turn fired
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        with queue.engine.connect() as connection:
            fired = list(
                connection.scalars(
                    text("SELECT run_at FROM proc_tasks WHERE type = 'tick' ORDER BY run_at")
                )
            )
    all_three = [down_from, down_from + timedelta(hours=1), latest]
    assert fired == {"latest": [latest], "skip": [], "all": all_three}[missed]
    assert len(fired) == expected


def next_fire(queue: Any) -> Any:
    return queue.scalar("SELECT next_fire_at FROM proc_tasks_schedules WHERE name = 'tick'")
