"""Workers as real processes (the ``taskqueue worker`` command): crashes, signals, scale."""

from __future__ import annotations

import signal
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskRepository, TaskStatus

sys.path.insert(0, str(Path(__file__).parent.parent))
from backends import database_now, instant
from keyed_runs import (
    KEY_LIMITS,
    Run,
    enqueue_keyed,
    keyed_runs,
    keys_over_their_limit,
    most_at_once,
)
from processes import WorkerProcess, wait_for
from queue_app import Base, Execution, Task, WallClock

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent.parent


@pytest.fixture
def app_tables(engine: Engine) -> Iterator[None]:
    Base.metadata.create_all(engine)
    yield
    Base.metadata.drop_all(engine)


@pytest.fixture(params=["sync", "async"])
def spawn(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, app_tables: None
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``taskqueue worker`` processes: threaded workers, or (``async``) AsyncWorkers
    over asyncpg (``--async``), so each test runs against both twins."""
    started: list[WorkerProcess] = []
    twin = ["--async"] if request.param == "async" else []

    def start(*options: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(database_url, log, *options, *twin)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def enqueue(factory: sessionmaker[Session], task_type: str, payload: Any) -> int:
    with factory() as session:
        task_id = TaskRepository(session, Task).enqueue(task_type, payload)
        session.commit()
    return task_id


def task_state(factory: sessionmaker[Session], task_id: int) -> Any:
    with factory() as session:
        task = TaskRepository(session, Task).get_task(task_id)
        assert task is not None
        session.expunge(task)
        return task


def lease_expired(factory: sessionmaker[Session], task_id: int) -> bool:
    with factory() as session:
        query = text(f"SELECT lease_expires_at < {instant(session)} FROM proc_tasks WHERE id = :id")
        return bool(session.scalar(query, {"id": task_id}))


def executions(factory: sessionmaker[Session]) -> list[Any]:
    with factory() as session:
        return list(session.execute(select(Execution).order_by(Execution.id)).scalars())


def test_a_task_of_a_killed_worker_is_rescued_and_completed_once(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    task_id = enqueue(session_factory, "sleepy", {"seconds": 120})
    doomed = spawn("--lease", "2s", "--concurrency", "1")
    wait_for(lambda: task_state(session_factory, task_id).progress == 10)
    doomed.process.send_signal(signal.SIGKILL)
    assert doomed.wait(10) == -signal.SIGKILL
    assert task_state(session_factory, task_id).status is TaskStatus.IN_PROGRESS
    # nothing renews the lease any more; once it has expired another worker rescues it
    wait_for(lambda: lease_expired(session_factory, task_id))
    rescuer = spawn("--until-empty", "--concurrency", "1")
    assert rescuer.wait(60) == 0, rescuer.output()
    task = task_state(session_factory, task_id)
    assert (task.status, task.result, task.retry_count) == (TaskStatus.COMPLETED, "recovered", 1)
    runs = executions(session_factory)
    assert [(run.task_id, run.attempt) for run in runs] == [(task_id, 1), (task_id, 2)]
    assert runs[0].pid != runs[1].pid
    assert "task.rescued" in rescuer.output()


def test_sigterm_lets_a_long_task_finish_within_the_grace_period(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    task_id = enqueue(session_factory, "sleepy", {"seconds": 1.5})
    worker = spawn("--grace", "30s")
    wait_for(lambda: task_state(session_factory, task_id).progress == 10)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    task = task_state(session_factory, task_id)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "finished")
    assert "worker.shutdown_requested signal=SIGTERM" in worker.output()


def test_sigterm_hands_an_unfinished_task_back_untouched(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    task_id = enqueue(session_factory, "sleepy", {"seconds": 120})
    worker = spawn("--grace", "0.5s")
    wait_for(lambda: task_state(session_factory, task_id).progress == 10)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    task = task_state(session_factory, task_id)
    assert (task.status, task.retry_count, task.progress) == (TaskStatus.PENDING, 0, 0)
    assert task.lease_token is None and task.error_message is None
    assert "task.released" in worker.output()


def test_a_second_signal_exits_at_once(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    task_id = enqueue(session_factory, "sleepy", {"seconds": 120})
    worker = spawn("--grace", "60s")
    wait_for(lambda: task_state(session_factory, task_id).progress == 10)
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "worker.shutdown_requested" in worker.output())
    worker.signal(signal.SIGINT)
    assert worker.wait(10) == 128 + signal.SIGINT
    # the lease is left to expire; the task is not lost
    assert task_state(session_factory, task_id).status is TaskStatus.IN_PROGRESS


def test_four_worker_processes_complete_5000_tasks_exactly_once(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        TaskRepository(session, Task).enqueue_many("count", [{"n": n} for n in range(5000)])
        session.commit()
    workers = [
        spawn("--until-empty", "--concurrency", "4", "--log-level", "warning") for _ in range(4)
    ]
    for worker in workers:
        assert worker.wait(240) == 0, worker.output()
    runs = executions(session_factory)
    assert len(runs) == 5000
    assert len({run.task_id for run in runs}) == 5000
    assert len({run.pid for run in runs}) > 1
    with session_factory() as session:
        statuses = dict(
            session.execute(select(Task.status, func.count()).group_by(Task.status)).all()
        )
        results = sum(session.scalars(select(Task.result)))
    assert statuses == {TaskStatus.COMPLETED: 5000}
    assert results == sum(range(5000))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_the_worker_command_serves_metrics(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        TaskRepository(session, Task).enqueue_many("count", [{"n": n} for n in range(5)])
        session.commit()
    port = free_port()
    worker = spawn("--metrics-port", str(port), "--metrics-cache", "0")  # fresh gauges
    wait_for(
        lambda: (
            (body := scrape(port)) is not None
            and 'taskqueue_tasks_completed_total{type="count"} 5.0' in body
        )
    )
    body = scrape(port) or ""
    assert 'taskqueue_tasks{status="completed",type="count"} 5.0' in body
    assert "taskqueue_task_duration_seconds_bucket" in body
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()


def enqueue_with(factory: sessionmaker[Session], task_type: str, **options: Any) -> int:
    with factory() as session:
        task_id = TaskRepository(session, Task).enqueue(task_type, {"n": 1}, **options)
        session.commit()
    return task_id


def test_tasks_that_never_started_are_not_charged_when_their_worker_dies(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    """One slot and a prefetch of three: the first task kills the worker the moment it
    starts.  The three claimed with it never started; rescued, they keep their retries
    (``max_retries=0``: charged, they would have failed without running)."""
    killer = enqueue_with(session_factory, "crash", priority=-1, max_retries=1)
    innocent = [enqueue_with(session_factory, "count", max_retries=0) for _ in range(3)]
    doomed = spawn("--lease", "2s", "--concurrency", "1", "--prefetch", "3")
    assert doomed.wait(30) == 70, doomed.output()
    assert task_state(session_factory, killer).started_at is not None
    for task_id in innocent:
        task = task_state(session_factory, task_id)
        assert (task.status, task.started_at) == (TaskStatus.IN_PROGRESS, None)
    wait_for(lambda: all(lease_expired(session_factory, i) for i in [killer, *innocent]))
    rescuer = spawn("--until-empty", "--types", "count")
    assert rescuer.wait(60) == 0, rescuer.output()
    for task_id in innocent:
        task = task_state(session_factory, task_id)
        assert (task.status, task.retry_count) == (TaskStatus.COMPLETED, 0)
    crashed = task_state(session_factory, killer)
    assert (crashed.status, crashed.retry_count) == (TaskStatus.PENDING, 1)


def test_a_task_that_kills_its_worker_every_time_still_ends_failed(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    """Crash loops stay bounded: each crash of a started attempt is charged, so the task
    ends ``failed`` after ``max_retries`` retries, however its claims were made."""
    killer = enqueue_with(session_factory, "crash", max_retries=1)
    for _ in range(6):  # two charged crashes, each perhaps after one uncharged
        if task_state(session_factory, killer).status is TaskStatus.FAILED:
            break
        wait_for(
            lambda: (
                task_state(session_factory, killer).lease_token is None
                or lease_expired(session_factory, killer)
            )
        )
        worker = spawn("--lease", "1s", "--concurrency", "2", "--until-empty")
        worker.wait(60)
    task = task_state(session_factory, killer)
    assert (task.status, task.retry_count) == (TaskStatus.FAILED, 2), task.error_message
    runs = [run for run in executions(session_factory) if run.task_id == killer]
    assert 2 <= len(runs) <= 4


def test_cancelling_a_running_task_stops_its_handler_and_is_final(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    task_id = enqueue(session_factory, "cancellable", {})
    worker = spawn("--lease", "4s", "--concurrency", "1")
    wait_for(lambda: len(executions(session_factory)) == 1)  # its handler runs
    with session_factory.begin() as session:
        assert TaskRepository(session, Task).cancel_task(task_id) is True
    # within a heartbeat (a quarter of the lease) the handler is told to stop
    wait_for(lambda: len(executions(session_factory)) == 2, timeout=10)
    wait_for(lambda: f"task.lease_lost id={task_id}" in worker.output())
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    task = task_state(session_factory, task_id)
    # what the handler returned afterwards was refused: no result, no retry
    assert (task.status, task.result, task.retry_count) == (TaskStatus.CANCELLED, None, 0)
    runs = executions(session_factory)
    assert [run.attempt for run in runs] == [1, 1]
    assert (runs[1].note or "").startswith("stopped: the lease on this task was lost")


def test_a_pause_stops_new_starts_across_processes_and_a_resume_drains_the_rest(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        TaskRepository(session, Task).enqueue_many("work", [{"ms": 200}] * 60)
        session.commit()
    for _ in range(2):
        spawn("--concurrency", "2", "--prefetch", "0")
    wait_for(lambda: len(executions(session_factory)) >= 8)
    with session_factory.begin() as session:
        TaskRepository(session, Task).pause("work")
    with session_factory() as session:
        paused_at = session.scalar(select(WallClock()))  # after the commit
    # the tasks claimed before the pause finish; then nothing of the type starts
    wait_for(lambda: count_status(session_factory, TaskStatus.IN_PROGRESS) == 0)
    with session_factory() as session:
        started_after = session.scalar(
            select(func.count()).where(Task.type == "work", Task.started_at > paused_at)
        )
    assert started_after == 0
    pending = count_status(session_factory, TaskStatus.PENDING)
    assert pending > 0
    with session_factory.begin() as session:
        TaskRepository(session, Task).resume("work")
    wait_for(lambda: count_status(session_factory, TaskStatus.COMPLETED) == 60, timeout=60)


def count_status(factory: sessionmaker[Session], status: TaskStatus) -> int:
    with factory() as session:
        return int(
            session.scalar(select(func.count()).select_from(Task).where(Task.status == status)) or 0
        )


def test_a_rate_limit_holds_across_worker_processes_and_is_nearly_used_up(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    """20 per second, 3 worker processes, 10 s: never more than 20 starts in any window
    of a second (by the database clock, as the limit counts), and at least 90 % of the
    200 allowed."""
    with session_factory.begin() as session:
        repo = TaskRepository(session, Task)
        repo.enqueue_many("work", [{"ms": 2}] * 400)
        repo.set_rate_limit("work", 20, per=timedelta(seconds=1))
    workers = [spawn("--concurrency", "4") for _ in range(3)]
    wait_for(lambda: count_status(session_factory, TaskStatus.COMPLETED) > 0)
    with session_factory() as session:
        first = session.scalar(select(func.min(Task.started_at)))
    wait_for(lambda: db_seconds_since(session_factory, first) >= 10.5, timeout=30)
    for worker in workers:
        worker.signal(signal.SIGTERM)
    assert [worker.wait(30) for worker in workers] == [0, 0, 0]
    with session_factory() as session:
        starts = list(
            session.scalars(
                select(Task.started_at)
                .where(Task.started_at.is_not(None))
                .order_by(Task.started_at)
            )
        )
    second = timedelta(seconds=1)
    busiest = max(sum(1 for other in starts if start - second < other <= start) for start in starts)
    assert busiest <= 20
    in_ten = sum(1 for start in starts if start < first + 10 * second)
    assert in_ten >= 180, f"{in_ten} starts in 10 s (allowed: 200)"


def db_seconds_since(factory: sessionmaker[Session], moment: Any) -> float:
    with factory() as session:
        return (database_now(session) - moment).total_seconds()  # type: ignore[no-any-return]


def runs_of_keyed(factory: sessionmaker[Session], killed_at: Any = None) -> list[Run]:
    with factory() as session:
        return keyed_runs(session, killed_at)


def assert_within_limits(runs: list[Run], limits: dict[str, int]) -> None:
    assert keys_over_their_limit(runs, limits) == {}
    assert most_at_once(runs) >= 8  # different keys do run side by side


def test_concurrency_keys_hold_across_worker_processes(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    """4 processes x 8 slots, 400 tasks over 15 keys: no key ever runs more tasks at once
    than its limit, while the keys together keep many slots busy."""
    with session_factory.begin() as session:
        enqueue_keyed(session, 400, ms=(30, 30))
    limits = KEY_LIMITS
    workers = [spawn("--concurrency", "8", "--until-empty") for _ in range(4)]
    for worker in workers:
        assert worker.wait(120) == 0, worker.output()
    assert count_status(session_factory, TaskStatus.COMPLETED) == 400
    runs = runs_of_keyed(session_factory)
    assert len(runs) == 400 and all(run.end is not None for run in runs)
    assert_within_limits(runs, limits)


def test_a_killed_worker_keeps_its_keys_slots_only_until_its_leases_expire(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    """A worker SIGKILLed while running keyed tasks: their slots stay taken (the limits
    hold: its tasks may still be running, as far as anyone can tell) until their leases
    expire and a rescue frees them, within lease + rescue interval; then the keys run
    again and everything completes."""
    lease = 2.0
    with session_factory.begin() as session:
        enqueue_keyed(session, 300, ms=(150, 150))
    limits = KEY_LIMITS
    doomed = spawn("--concurrency", "8", "--lease", f"{lease}s")

    def running_in_doomed() -> list[Run]:
        return [r for r in runs_of_keyed(session_factory) if r.pid == doomed.pid and r.end is None]

    # the doomed worker starts alone and takes keys of limit 1; a worker that frees a
    # slot claims again in the same transaction, so it tends to keep its keys
    wait_for(lambda: any(limits[run.key] == 1 for run in running_in_doomed()))
    others = [spawn("--concurrency", "8", "--lease", f"{lease}s") for _ in range(3)]
    wait_for(lambda: all(worker.started() for worker in others))
    wait_for(lambda: any(limits[run.key] == 1 for run in running_in_doomed()))
    doomed.process.send_signal(signal.SIGKILL)
    assert doomed.wait(10) == -signal.SIGKILL
    with session_factory() as session:
        killed_at = session.scalar(select(WallClock()))
    held = {run.key for run in running_in_doomed() if limits[run.key] == 1}
    assert held
    wait_for(lambda: count_status(session_factory, TaskStatus.COMPLETED) == 300, timeout=120)
    for worker in others:
        worker.signal(signal.SIGTERM)
    assert [worker.wait(30) for worker in others] == [0, 0, 0]
    runs = runs_of_keyed(session_factory, {doomed.pid: killed_at})
    assert_within_limits(runs, limits)
    # the slots a killed call held came back within a lease and a rescue interval
    # (a quarter lease by default), plus the time to notice and claim
    for key in held:
        resumed = min(run.start for run in runs if run.key == key and run.start > killed_at)
        assert (resumed - killed_at).total_seconds() <= lease * 1.25 + 2.0


def live_pids(factory: sessionmaker[Session]) -> set[int]:
    with factory() as session:
        return {worker.pid for worker in TaskRepository(session, Task).workers()}


def test_worker_processes_register_and_leave_the_registry(
    spawn: Callable[..., WorkerProcess], session_factory: sessionmaker[Session]
) -> None:
    """Each worker process is listed while it runs; one stopped with SIGTERM removes its
    row; one SIGKILLed stays listed until its last heartbeat is a lease old."""
    stopped = spawn("--lease", "2s")
    killed = spawn("--lease", "2s")
    wait_for(lambda: live_pids(session_factory) == {stopped.pid, killed.pid})
    stopped.signal(signal.SIGTERM)
    assert stopped.wait(30) == 0, stopped.output()
    assert live_pids(session_factory) == {killed.pid}
    killed.process.send_signal(signal.SIGKILL)
    assert killed.wait(10) == -signal.SIGKILL
    wait_for(lambda: live_pids(session_factory) == set(), timeout=10)
