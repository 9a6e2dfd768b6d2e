"""The worker in-process: handlers, outcomes, timeouts, progress, leases, shutdown."""

from __future__ import annotations

import enum
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import declare_task_model, with_tables
from processes import wait_for
from sqlalchemy import ForeignKey, String, inspect, select, text
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    reconstructor,
    relationship,
    scoped_session,
    sessionmaker,
)
from twins import running

from sqlalchemy_taskqueue import (
    HandlerRegistry,
    TaskContext,
    TaskInterrupted,
    TaskMixin,
    TaskRepository,
    TaskStatus,
    Worker,
)

Factory = sessionmaker[Session]


def enqueue(
    factory: Factory, model: type[Any], task_type: str, payload: Any = None, **kw: Any
) -> int:
    with factory() as session:
        task_id = TaskRepository(session, model).enqueue(task_type, payload or {}, **kw)
        session.commit()
    return task_id


def fetch(factory: Factory, model: type[Any], task_id: int) -> Any:
    with factory() as session:
        task = TaskRepository(session, model).get_task(task_id)
        assert task is not None
        session.expunge(task)
    return task


MakeWorker = Callable[..., Any]


@pytest.fixture
def make_worker(new_worker: MakeWorker) -> MakeWorker:
    """``new_worker`` with quick polls and short leases: every test here runs against
    both twins."""

    def configured(factory: Any, model: type[Any], handlers: Any, **kw: Any) -> Any:
        kw.setdefault("poll_interval", 0.05)
        kw.setdefault("lease_duration", 5)
        return new_worker(factory, model, handlers, **kw)

    configured.twin = new_worker.twin  # type: ignore[attr-defined]
    return configured


def first_blocks(
    ids: list[int], gate: Gate, later: Any
) -> tuple[Callable[[Any, TaskContext], Any], list[int]]:
    """A handler where the task ``ids[0]`` runs ``gate`` and the others return ``later``,
    and the list of task ids it was called for."""
    calls: list[int] = []

    def job(task: Any, ctx: TaskContext) -> Any:
        calls.append(task.id)
        return gate(task, ctx) if task.id == ids[0] else later

    return job, calls


class Gate:
    """A handler that says it started, then waits (ignoring stop requests) for the test
    to let it finish."""

    def __init__(self, result: Any = "ok") -> None:
        self.started = threading.Event()
        self.proceed = threading.Event()
        self.result = result
        self.stop_seen: list[bool] = []

    def __call__(self, task: Any, ctx: TaskContext) -> Any:
        self.started.set()
        assert self.proceed.wait(10)
        self.stop_seen.append(ctx.should_stop())
        return self.result


# ---------------------------------------------------------------- outcomes


def test_one_slot_runs_a_claimed_batch_in_priority_then_due_time_order(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """Slots take a claimed batch first to last, in the claim's order: priority, then
    due time, then id (``test_loading`` checks the rows are put back in that order)."""
    now = datetime.now(timezone.utc)
    seen: list[int] = []
    expected: list[tuple[int, datetime, int]] = []
    with session_factory() as session:
        repo = TaskRepository(session, clean_table)
        for n, (priority, ago) in enumerate([(5, 1), (0, 2), (5, 9), (-3, 1), (0, 2), (0, 7)]):
            run_at = now - timedelta(minutes=ago)
            expected.append(
                (priority, run_at, repo.enqueue("t", {"n": n}, priority=priority, run_at=run_at))
            )
        session.commit()
    worker = make_worker(
        session_factory,
        clean_table,
        {"t": lambda task, ctx: seen.append(ctx.task_id)},
        concurrency=1,
        prefetch=10,  # every task in the first claim
    )
    worker.run(until_empty=True)
    assert seen == [task_id for *_, task_id in sorted(expected)]
    assert worker.stats.claimed == 6


def test_handlers_run_and_results_are_stored(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    seen: list[tuple[int, Any, int]] = []

    def export(task: Any, ctx: TaskContext) -> dict[str, Any]:
        seen.append((ctx.task_id, ctx.payload, ctx.attempt))
        assert task.id == ctx.task_id and task.status is TaskStatus.IN_PROGRESS
        return {"rows": ctx.payload["n"] * 10}

    ids = [enqueue(session_factory, clean_table, "export", {"n": n}) for n in range(5)]
    worker = make_worker(session_factory, clean_table, {"export": export}, concurrency=3)
    worker.run(until_empty=True)
    assert sorted(seen) == [(task_id, {"n": n}, 1) for n, task_id in enumerate(ids)]
    for n, task_id in enumerate(ids):
        task = fetch(session_factory, clean_table, task_id)
        assert (task.status, task.result, task.progress) == (
            TaskStatus.COMPLETED,
            {"rows": n * 10},
            100,
        )
        assert task.lease_owner == worker.owner
    assert worker.stats.completed == 5


def test_a_handler_exception_fails_the_attempt_with_backoff(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def broken(task: Any, ctx: TaskContext) -> None:
        raise ValueError("row 7 is not a number")

    retried = enqueue(session_factory, clean_table, "broken", max_retries=2)
    final = enqueue(session_factory, clean_table, "broken", max_retries=0)
    worker = make_worker(session_factory, clean_table, {"broken": broken})
    worker.run(until_empty=True)  # returns: the retry is scheduled, not slept for
    task = fetch(session_factory, clean_table, retried)
    assert task.status is TaskStatus.PENDING and task.retry_count == 1
    assert task.error_message == "ValueError: row 7 is not a number"
    with session_factory() as session:
        assert session.scalar(
            text(f"SELECT run_at > now() FROM {clean_table.__tablename__} WHERE id = {retried}")
        )
    task = fetch(session_factory, clean_table, final)
    assert (
        task.status is TaskStatus.FAILED
        and task.error_message == "ValueError: row 7 is not a number"
    )
    assert (worker.stats.retried, worker.stats.failed) == (1, 1)


def test_an_exception_without_a_message_is_recorded_by_its_type(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def bare(task: Any, ctx: TaskContext) -> None:
        raise RuntimeError()

    task_id = enqueue(session_factory, clean_table, "bare", max_retries=0)
    make_worker(session_factory, clean_table, {"bare": bare}).run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.error_message) == (TaskStatus.FAILED, "RuntimeError")


def test_a_task_without_handler_fails_clearly(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    ghost = enqueue(session_factory, clean_table, "ghost")
    worker = make_worker(
        session_factory, clean_table, {"real": lambda task, ctx: None}, task_types=["real", "ghost"]
    )
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, ghost)
    assert task.status is TaskStatus.FAILED
    assert task.error_message == "no handler is registered for task type 'ghost'"


def test_a_result_that_is_not_json_fails_the_task(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    task_id = enqueue(session_factory, clean_table, "odd")
    make_worker(session_factory, clean_table, {"odd": lambda task, ctx: object()}).run(
        until_empty=True
    )
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED and "not JSON" in (task.error_message or "")


def test_a_result_nested_too_deep_for_json_fails_the_task(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def deep(task: Any, ctx: TaskContext) -> Any:
        result: Any = []
        for _ in range(100_000):
            result = [result]
        return result

    task_id = enqueue(session_factory, clean_table, "deep")
    worker = make_worker(session_factory, clean_table, {"deep": deep})
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED  # not retried: the same result would come back
    assert task.error_message == (
        "ValueError: the handler's result cannot be stored: result nests arrays and "
        "objects more than 64 levels deep (MAX_JSON_DEPTH)"
    )
    assert worker.stats.failed == 1


def test_the_worker_only_claims_its_types(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    mine = enqueue(session_factory, clean_table, "mine")
    other = enqueue(session_factory, clean_table, "other")
    make_worker(session_factory, clean_table, {"mine": lambda task, ctx: 1}).run(until_empty=True)
    assert fetch(session_factory, clean_table, mine).status is TaskStatus.COMPLETED
    assert fetch(session_factory, clean_table, other).status is TaskStatus.PENDING


class LegacyTaskType(str, enum.Enum):
    """``str()`` of a member is ``'LegacyTaskType.EXPORT'``, not its value."""

    EXPORT = "legacy_export"


def test_str_enum_task_types_key_handlers_timeouts_and_claims(
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    task_id = enqueue(session_factory, clean_table, LegacyTaskType.EXPORT)
    with caplog.at_level(logging.WARNING, logger="sqlalchemy_taskqueue"):
        worker = make_worker(
            session_factory,
            clean_table,
            {LegacyTaskType.EXPORT: lambda task, ctx: task.type},
            timeouts={LegacyTaskType.EXPORT: 30},
            task_types=[LegacyTaskType.EXPORT],
        )
    assert "worker.no_handler" not in caplog.text
    assert worker.task_types == ["legacy_export"]
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "legacy_export")


# ---------------------------------------------------------------- what handlers receive


class _KindBase(DeclarativeBase):
    pass


class KindTask(TaskMixin, _KindBase):
    """A model whose loads the ORM itself must do: a class per type, a reconstructor."""

    __tablename__ = "tasks_worker_kinds"
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "kind"}

    @reconstructor
    def _loaded(self) -> None:
        self.seen_by_orm = True


class ReportTask(KindTask):
    __mapper_args__ = {"polymorphic_identity": "report"}


@pytest.fixture
def own_model(engine: Any) -> Iterator[type[Any]]:
    """A plain app model with its own columns, one mapped under another attribute name."""
    model = declare_task_model(
        "tasks_worker_own_columns",
        tenant=mapped_column("tenant_name", String(40), nullable=True),
    )
    yield from with_tables(engine, model)


@pytest.fixture
def kind_model(engine: Any) -> Iterator[type[Any]]:
    yield from with_tables(engine, KindTask)


def test_handlers_get_detached_instances_with_the_apps_own_columns(
    make_worker: MakeWorker, session_factory: Factory, own_model: type[Any]
) -> None:
    seen: list[tuple[Any, ...]] = []

    def job(task: Any, ctx: TaskContext) -> None:
        state = inspect(task)
        seen.append((type(task), task.tenant, task.payload, state.detached, state.identity))

    task_id = enqueue(session_factory, own_model, "job", {"n": 1}, tenant_name="t1")
    make_worker(session_factory, own_model, {"job": job}).run(until_empty=True)
    assert seen == [(own_model, "t1", {"n": 1}, True, (task_id,))]


def test_handlers_get_instances_the_orm_loaded_when_the_mapping_needs_it(
    make_worker: MakeWorker, session_factory: Factory, kind_model: type[Any]
) -> None:
    """A polymorphic model gets the subclass of the row's type, and reconstructors run."""
    seen: list[tuple[Any, ...]] = []

    def report(task: Any, ctx: TaskContext) -> None:
        seen.append((type(task), task.seen_by_orm, inspect(task).detached))

    enqueue(session_factory, kind_model, "report")
    make_worker(session_factory, kind_model, {"report": report}).run(until_empty=True)
    assert seen == [(ReportTask, True, True)]


class _ProjectBase(DeclarativeBase):
    pass


class Project(_ProjectBase):
    __tablename__ = "projects_worker"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class ProjectTask(TaskMixin, _ProjectBase):
    """A model whose ORM loads also load a relationship (after the row, by SELECT IN)."""

    __tablename__ = "tasks_worker_projects"

    project_id: Mapped[int | None] = mapped_column(ForeignKey(Project.id))
    project: Mapped[Project | None] = relationship(lazy="selectin")


@pytest.fixture
def project_model(engine: Any) -> Iterator[type[Any]]:
    yield from with_tables(engine, ProjectTask)


def test_handlers_get_the_relationships_the_orm_loads_eagerly(
    make_worker: MakeWorker, session_factory: Factory, project_model: type[Any]
) -> None:
    seen: list[str] = []

    def export(task: Any, ctx: TaskContext) -> None:
        seen.append(task.project.name)

    with session_factory.begin() as session:
        session.add(Project(id=1, name="acme"))
    enqueue(session_factory, project_model, "export", project_id=1)
    make_worker(session_factory, project_model, {"export": export}).run(until_empty=True)
    assert seen == ["acme"]


# ---------------------------------------------------------------- timeouts


def wait_until_stopped(task: Any, ctx: TaskContext) -> str:
    while not ctx.should_stop():
        time.sleep(0.01)  # the handler's own work loop
    return "finished late"


def test_a_per_type_timeout_fails_the_attempt(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    registry = HandlerRegistry(clean_table)
    registry.add("slow", wait_until_stopped, timeout=0.3)
    task_id = enqueue(session_factory, clean_table, "slow", max_retries=0)
    worker = make_worker(session_factory, clean_table, registry)
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error_message == "TimeoutError: the attempt exceeded its timeout of 0.3s"
    assert task.result is None  # the late result was discarded
    assert worker.stats.timed_out == 1


def test_a_per_task_timeout_overrides_the_type(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    task_id = enqueue(session_factory, clean_table, "slow", max_retries=1, timeout_seconds=1)
    worker = make_worker(
        session_factory, clean_table, {"slow": wait_until_stopped}, timeouts={"slow": 3600}
    )
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.PENDING and task.retry_count == 1
    assert task.error_message == "TimeoutError: the attempt exceeded its timeout of 1s"


# ---------------------------------------------------------------- progress


def test_progress_is_visible_from_another_session_while_the_handler_runs(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    reported = threading.Event()
    proceed = threading.Event()

    def export(task: Any, ctx: TaskContext) -> str:
        ctx.update_progress(40)
        reported.set()
        assert proceed.wait(10)
        return "done"

    task_id = enqueue(session_factory, clean_table, "export")
    with running(make_worker(session_factory, clean_table, {"export": export})):
        assert reported.wait(10)
        with session_factory() as session:
            progress = TaskRepository(session, clean_table).get_task_progress("export")
        assert progress == 40
        proceed.set()
        wait_for(
            lambda: fetch(session_factory, clean_table, task_id).status is TaskStatus.COMPLETED
        )


def test_progress_writes_are_throttled_and_the_last_value_lands(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    reported = threading.Event()
    proceed = threading.Event()

    def export(task: Any, ctx: TaskContext) -> None:
        for percent in range(1, 91):
            ctx.update_progress(percent)
        reported.set()
        assert proceed.wait(10)

    task_id = enqueue(session_factory, clean_table, "export")
    worker = make_worker(session_factory, clean_table, {"export": export}, progress_interval=0.2)
    with running(worker):
        assert reported.wait(10)
        # the first value was written at once; the supervisor flushes the latest one
        wait_for(lambda: fetch(session_factory, clean_table, task_id).progress == 90)
        proceed.set()


def test_a_throttled_value_lands_within_the_progress_interval_not_the_heartbeat(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    reported = threading.Event()
    proceed = threading.Event()

    def export(task: Any, ctx: TaskContext) -> None:
        ctx.update_progress(10)  # written at once
        ctx.update_progress(60)  # throttled: the supervisor writes it
        reported.set()
        assert proceed.wait(30)

    task_id = enqueue(session_factory, clean_table, "export")
    # heartbeats every 30 s: the value must not wait for the next one
    worker = make_worker(
        session_factory, clean_table, {"export": export}, lease_duration=120, progress_interval=0.2
    )
    with running(worker):
        assert reported.wait(10)
        try:
            wait_for(lambda: fetch(session_factory, clean_table, task_id).progress == 60, 5)
        finally:
            proceed.set()


def test_a_failed_task_keeps_the_last_progress_it_reported(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def broken(task: Any, ctx: TaskContext) -> None:
        ctx.update_progress(10)  # written at once
        ctx.update_progress(60)  # throttled: still waiting to be written
        raise ValueError("row 61 is not a number")

    def hung(task: Any, ctx: TaskContext) -> None:
        ctx.update_progress(10)
        ctx.update_progress(70)
        wait_until_stopped(task, ctx)

    registry = HandlerRegistry(clean_table)
    registry.add("broken", broken)
    registry.add("hung", hung, timeout=0.3)
    failed = enqueue(session_factory, clean_table, "broken", max_retries=0)
    timed_out = enqueue(session_factory, clean_table, "hung", max_retries=0)
    worker = make_worker(session_factory, clean_table, registry, progress_interval=3600)
    worker.run(until_empty=True)
    # a failed task shows how far it got: the last value reported, not the last written
    task = fetch(session_factory, clean_table, failed)
    assert (task.status, task.progress) == (TaskStatus.FAILED, 60)
    task = fetch(session_factory, clean_table, timed_out)
    assert (task.status, task.progress) == (TaskStatus.FAILED, 70)


def test_progress_rejects_bad_values(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    errors: list[str] = []

    def export(task: Any, ctx: TaskContext) -> None:
        for bad in (101, -1, True, "50"):
            try:
                ctx.update_progress(bad)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                errors.append(type(exc).__name__)

    enqueue(session_factory, clean_table, "export")
    make_worker(session_factory, clean_table, {"export": export}).run(until_empty=True)
    assert errors == ["ValueError", "ValueError", "BoolArgumentError", "TypeError"]


# ---------------------------------------------------------------- leases


def test_a_stale_worker_cannot_complete_a_rescued_task(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    slow = Gate("stale result")
    task_id = enqueue(session_factory, clean_table, "slow")
    worker = make_worker(
        session_factory, clean_table, {"slow": slow}, lease_duration=2, rescue_interval=3600
    )
    with running(worker):
        assert slow.started.wait(10)
        # another worker takes over: the lease is expired, rescued and claimed again
        with session_factory() as session:
            session.execute(
                text(
                    f"UPDATE {clean_table.__tablename__} "
                    "SET lease_expires_at = now() - interval '1 second'"
                )
            )
            repo = TaskRepository(session, clean_table, owner="successor")
            assert repo.rescue_expired_leases() == {task_id: TaskStatus.PENDING}
            # claimed in the rescue's own transaction: the rescue's notification, sent at
            # commit, would wake the stale worker to claim it first
            successor = repo.dequeue("slow")
            session.commit()
        assert successor is not None
        # the stale worker's heartbeat notices and its handler is asked to stop
        wait_for(lambda: worker.stats.lost_leases == 1)
        slow.proceed.set()
        wait_for(lambda: worker.stats.claimed == 1 and slow.stop_seen == [True])
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.IN_PROGRESS and task.lease_owner == "successor"
    assert task.result is None and task.lease_token == successor.lease_token
    assert worker.stats.completed == 0


def test_heartbeats_keep_a_long_task_leased(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    slow = Gate()
    task_id = enqueue(session_factory, clean_table, "slow")
    worker = make_worker(session_factory, clean_table, {"slow": slow}, lease_duration=1)
    with running(worker):
        assert slow.started.wait(10)
        first = fetch(session_factory, clean_table, task_id).lease_expires_at
        wait_for(lambda: fetch(session_factory, clean_table, task_id).lease_expires_at > first)
        # a second worker's rescue finds nothing expired while heartbeats run
        with session_factory() as session:
            assert TaskRepository(session, clean_table).rescue_expired_leases() == {}
        slow.proceed.set()
        wait_for(
            lambda: fetch(session_factory, clean_table, task_id).status is TaskStatus.COMPLETED
        )


def test_until_empty_rescues_expired_leases(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    task_id = enqueue(session_factory, clean_table, "job")
    with session_factory() as session:
        repo = TaskRepository(session, clean_table, owner="dead-worker")
        assert repo.dequeue("job") is not None
        session.execute(
            text(
                f"UPDATE {clean_table.__tablename__} SET lease_expires_at = now() - interval '1 s'"
            )
        )
        session.commit()
    worker = make_worker(session_factory, clean_table, {"job": lambda task, ctx: "rescued"})
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.result, task.retry_count) == (TaskStatus.COMPLETED, "rescued", 1)
    assert worker.stats.rescued == 1


def test_an_idle_worker_rescues_every_rescue_interval_however_long_its_poll(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """A worker that waits for notifications with a long poll interval still rescues a
    dead worker's task within about ``lease_duration + rescue_interval``."""
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": lambda task, ctx: "rescued"},
        poll_interval=3600,
        rescue_interval=0.2,
    )
    with running(worker):
        wait_for(worker.idle.is_set)  # its first turn found nothing to rescue or claim
        with session_factory() as session:
            # a worker that claims a task without waking the others, then dies
            repo = TaskRepository(session, clean_table, owner="dead-worker", notify=False)
            task_id = repo.enqueue("job", {})
            assert repo.dequeue("job") is not None
            session.execute(
                text(
                    f"UPDATE {clean_table.__tablename__} "
                    "SET lease_expires_at = now() - interval '1 s'"
                )
            )
            session.commit()
        wait_for(
            lambda: fetch(session_factory, clean_table, task_id).status is TaskStatus.COMPLETED,
            timeout=10,
        )
    task = fetch(session_factory, clean_table, task_id)
    assert (task.result, task.retry_count) == ("rescued", 1)
    assert worker.stats.rescued == 1


# ---------------------------------------------------------------- wake-up


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_notify_wakes_an_idle_worker_long_before_its_poll(
    make_worker: MakeWorker, database_url: str, clean_table: type[Any], driver: str
) -> None:
    """On each driver that can LISTEN: psycopg2 and psycopg 3 for the threaded worker,
    asyncpg and psycopg 3 for the async one."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    engine = create_engine(make_url(database_url).set(drivername=f"postgresql+{driver}"))
    session_factory = sessionmaker(engine)
    done: dict[int, float] = {}
    finished = threading.Event()

    def job(task: Any, ctx: TaskContext) -> None:
        done[task.id] = time.monotonic()
        finished.set()

    worker = make_worker(session_factory, clean_table, {"job": job}, poll_interval=60)
    try:
        with running(worker):
            assert worker.listening.wait(10)
            wait_for(worker.idle.is_set)
            enqueued_at = time.monotonic()
            task_id = enqueue(session_factory, clean_table, "job")
            assert finished.wait(10)
    finally:
        engine.dispose()
    # picked up on the notification: nowhere near the 60 s poll interval
    assert done[task_id] - enqueued_at < 5


def test_polling_only_mode_still_finds_work(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    finished = threading.Event()
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": lambda task, ctx: finished.set()},
        listen=False,
        poll_interval=0.1,
    )
    with running(worker):
        wait_for(worker.idle.is_set)
        assert not worker.listening.is_set()
        enqueue(session_factory, clean_table, "job")
        assert finished.wait(10)


# ---------------------------------------------------------------- shutdown


def test_stop_lets_a_running_task_finish_within_the_grace_period(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    slow = Gate("finished")
    task_id = enqueue(session_factory, clean_table, "slow")
    worker = make_worker(session_factory, clean_table, {"slow": slow}, shutdown_grace=10)
    with running(worker) as thread:
        assert slow.started.wait(10)
        worker.stop()
        slow.proceed.set()
        thread.join(10)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "finished")


def test_unfinished_tasks_are_handed_back_without_using_a_retry(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    stubborn = Gate("too late")
    task_id = enqueue(session_factory, clean_table, "stubborn")
    worker = make_worker(session_factory, clean_table, {"stubborn": stubborn}, shutdown_grace=0.2)
    with running(worker) as thread:
        assert stubborn.started.wait(10)
        worker.stop()
        thread.join(10)
        assert not thread.is_alive()
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.retry_count, task.lease_token) == (TaskStatus.PENDING, 0, None)
    stubborn.proceed.set()  # the handler returns later; its result is discarded
    wait_for(lambda: worker.stats.released == 1)
    assert fetch(session_factory, clean_table, task_id).status is TaskStatus.PENDING


def test_a_cooperative_handler_is_handed_back_when_it_stops(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    started = threading.Event()

    def cooperative(task: Any, ctx: TaskContext) -> None:
        started.set()
        while True:
            ctx.raise_if_stopping()
            time.sleep(0.01)  # the handler's own work loop

    task_id = enqueue(session_factory, clean_table, "coop")
    worker = make_worker(session_factory, clean_table, {"coop": cooperative}, shutdown_grace=10)
    with running(worker) as thread:
        assert started.wait(10)
        worker.stop()
        thread.join(10)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.retry_count) == (TaskStatus.PENDING, 0)
    assert worker.stats.released == 1


def test_signal_handlers_are_left_alone_when_the_host_handles_signals(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    during: list[Any] = []
    enqueue(session_factory, clean_table, "job")
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": lambda task, ctx: during.append(signal.getsignal(signal.SIGTERM))},
    )
    worker.run(until_empty=True, install_signal_handlers=False)
    assert during == [previous]


def test_sigterm_on_the_main_thread_stops_gracefully_and_restores_the_handler(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def job(task: Any, ctx: TaskContext) -> str:
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill <pid>` does to a worker
        wait_for(ctx.should_stop, timeout=10)  # the worker heard it ...
        return "finished"  # ... and lets the running task finish

    task_id = enqueue(session_factory, clean_table, "job")
    worker = make_worker(session_factory, clean_table, {"job": job}, shutdown_grace=10)
    worker.run()  # returns once the signal's graceful shutdown is done
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.result) == (TaskStatus.COMPLETED, "finished")
    assert signal.getsignal(signal.SIGTERM) is previous


def test_interrupted_without_shutdown_counts_as_a_failed_attempt(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def gives_up(task: Any, ctx: TaskContext) -> None:
        raise TaskInterrupted("upstream asked to stop")

    task_id = enqueue(session_factory, clean_table, "x", max_retries=0)
    make_worker(session_factory, clean_table, {"x": gives_up}).run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED and "upstream asked to stop" in (
        task.error_message or ""
    )


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"concurrency": "4"}, TypeError, "concurrency"),
        ({"lease_duration": 0}, ValueError, "lease_duration"),
        ({"lease_duration": -5}, ValueError, "lease_duration"),
        ({"poll_interval": timedelta(0)}, ValueError, "poll_interval"),
        ({"poll_interval": "1s"}, TypeError, "poll_interval"),
        ({"default_timeout": -1}, ValueError, "default_timeout"),
        ({"timeouts": {"job": 0}}, ValueError, "timeout of 'job'"),
        ({"timeouts": {"nope": 5}}, ValueError, "nope"),
        ({"heartbeat_interval": 10, "lease_duration": 5}, ValueError, "heartbeat_interval"),
        ({"shutdown_grace": -1}, ValueError, "shutdown_grace"),
        ({"task_types": []}, ValueError, "task_types"),
        ({"task_types": 5}, TypeError, "task_types must be a task type, a sequence"),
        ({"listen": "yes"}, TypeError, "listen"),
        ({"prefetch": -1}, ValueError, "prefetch"),
        ({"prefetch": 1.5}, TypeError, "prefetch"),
        # values that round to nothing, or hoard the queue in one process
        ({"lease_duration": 1e-9}, ValueError, "lease_duration must be at least a microsecond"),
        ({"lease_duration": 0.5}, ValueError, "lease_duration must be at least 1 second"),
        ({"poll_interval": 1e-9}, ValueError, "poll_interval must be at least a microsecond"),
        ({"task_types": ["job\x00"]}, ValueError, "task_type contains a NUL"),
        ({"concurrency": 1001}, ValueError, "concurrency must be <= 1000"),
        ({"prefetch": 10_001}, ValueError, "prefetch must be <= 10000"),
        ({"max_result_bytes": 0}, ValueError, "max_result_bytes"),
    ],
)
def test_bad_configuration_is_rejected(
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        make_worker(session_factory, clean_table, {"job": lambda task, ctx: None}, **kwargs)


def test_a_run_that_fails_to_start_leaves_the_worker_able_to_run_again(
    clean_table: type[Any],
) -> None:
    """Starting the listener fails (here: sessions bound to no database); the error is
    the caller's to see, and the worker is not left marked as running."""
    worker = Worker(sessionmaker(), clean_table, {"job": lambda task, ctx: None})
    for _ in range(2):
        with pytest.raises(UnboundExecutionError):
            worker.run(until_empty=True, install_signal_handlers=False)


def test_bad_handlers_and_models_are_rejected(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    with pytest.raises(TypeError, match="'job' is not callable"):
        make_worker(session_factory, clean_table, {"job": "not a function"})
    with pytest.raises(TypeError, match="mapping"):
        make_worker(session_factory, clean_table, [lambda task, ctx: None])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TaskMixin"):
        make_worker(session_factory, dict, {"job": lambda task, ctx: None})  # type: ignore[type-var]
    with pytest.raises(TypeError, match="session_factory"):
        make_worker(None, clean_table, {"job": lambda task, ctx: None})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_types"):
        make_worker(session_factory, clean_table, {})


def test_handler_registry(clean_table: type[Any]) -> None:
    registry = HandlerRegistry(clean_table)

    @registry.handler("email", timeout=timedelta(seconds=30))
    def email(task: Any, ctx: TaskContext) -> None:
        return None

    assert registry["email"] is email and list(registry) == ["email"] and len(registry) == 1
    spec = registry.spec("email")
    assert spec is not None and spec.timeout_seconds == 30
    with pytest.raises(ValueError, match="already registered"):
        registry.add("email", email)
    with pytest.raises(TypeError, match="not callable"):
        registry.add("sms", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_type"):
        registry.add("", email)
    with pytest.raises(TypeError, match="TaskMixin"):
        HandlerRegistry(object)


def test_an_outcome_the_database_refuses_does_not_block_the_others(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any], engine: Any
) -> None:
    table = clean_table.__tablename__
    refused = enqueue(session_factory, clean_table, "job", {"refuse": True})
    accepted = [enqueue(session_factory, clean_table, "job", {"n": n}) for n in range(3)]
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE FUNCTION refuse_completion() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN IF NEW.status = 'completed' AND NEW.payload ? 'refuse' THEN "
                "RAISE EXCEPTION 'storage quota exceeded'; END IF; RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                f"CREATE TRIGGER refuse BEFORE UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse_completion()"
            )
        )
    try:
        worker = make_worker(
            session_factory, clean_table, {"job": lambda task, ctx: "ok"}, concurrency=4
        )
        worker.run(until_empty=True)
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TRIGGER refuse ON {table}"))
            connection.execute(text("DROP FUNCTION refuse_completion()"))
    assert [fetch(session_factory, clean_table, i).status for i in accepted] == [
        TaskStatus.COMPLETED
    ] * 3
    # the refused one keeps its lease until it expires; then any worker rescues it
    stuck = fetch(session_factory, clean_table, refused)
    assert stuck.status is TaskStatus.IN_PROGRESS and stuck.lease_owner == worker.owner
    assert worker.stats.completed == 3


# ---------------------------------------------------------------- review regressions


def test_a_late_timed_out_attempt_does_not_drop_the_retry_it_overlaps(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """Attempt 1 times out but keeps running; the same worker runs attempt 2 meanwhile.
    When attempt 1 finally returns, attempt 2 must keep its lease (heartbeats)."""
    second_started = threading.Event()
    release_first = threading.Event()
    seen_late: list[bool] = []

    def job(task: Any, ctx: TaskContext) -> str:
        if ctx.attempt == 1:
            assert release_first.wait(10)  # ignores its timeout
            seen_late.append(True)
            return "first (late)"
        second_started.set()
        release_first.set()
        deadline = time.monotonic() + 1.6  # longer than the 1 s lease: needs heartbeats
        while time.monotonic() < deadline:
            time.sleep(0.02)
        return "second"

    from sqlalchemy_taskqueue import BackoffPolicy

    task_id = enqueue(session_factory, clean_table, "job", max_retries=1, timeout_seconds=2)
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": job},
        concurrency=2,
        lease_duration=1,
        backoff=BackoffPolicy(base_seconds=0.01, jitter=0),
    )
    with running(worker):
        assert second_started.wait(15)
        wait_for(
            lambda: fetch(session_factory, clean_table, task_id).status is TaskStatus.COMPLETED
        )
    task = fetch(session_factory, clean_table, task_id)
    assert (task.result, task.retry_count) == ("second", 1)
    assert seen_late == [True]
    assert (worker.stats.lost_leases, worker.stats.rescued) == (0, 0)


def test_an_exception_message_postgresql_cannot_store_is_escaped(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def odd(task: Any, ctx: TaskContext) -> None:
        raise ValueError("lone " + chr(0xD800) + " surrogate and a nul " + chr(0))

    bad = enqueue(session_factory, clean_table, "odd", max_retries=0)
    good = enqueue(session_factory, clean_table, "good")
    worker = make_worker(session_factory, clean_table, {"odd": odd, "good": lambda task, ctx: 1})
    worker.run(until_empty=True)
    failed = fetch(session_factory, clean_table, bad)
    assert failed.status is TaskStatus.FAILED
    assert failed.error_message == "ValueError: lone \\ud800 surrogate and a nul \\x00"
    assert fetch(session_factory, clean_table, good).status is TaskStatus.COMPLETED


class Unprintable(Exception):
    """An exception whose ``str()`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


def test_an_exception_that_cannot_be_printed_still_fails_the_attempt(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def odd(task: Any, ctx: TaskContext) -> None:
        raise Unprintable

    task_id = enqueue(session_factory, clean_table, "odd", max_retries=0)
    worker = make_worker(session_factory, clean_table, {"odd": odd})
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error_message == "Unprintable: <exception str() failed>"
    assert worker.stats.failed == 1


def test_heartbeats_racing_completions_report_no_lost_leases(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    with session_factory() as session:
        TaskRepository(session, clean_table).enqueue_many("fast", [{}] * 600)
        session.commit()
    worker = make_worker(
        session_factory, clean_table, {"fast": lambda task, ctx: None}, heartbeat_interval=0.005
    )
    worker.run(until_empty=True)
    assert (worker.stats.completed, worker.stats.lost_leases) == (600, 0)


def test_a_worker_can_run_again_after_stop(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    worker = make_worker(session_factory, clean_table, {"job": lambda task, ctx: "ok"})
    with running(worker):
        wait_for(worker.idle.is_set)
    task_id = enqueue(session_factory, clean_table, "job")
    worker.run(until_empty=True)
    assert fetch(session_factory, clean_table, task_id).status is TaskStatus.COMPLETED


def test_a_retried_task_starts_again_from_zero_progress(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    def flaky(task: Any, ctx: TaskContext) -> None:
        ctx.update_progress(70)
        raise RuntimeError("half way")

    task_id = enqueue(session_factory, clean_table, "flaky", max_retries=1)
    make_worker(session_factory, clean_table, {"flaky": flaky}).run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.progress) == (TaskStatus.PENDING, 0)


def test_owner_and_registry_model_are_validated(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    with pytest.raises(ValueError, match="owner"):
        make_worker(session_factory, clean_table, {"job": lambda task, ctx: None}, owner="")
    with pytest.raises(ValueError, match="owner"):
        make_worker(session_factory, clean_table, {"job": lambda task, ctx: None}, owner=123)  # type: ignore[arg-type]
    other = HandlerRegistry(declare_task_model("tasks_other_registry"))
    other.add("job", lambda task, ctx: None)
    with pytest.raises(ValueError, match="registered for"):
        make_worker(session_factory, clean_table, other)


def test_prefetched_tasks_keep_their_leases_and_go_back_at_shutdown(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    first = Gate("first")
    ids = [enqueue(session_factory, clean_table, "job", {"n": n}) for n in range(3)]
    job, calls = first_blocks(ids, first, "later")

    # renewed every 0.5 s, and a waiting task is handed back only after a whole lease
    # (60 s), so the hand-back of stale waiting tasks cannot race this test on a slow machine
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": job},
        concurrency=1,
        prefetch=2,
        lease_duration=60,
        heartbeat_interval=0.5,
    )
    with running(worker) as thread:
        assert first.started.wait(10)
        # all three are claimed: one running, two waiting in the worker for the slot
        wait_for(
            lambda: all(
                fetch(session_factory, clean_table, i).status is TaskStatus.IN_PROGRESS for i in ids
            )
        )
        held_until = fetch(session_factory, clean_table, ids[2]).lease_expires_at
        wait_for(lambda: fetch(session_factory, clean_table, ids[2]).lease_expires_at > held_until)
        worker.stop()
        first.proceed.set()
        thread.join(10)
    assert calls == [ids[0]]
    assert fetch(session_factory, clean_table, ids[0]).status is TaskStatus.COMPLETED
    for task_id in ids[1:]:
        task = fetch(session_factory, clean_table, task_id)
        assert (task.status, task.retry_count) == (TaskStatus.PENDING, 0)
    assert (worker.stats.rescued, worker.stats.lost_leases, worker.stats.released) == (0, 0, 2)


def test_a_handler_calling_sys_exit_fails_its_attempt(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    import sys

    def exits(task: Any, ctx: TaskContext) -> None:
        sys.exit(3)

    task_id = enqueue(session_factory, clean_table, "exits", max_retries=0)
    worker = make_worker(session_factory, clean_table, {"exits": exits})
    worker.run(until_empty=True)  # returns: the slot survived and the task is settled
    task = fetch(session_factory, clean_table, task_id)
    assert (task.status, task.error_message) == (TaskStatus.FAILED, "SystemExit: 3")


def test_tasks_waiting_behind_a_hung_handler_go_back_after_a_lease(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    hung = Gate("never mind")
    first = enqueue(session_factory, clean_table, "hang", timeout_seconds=1, max_retries=0)
    waiting = enqueue(session_factory, clean_table, "quick")
    worker = make_worker(
        session_factory,
        clean_table,
        {"hang": hung, "quick": lambda task, ctx: "done"},
        concurrency=1,
        prefetch=1,
        lease_duration=1,
    )
    try:
        with running(worker):
            assert hung.started.wait(10)
            if make_worker.twin == "async-def":  # type: ignore[attr-defined]
                # a coroutine past its timeout is cancelled: its slot runs the next task
                wait_for(lambda: fetch(session_factory, clean_table, waiting).result == "done")
                assert fetch(session_factory, clean_table, waiting).lease_owner == worker.owner
            else:
                # a thread that never returns keeps its slot: the waiting task goes back
                wait_for(
                    lambda: (
                        fetch(session_factory, clean_table, waiting).status is TaskStatus.PENDING
                    )
                )
                other = make_worker(
                    session_factory, clean_table, {"quick": lambda task, ctx: "done"}
                )
                other.run(until_empty=True)
                assert fetch(session_factory, clean_table, waiting).result == "done"
            assert fetch(session_factory, clean_table, first).status is TaskStatus.FAILED
    finally:
        hung.proceed.set()


def test_a_prefetched_task_whose_lease_is_lost_is_not_run(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    blocker = Gate("first")
    ids = [enqueue(session_factory, clean_table, "job", {"n": n}) for n in range(2)]
    job, calls = first_blocks(ids, blocker, "second")

    worker = make_worker(
        session_factory, clean_table, {"job": job}, concurrency=1, prefetch=1, lease_duration=1
    )
    with running(worker):
        assert blocker.started.wait(10)
        wait_for(
            lambda: fetch(session_factory, clean_table, ids[1]).status is TaskStatus.IN_PROGRESS
        )
        with session_factory() as session:  # an operator finishes the waiting task by hand
            TaskRepository(session, clean_table).complete_task(ids[1], result="by hand")
            session.commit()
        wait_for(lambda: worker.stats.lost_leases == 1)
        blocker.proceed.set()
        wait_for(lambda: fetch(session_factory, clean_table, ids[0]).status is TaskStatus.COMPLETED)
    assert calls == [ids[0]]
    assert fetch(session_factory, clean_table, ids[1]).result == "by hand"
    assert worker.stats.lost_leases == 1


def test_a_task_handed_back_for_waiting_too_long_is_released_once(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    blocker = Gate("first")
    ids = [enqueue(session_factory, clean_table, "job", {"n": n}) for n in range(2)]
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": blocker},
        concurrency=1,
        prefetch=1,
        lease_duration=1,
        shutdown_grace=0.3,
    )
    try:
        with running(worker) as thread:
            assert blocker.started.wait(10)
            # the prefetched task waits more than a lease, so it is handed back ...
            wait_for(
                lambda: fetch(session_factory, clean_table, ids[1]).status is TaskStatus.PENDING
            )
            worker.stop()  # ... and shutdown (the slot still busy) must not hand it back again
            thread.join(10)
    finally:
        blocker.proceed.set()
    # released: the waiting task once, and the blocked one at the end of the grace period
    assert (worker.stats.released, worker.stats.lost_leases) == (2, 0)
    assert [fetch(session_factory, clean_table, i).retry_count for i in ids] == [0, 0]


def test_only_claim_only_transactions_and_progress_writes_commit_asynchronously(
    make_worker: MakeWorker, database_url: str, clean_table: type[Any]
) -> None:
    from sqlalchemy import Engine, create_engine, event

    engine = create_engine(database_url)
    factory = sessionmaker(engine)
    for n in range(3):
        enqueue(factory, clean_table, "job", {"n": n})
    failing = enqueue(factory, clean_table, "boom", max_retries=0)
    # one open transaction per connection: the worker's transactions run concurrently
    # on several (a progress write beside a claim turn), so one shared list would mix
    # their statements into whichever transaction commits first
    transactions: list[list[str]] = []
    open_ones: dict[int, list[str]] = {}

    # on every engine: the async twin's engine is made inside its run
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            transactions.append([statement])  # the claim connection: its own transaction
            return
        open_ones.setdefault(id(conn.connection.dbapi_connection), []).append(statement)

    def committed(conn: Any) -> None:
        done = open_ones.pop(id(conn.connection.dbapi_connection), None)
        if done:
            transactions.append(done)

    event.listen(Engine, "before_cursor_execute", record)
    event.listen(Engine, "commit", committed)

    def job(task: Any, ctx: TaskContext) -> str:
        ctx.update_progress(50)
        ctx.flush_progress(force=True)
        return "ok"

    def boom(task: Any, ctx: TaskContext) -> str:
        ctx.update_progress(30)  # written before the failure, which keeps it
        raise ValueError("boom")

    try:
        worker = make_worker(factory, clean_table, {"job": job, "boom": boom}, concurrency=1)
        worker.run(until_empty=True)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
        event.remove(Engine, "commit", committed)
    relaxed = [t for t in transactions if any("set_config" in s for s in t)]
    claims = [t for t in transactions if any("FOR UPDATE SKIP LOCKED" in s for s in t)]
    progress = [t for t in transactions if any("SET progress=" in s for s in t)]
    completing = [t for t in transactions if any("completed_at=now()" in s for s in t)]
    failing_ones = [t for t in transactions if any("error_message=" in s for s in t)]
    assert relaxed, "the first claim (nothing to acknowledge yet) commits asynchronously"
    # progress is advisory: a server crash may forget its last moments' writes
    assert len(progress) == 4 and all(t in relaxed for t in progress)
    assert all(t in claims or t in progress for t in relaxed)
    # every transaction that writes outcomes commits synchronously
    assert completing and not any(t in relaxed for t in completing)
    assert failing_ones and not any(t in relaxed for t in failing_ones)
    assert fetch(factory, clean_table, failing).status == TaskStatus.FAILED
    assert fetch(factory, clean_table, failing).progress == 30
    assert {fetch(factory, clean_table, n).status for n in (1, 2, 3)} == {TaskStatus.COMPLETED}
    engine.dispose()


def test_a_scoped_session_factory_never_lends_the_worker_a_handlers_session(
    session_factory: Factory, clean_table: type[Any]
) -> None:
    """Given a ``scoped_session`` (Flask-SQLAlchemy's ``db.session``), the worker makes
    sessions of its own from the scope's factory: a progress write must not commit (and
    close) the session the handler's thread holds through the same proxy."""
    scoped = scoped_session(session_factory)
    task_id = enqueue(session_factory, clean_table, "job")
    still_open: list[bool] = []

    def job(task: Any, ctx: TaskContext) -> str:
        TaskRepository(scoped, clean_table).enqueue("side", {})  # the handler's own work
        ctx.update_progress(50)
        ctx.flush_progress(force=True)
        still_open.append(scoped().in_transaction())  # not committed by the write
        scoped.rollback()  # the handler changes its mind
        scoped.remove()
        return "ok"

    worker = Worker(scoped, clean_table, {"job": job}, concurrency=1, listen=False)
    worker.run(until_empty=True, install_signal_handlers=False)
    assert still_open == [True]
    assert fetch(session_factory, clean_table, task_id).status == TaskStatus.COMPLETED
    with session_factory() as session:
        types = session.scalars(select(clean_table.type)).all()
    assert types == ["job"], "the handler's rolled-back enqueue was committed"


def held_counts(
    make_worker: MakeWorker,
    session_factory: Factory,
    model: type[Any],
    seconds: float,
    tasks: int,
    **kw: Any,
) -> list[int]:
    """Run ``tasks`` tasks that each take ``seconds``; each handler notes how many tasks
    the worker then held (in progress in the database)."""
    with session_factory() as session:
        TaskRepository(session, model).enqueue_many("job", [{} for _ in range(tasks)])
        session.commit()
    seen: list[int] = []

    def job(task: Any, ctx: TaskContext) -> None:
        with session_factory() as session:
            held = session.scalar(
                text(f"SELECT count(*) FROM {model.__tablename__} WHERE status = 'in_progress'")
            )
        seen.append(int(held or 0))
        time.sleep(seconds)  # simulated work

    make_worker(session_factory, model, {"job": job}, concurrency=1, **kw).run(until_empty=True)
    return seen


def test_automatic_prefetch_claims_ahead_for_quick_tasks(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    seen = held_counts(make_worker, session_factory, clean_table, 0, 60)
    assert seen[0] == 1  # nothing is known of the pace at first
    assert max(seen) > 1  # then quick tasks are claimed ahead of the free slot
    assert max(seen) <= 1 + 32  # at most 32 per slot


def test_automatic_prefetch_holds_nothing_back_for_slow_tasks(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    # 100 ms per task with one slot: more than the 50 ms horizon, so no prefetch
    assert set(held_counts(make_worker, session_factory, clean_table, 0.1, 6)) == {1}


def test_prefetch_zero_turns_it_off(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    assert set(held_counts(make_worker, session_factory, clean_table, 0, 30, prefetch=0)) == {1}


def test_automatic_prefetch_stops_while_a_long_attempt_runs(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    gate = Gate()
    at_start: list[int] = []

    def slow(task: Any, ctx: TaskContext) -> Any:
        at_start.append(worker._prefetch_now())
        return gate(task, ctx)

    worker = make_worker(
        session_factory,
        clean_table,
        {"quick": lambda task, ctx: None, "slow": slow},
        concurrency=1,
    )
    with session_factory() as session:
        repo = TaskRepository(session, clean_table)
        repo.enqueue_many("quick", [{} for _ in range(20)])
        repo.enqueue("slow", {}, priority=1)  # after every quick one
        session.commit()
    with running(worker):
        assert gate.started.wait(10)
        assert at_start[0] > 0  # the quick tasks set a fast pace
        # the slow attempt's age overrides it as it runs, before it finishes
        wait_for(lambda: worker._prefetch_now() == 0, timeout=5)
        gate.proceed.set()
