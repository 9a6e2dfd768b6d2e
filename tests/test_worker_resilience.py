"""Connection loss: the worker's database connections are killed while it works."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from sqlalchemy_taskqueue import TaskContext, TaskRepository, TaskStatus
from sqlalchemy_taskqueue.backends.postgresql._embedded import async_engine_arguments
from sqlalchemy_taskqueue.backends.postgresql._wakeup import (
    AsyncNotificationListener,
    NotificationListener,
)
from sqlalchemy_taskqueue.worker._base import STOP_BOUND

sys.path.insert(0, str(Path(__file__).parent))
from processes import wait_for
from twins import running

pytestmark = pytest.mark.slow


def kill_connections(admin: Engine, application: str, query_like: str = "%") -> int:
    with admin.connect() as connection:
        return len(
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :app AND query LIKE :query AND pid <> pg_backend_pid()"
                ),
                {"app": application, "query": query_like},
            ).all()
        )


@pytest.fixture
def worker_engine(database_url: str) -> Any:
    """An engine whose connections are tagged, so the test can kill exactly those."""
    tagged = make_url(database_url).update_query_dict({"application_name": "tq-chaos"})
    engine = create_engine(tagged, pool_size=10)
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    yield engine, admin
    engine.dispose()
    admin.dispose()


def backends(admin: Engine, query_like: str) -> list[int]:
    """The worker's backends whose last statement is like ``query_like``."""
    with admin.connect() as connection:
        return list(
            connection.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE application_name = 'tq-chaos' AND query LIKE :query"
                ),
                {"query": query_like},
            )
        )


def listeners(admin: Engine) -> list[int]:
    return backends(admin, "LISTEN%")


def test_killed_connections_lose_no_task(
    new_worker: Any,
    worker_engine: Any,
    session_factory: sessionmaker[Session],
    clean_table: type[Any],
) -> None:
    engine, admin = worker_engine
    with session_factory() as session:
        ids = TaskRepository(session, clean_table).enqueue_many(
            "work", [{"n": n} for n in range(300)]
        )
        session.commit()
    runs: Counter[int] = Counter()

    def work(task: Any, ctx: TaskContext) -> int:
        runs[task.id] += 1
        time.sleep(0.005)  # simulated work
        return int(task.payload["n"])

    worker = new_worker(
        sessionmaker(engine), clean_table, {"work": work}, lease_duration=2, poll_interval=0.1
    )
    with running(worker):
        killed = 0
        for _ in range(6):
            time.sleep(0.15)  # let the worker make progress between the kills
            killed += kill_connections(admin, "tq-chaos")
        assert killed > 0

        def all_completed() -> bool:
            with session_factory() as session:
                done = session.scalar(
                    text(
                        f"SELECT count(*) FROM {clean_table.__tablename__} WHERE status = 'completed'"
                    )
                )
            return done == len(ids)

        wait_for(all_completed, timeout=60)
    with session_factory() as session:
        statuses = {
            status
            for (status,) in session.execute(
                text(f"SELECT status FROM {clean_table.__tablename__}")
            )
        }
    assert statuses == {TaskStatus.COMPLETED.value}
    assert set(runs) == set(ids)  # every task ran (some twice: delivery is at-least-once)
    assert worker.stats.completed == len(ids)  # and each outcome was written once


def job_worker(
    new_worker: Any, engine: Engine, model: type[Any], *, poll_interval: float
) -> tuple[Any, threading.Event]:
    """A worker on ``engine`` whose ``job`` handler sets the event returned with it."""
    finished = threading.Event()
    handlers = {"job": lambda task, ctx: finished.set()}
    return new_worker(sessionmaker(engine), model, handlers, poll_interval=poll_interval), finished


def test_the_listener_reconnects_after_its_connection_is_killed(
    new_worker: Any,
    worker_engine: Any,
    session_factory: sessionmaker[Session],
    clean_table: type[Any],
) -> None:
    engine, admin = worker_engine
    worker, finished = job_worker(new_worker, engine, clean_table, poll_interval=60)
    with running(worker):
        assert worker.listening.wait(10)
        wait_for(lambda: len(listeners(admin)) == 1, timeout=10)
        [before] = listeners(admin)
        assert kill_connections(admin, "tq-chaos", "LISTEN%") == 1
        # a new LISTEN connection replaces the killed one
        wait_for(lambda: listeners(admin) not in ([], [before]), timeout=15)
        assert worker.listening.wait(10)
        wait_for(worker.idle.is_set, timeout=10)
        enqueued = time.monotonic()
        with session_factory() as session:
            TaskRepository(session, clean_table).enqueue("job", {})
            session.commit()
        assert finished.wait(10)
        assert time.monotonic() - enqueued < 10  # far below the 60 s poll interval


def test_an_outcome_finished_while_the_server_refuses_connections_is_not_lost(
    new_worker: Any, database_url: str, session_factory: sessionmaker[Session], clean_table: Any
) -> None:
    """The server restarts (connections dropped, new ones refused) while a handler runs:
    its outcome waits and is written once the server is back; the task runs once."""
    from faults.harness import pausable_proxy

    with session_factory() as session:
        task_id = TaskRepository(session, clean_table).enqueue("job", {})
        session.commit()
    started, finish, calls = threading.Event(), threading.Event(), []

    def job(task: Any, ctx: TaskContext) -> str:
        calls.append(task.id)
        started.set()
        assert finish.wait(30)
        return "done"

    with pausable_proxy(database_url) as proxy:
        engine = create_engine(proxy.url, pool_pre_ping=True)
        worker = new_worker(
            sessionmaker(engine), clean_table, {"job": job}, lease_duration=30, poll_interval=0.1
        )
        try:
            with running(worker):
                assert started.wait(10)
                proxy.refuse()  # the server goes away ...
                finish.set()  # ... while the handler finishes
                time.sleep(2)  # the outage's length: the worker's turns fail meanwhile
                proxy.readmit()

                def written() -> bool:
                    with session_factory() as session:
                        task = TaskRepository(session, clean_table).get_task(task_id)
                        return task is not None and task.status is TaskStatus.COMPLETED

                wait_for(written, timeout=30)
        finally:
            engine.dispose()
    assert calls == [task_id]  # not rescued and run again
    assert worker.stats.completed == 1


#: a claim-only turn's claim (progress writes are relaxed too, but claim nothing)
RELAXED_CLAIM = "WITH relaxed AS%picked AS%"  # the rest may lie past track_activity_query_size


def claimers(admin: Engine) -> list[int]:
    """Backends of the worker whose last statement was a claim-only turn's claim."""
    return backends(admin, RELAXED_CLAIM)


def test_idle_claims_share_one_connection_that_is_replaced_when_killed(
    new_worker: Any,
    worker_engine: Any,
    session_factory: sessionmaker[Session],
    clean_table: type[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, admin = worker_engine
    finished: dict[int, threading.Event] = {}

    def enqueue() -> threading.Event:
        with session_factory() as session:
            task_id = TaskRepository(session, clean_table).enqueue("job", {})
            session.commit()
        return finished.setdefault(task_id, threading.Event())

    def job(task: Any, ctx: TaskContext) -> None:
        finished.setdefault(task.id, threading.Event()).set()

    worker = new_worker(sessionmaker(engine), clean_table, {"job": job}, poll_interval=0.2)
    with running(worker):
        assert worker.listening.wait(10)
        for _ in range(3):  # each wake-up claims in a turn of its own
            assert enqueue().wait(10)
        wait_for(worker.idle.is_set, timeout=10)
        [claimer] = claimers(admin)  # all of them on one connection
        assert kill_connections(admin, "tq-chaos", RELAXED_CLAIM) == 1
        with caplog.at_level(logging.WARNING, logger="sqlalchemy_taskqueue"):
            assert enqueue().wait(10)
        # the turn that found the connection dead claimed again at once, on a new one
        assert "claim_failed" not in caplog.text
        wait_for(lambda: claimers(admin) not in ([], [claimer]), timeout=10)
        assert len(claimers(admin)) == 1
    if new_worker.twin == "sync":  # the async twin's engine ends with its run
        assert engine.pool.checkedout() == 0  # given back when the worker stopped


def test_an_idle_claim_that_fails_on_its_connection_is_tried_once_more_on_a_new_one(
    new_worker: Any,
    worker_engine: Any,
    session_factory: sessionmaker[Session],
    clean_table: type[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database error on the worker's own claim connection that does not mark it as
    dead (here the claim is cancelled with ``pg_cancel_backend``; asyncpg also reports a
    backend terminated while idle as 'another operation is in progress') costs the turn
    no error and no back-off: the claim runs once more, on a new connection."""
    engine, admin = worker_engine
    worker, finished = job_worker(new_worker, engine, clean_table, poll_interval=0.2)
    with running(worker):
        assert worker.listening.wait(10)
        wait_for(lambda: len(claimers(admin)) == 1, timeout=10)
        [claimer] = claimers(admin)
        with caplog.at_level(logging.WARNING, logger="sqlalchemy_taskqueue"):
            with admin.connect() as locker:
                locker.execute(text("BEGIN"))
                locker.execute(text(f"LOCK TABLE {clean_table.__tablename__}"))
                # the next poll's claim waits for the lock: cancel it there
                wait_for(lambda: blocked_on_a_lock(admin, claimer), timeout=10)
                with admin.connect() as canceller:
                    canceller.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": claimer})
                # the claim runs again at once, on a new connection: it waits for the lock
                wait_for(
                    lambda: any(
                        blocked_on_a_lock(admin, pid) for pid in claimers(admin) if pid != claimer
                    ),
                    timeout=10,
                )
                locker.execute(text("COMMIT"))
            with session_factory() as session:
                TaskRepository(session, clean_table).enqueue("job", {})
                session.commit()
            assert finished.wait(10)
        assert "claim_failed" not in caplog.text


def blocked_on_a_lock(admin: Engine, pid: int) -> bool:
    with admin.connect() as connection:
        return bool(
            connection.scalar(
                text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            )
        )


def test_claims_stay_in_transactions_when_the_session_sets_transaction_state(
    new_worker: Any, engine: Engine, clean_table: type[Any]
) -> None:
    """An application that sets state per transaction (here the schema, with SET LOCAL
    in an ``after_begin`` listener) keeps it for every claim."""
    schema = "tenant_claims"

    class TenantSession(Session):
        pass

    @event.listens_for(TenantSession, "after_begin")
    def use_tenant_schema(session: Session, transaction: Any, connection: Any) -> None:
        connection.exec_driver_sql(f"SET LOCAL search_path TO {schema}")

    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    factory = sessionmaker(engine, class_=TenantSession)
    try:
        with factory() as session:
            clean_table.metadata.create_all(session.connection())
            task_id = TaskRepository(session, clean_table).enqueue("job", {})
            session.commit()
        done = threading.Event()
        worker = new_worker(
            factory, clean_table, {"job": lambda task, ctx: done.set()}, poll_interval=0.2
        )
        with running(worker):
            assert done.wait(10)
        with factory() as session:
            task = TaskRepository(session, clean_table).get_task(task_id)
            assert task is not None and task.status == TaskStatus.COMPLETED
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def test_claims_run_through_the_session_when_it_has_execution_listeners(
    new_worker: Any, engine: Engine, clean_table: type[Any]
) -> None:
    """A claim run straight on the worker's connection would skip the session's
    ``do_orm_execute`` listeners: with one, every claim goes through the session."""
    from sqlalchemy_taskqueue.backends.postgresql import _statements as statements

    class ObservedSession(Session):
        pass

    seen: list[Any] = []

    @event.listens_for(ObservedSession, "do_orm_execute")
    def observe(state: Any) -> None:
        seen.append(state.statement)

    factory = sessionmaker(engine, class_=ObservedSession)
    done: dict[int, threading.Event] = {}
    worker = new_worker(
        factory, clean_table, {"job": lambda task, ctx: done[task.id].set()}, poll_interval=60
    )
    with running(worker):
        for _ in range(2):  # two wake-ups from idle: two turns that only claim
            wait_for(worker.idle.is_set, timeout=10)
            with factory() as session:
                task_id = TaskRepository(session, clean_table).enqueue("job", {})
                done[task_id] = threading.Event()
                session.commit()
            assert done[task_id].wait(10)
    claim_only = statements.claim_statement(
        clean_table.__table__, type_filter="one", relaxed_commit=True, prefetch=True
    )
    # the first turn, at start, and both wake-ups
    assert sum(statement is claim_only for statement in seen) >= 3


@pytest.mark.parametrize("driver", ["psycopg2", "asyncpg", "psycopg"])
def test_a_listener_that_listens_again_wakes_its_worker_once_more(
    database_url: str, driver: str
) -> None:
    """A task enqueued while the LISTEN connection was down notified nobody: once it
    listens again, the listener wakes its worker, which claims it then, not at its next
    poll.  Each wake records whether ``LISTEN`` was in place when it came; no task is
    ever announced on this channel, so a wake with it in place is that extra one."""
    application = f"tq-relisten-{uuid.uuid4().hex[:8]}"
    url = make_url(database_url).update_query_dict({"application_name": application})
    channel = f"tq_relisten_{uuid.uuid4().hex[:8]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    wakes: list[bool] = []

    def kill_the_listen_connection() -> None:
        wait_for(lambda: kill_connections(admin, application, "LISTEN%") == 1, timeout=10)

    try:
        if driver == "psycopg2":
            engine = create_engine(url)
            listener = NotificationListener(
                engine, channel, lambda: wakes.append(listener.listening.is_set())
            )
            listener.start()
            try:
                assert listener.listening.wait(10)
                kill_the_listen_connection()
                wait_for(lambda: True in wakes, timeout=15)
            finally:
                listener.stop()
                engine.dispose()
        else:

            async def body() -> None:
                # the application name as each driver takes it
                async_url, connect_args = async_engine_arguments(
                    url.set(drivername=f"postgresql+{driver}")
                )
                async_engine = create_async_engine(async_url, connect_args=connect_args)
                listening_again = asyncio.Event()

                def wake() -> None:
                    wakes.append(async_listener.listening.is_set())
                    if async_listener.listening.is_set():
                        listening_again.set()

                async_listener = AsyncNotificationListener(async_engine, channel, wake)
                async_listener.start()
                try:
                    assert await asyncio.to_thread(async_listener.listening.wait, 10)
                    await asyncio.to_thread(kill_the_listen_connection)
                    await asyncio.wait_for(listening_again.wait(), 15)
                finally:
                    await async_listener.stop()
                    await async_engine.dispose()

            asyncio.run(body())
    finally:
        admin.dispose()
    assert wakes[0] is False  # the wake at the loss, while nobody listened
    assert wakes[-1] is True  # and the one once it listened again


def test_a_stop_ends_the_run_in_time_when_the_network_freezes(
    new_worker: Any, database_url: str, session_factory: sessionmaker[Session], clean_table: Any
) -> None:
    """The application's own engine, with no timeouts at all: its network freezes (a
    proxy stops forwarding without closing anything) while a handler runs.  A stop still
    ends the run within the grace period plus ``STOP_BOUND``: whatever waits for the
    database is abandoned, and the task is left to lease expiry and rescue."""
    from faults.harness import pausable_proxy

    with session_factory() as session:
        task_id = TaskRepository(session, clean_table).enqueue("job", {})
        session.commit()
    started, release = threading.Event(), threading.Event()

    def job(task: Any, ctx: TaskContext) -> str:
        started.set()
        release.wait(60)  # outlives the grace period
        return "done"

    grace = 1.0
    with pausable_proxy(database_url) as proxy:
        engine = create_engine(proxy.url)
        worker = new_worker(
            sessionmaker(engine),
            clean_table,
            {"job": job},
            shutdown_grace=grace,
            poll_interval=0.1,
            heartbeat_interval=0.2,
        )
        try:
            with running(worker) as thread:
                assert started.wait(10)
                proxy.cut()
                wait_for(proxy.holding, timeout=10)  # a heartbeat or a claim now waits in vain
                asked = time.monotonic()
                worker.stop()
                thread.join(grace + STOP_BOUND + 10)
                took = time.monotonic() - asked
                assert not thread.is_alive()
            # run() itself returns at the bound; the async twin's test runner then also
            # disposes of its engine and closes its loop, each bounded
            assert took < grace + STOP_BOUND + (1 if new_worker.twin == "sync" else 5), took
            with session_factory() as session:
                task = TaskRepository(session, clean_table).get_task(task_id)
                # nothing was written: the task waits for its lease to expire and a rescue
                assert task is not None and task.status is TaskStatus.IN_PROGRESS
        finally:
            release.set()
            proxy.heal()  # the abandoned calls get their answers ...
            # ... and the threaded worker's abandoned thread ends before the next test
            wait_for(lambda: "taskqueue-worker" not in [t.name for t in threading.enumerate()])
            engine.dispose()


def test_a_run_that_cannot_start_its_threads_leaves_nothing_behind(
    new_worker: Any,
    worker_engine: Any,
    clean_table: type[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Starting a slot thread fails (the process hit its thread limit): the run raises
    that error, and stops again whatever it had started, the LISTEN connection and the
    threads, every time."""
    engine, admin = worker_engine
    worker = new_worker(sessionmaker(engine), clean_table, {"job": lambda task, ctx: None})
    start = threading.Thread.start

    def start_or_fail(thread: threading.Thread) -> None:
        if thread.name != "taskqueue-slot-1":
            start(thread)
            return
        if new_worker.twin == "sync":  # (the async twins start their slots on the loop)
            assert worker.listening.wait(10)  # the listener is connected by now
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", start_or_fail)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="can't start new thread"):
            worker.run()
    monkeypatch.undo()

    def worker_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("taskqueue-")]

    wait_for(lambda: worker_threads() == [], timeout=10)
    wait_for(lambda: listeners(admin) == [], timeout=10)
    assert not worker.listening.is_set()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
def test_a_listener_that_cannot_start_its_thread_leaves_no_open_file(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    before = len(list(Path("/proc/self/fd").iterdir()))
    listener = NotificationListener(engine, "tq_unstarted", lambda: None)
    monkeypatch.setattr(threading.Thread, "start", fail)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        listener.start()
    monkeypatch.undo()
    assert len(list(Path("/proc/self/fd").iterdir())) == before  # its wake-up pipe closed


def test_a_signal_the_kernel_hands_to_another_thread_still_stops_the_worker(
    session_factory: sessionmaker[Session], clean_table: type[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A process-directed signal may land on any thread (a slot, the claim loop inside
    libpq): the thread that called ``run()`` must still run its handler soon, though no
    wait of its own was interrupted."""
    import signal

    from sqlalchemy_taskqueue import Worker

    worker = Worker(session_factory, clean_table, {"job": lambda task, ctx: None}, poll_interval=60)
    signalled: list[float] = []

    def strike() -> None:
        wait_for(worker.idle.is_set, timeout=10)
        signalled.append(time.monotonic())
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread

    striker = threading.Thread(target=strike)
    with caplog.at_level(logging.INFO, logger="sqlalchemy_taskqueue"):
        striker.start()
        worker.run()  # on the main thread: it installs the signal handlers
    striker.join()
    assert time.monotonic() - signalled[0] < 5  # the poll interval is a minute
    assert "worker.shutdown_requested signal=SIGTERM" in caplog.text
