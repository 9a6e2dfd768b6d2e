"""What the fault-injection scenarios share: a queue in a throwaway database with an audit
of every execution and every completion, worker processes, a PostgreSQL server that can
be stopped and started, and a TCP proxy that can cut the network.

The test app's handlers (``tests/queue_app.py``) record each call in
``proc_executions``; a trigger records each committed transition to ``completed`` in
``proc_completions``.  So a task run twice shows two executions, and a task completed
twice (which the lease fencing must make impossible) shows two completions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from sqlalchemy_taskqueue import TaskRepository
from sqlalchemy_taskqueue._urls import normalize_url
from sqlalchemy_taskqueue.contrib.testing import throwaway_database

sys.path.insert(0, str(Path(__file__).parents[1]))
from processes import WorkerProcess, wait_for
from queue_app import Base, Task

AUDIT_DDL = """
CREATE TABLE proc_completions (
    task_id bigint NOT NULL,
    result jsonb,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION proc_record_completion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO proc_completions (task_id, result) VALUES (NEW.id, NEW.result);
    RETURN NEW;
END $$;
CREATE TRIGGER proc_completion AFTER UPDATE ON proc_tasks
    FOR EACH ROW WHEN (NEW.status = 'completed') EXECUTE FUNCTION proc_record_completion();
"""

#: A ``sitecustomize`` that moves a process's wall clock (see :meth:`FaultQueue.spawn`).
SKEWED_CLOCK = Path(__file__).parent / "skewed_clock"

#: The rows of ``proc_executions`` that are handler calls (the ``keyed`` handler also
#: records its end).
CALLS = "note IS DISTINCT FROM 'end'"

#: Options every scenario's workers share: short leases so rescue is quick to observe.
WORKER_OPTIONS = ("--lease", "2s", "--poll-interval", "0.5s", "--grace", "10s")


@dataclass
class FaultReport:
    """One scenario's outcome: the figures of the README's reliability table."""

    scenario: str
    tasks: int
    faults: int
    lost: int
    completed_twice: int
    reexecutions: int
    recovery_seconds: float | None
    notes: str = ""
    #: the scenario's own figures behind ``notes``, for the tests to check
    details: dict[str, Any] = field(default_factory=dict)

    def table_row(self) -> str:
        recovery = "n/a" if self.recovery_seconds is None else f"{self.recovery_seconds:.1f} s"
        cells = [
            self.scenario,
            str(self.tasks),
            str(self.faults),
            str(self.lost),
            str(self.completed_twice),
            str(self.reexecutions),
            recovery,
            self.notes,
        ]
        return "| " + " | ".join(cells) + " |"

    def json_line(self) -> str:
        return json.dumps(asdict(self))


TABLE_HEADER = (
    "| scenario | tasks | faults injected | tasks lost | tasks completed twice "
    "| re-executions | recovery (worst) | notes |\n"
    "|---|---:|---:|---:|---:|---:|---:|---|"
)


class FaultQueue:
    """The test app's queue in a database of its own, with the audit and its workers."""

    def __init__(self, url: str, log_dir: Path, worker_options: tuple[str, ...] = ()) -> None:
        self.url = url
        self.log_dir = log_dir
        self.worker_options = worker_options  # for every worker (``--async``: the twin)
        self.engine: Engine = create_engine(url, pool_pre_ping=True, pool_size=4)
        self.workers: list[WorkerProcess] = []
        self.total = 0
        Base.metadata.create_all(self.engine)
        with self.engine.begin() as connection:
            connection.execute(text(AUDIT_DDL))

    # ---------------------------------------------------------------- tasks and workers

    def enqueue(
        self, count: int, ms: tuple[int, int], seed: int = 0, max_retries: int = 10
    ) -> list[int]:
        """``count`` tasks that each work a random ``ms[0]..ms[1]`` milliseconds."""
        rng = random.Random(seed)
        with sessionmaker(self.engine)() as session:
            ids = TaskRepository(session, Task).enqueue_many(
                "work", [{"ms": rng.randint(*ms)} for _ in range(count)], max_retries=max_retries
            )
            session.commit()
        self.total += count
        return ids

    def spawn(
        self,
        *options: str,
        url: str | None = None,
        clock_skew: float | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """A worker on this queue (through ``url`` if given), its wall clock moved by
        ``clock_skew`` seconds if given, ``env`` added to its environment."""
        log = self.log_dir / f"worker-{len(self.workers)}.log"
        env = dict(env or {})
        if clock_skew is not None:
            env |= {
                "PYTHONPATH": os.pathsep.join([str(SKEWED_CLOCK), str(Path(__file__).parents[1])]),
                "TASKQUEUE_TEST_CLOCK_SKEW": str(clock_skew),
            }
        worker = WorkerProcess(
            url or self.url, log, *WORKER_OPTIONS, *self.worker_options, *options, env=env
        )
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> list[int]:
        """SIGTERM every live worker; the exit codes (0: it survived and shut down)."""
        live = [worker for worker in self.workers if worker.alive()]
        for worker in live:
            # a replacement may still be starting: SIGTERM before its handlers are in
            # place would kill it (-15) instead of stopping it
            wait_for(lambda worker=worker: worker.started() or not worker.alive())
            worker.signal(signal.SIGTERM)
        return [worker.wait(60) for worker in live]

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.engine.dispose()

    # ---------------------------------------------------------------- reading the state

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()

    def now(self) -> datetime:
        """The database's clock (every lease decision uses it)."""
        moment: datetime = self.scalar("SELECT clock_timestamp()")
        return moment

    def unfinished(self) -> int:
        return int(
            self.scalar(
                "SELECT count(*) FROM proc_tasks WHERE status IN ('pending', 'in_progress')"
            )
        )

    def completed(self) -> int:
        return int(self.scalar("SELECT count(*) FROM proc_tasks WHERE status = 'completed'"))

    def held_by(self, pid: int) -> list[int]:
        """Tasks in progress under a lease of the worker process ``pid``."""
        with self.engine.connect() as connection:
            return list(
                connection.scalars(
                    text(
                        "SELECT id FROM proc_tasks WHERE status = 'in_progress' "
                        "AND lease_owner LIKE :owner"
                    ),
                    {"owner": f"%:{pid}:%"},
                )
            )

    def executions_by(self, pid: int) -> int:
        """Handler calls the worker process ``pid`` has recorded."""
        return int(
            self.scalar(
                f"SELECT count(*) FROM proc_executions WHERE pid = :pid AND {CALLS}", pid=pid
            )
        )

    def wait_until_settled(self, timeout: float = 120.0) -> None:
        """Wait until no task is pending or in progress."""
        wait_for(lambda: self.unfinished() == 0, timeout=timeout)

    def restarted_after(self, moment: datetime, task_ids: list[int]) -> float:
        """Seconds from ``moment`` until the last of ``task_ids`` started running again."""
        delay = self.scalar(
            "SELECT EXTRACT(EPOCH FROM max(first_run) - :moment) FROM ("
            "  SELECT min(at) AS first_run FROM proc_executions"
            f"  WHERE task_id = ANY(:ids) AND at > :moment AND {CALLS} GROUP BY task_id) AS runs",
            moment=moment,
            ids=task_ids,
        )
        return float(delay or 0.0)

    def next_completion_after(self, moment: datetime) -> float:
        """Seconds from ``moment`` until the queue completed a task again."""
        delay = self.scalar(
            "SELECT EXTRACT(EPOCH FROM min(at) - :moment) FROM proc_completions WHERE at > :moment",
            moment=moment,
        )
        return float(delay or 0.0)

    def report(
        self,
        scenario: str,
        *,
        faults: int,
        recovery: float | None,
        notes: str = "",
        **details: Any,
    ) -> FaultReport:
        lost = self.total - self.completed()
        twice = self.scalar(
            "SELECT count(*) FROM (SELECT task_id FROM proc_completions "
            "GROUP BY task_id HAVING count(*) > 1) AS repeated"
        )
        runs = self.scalar(
            f"SELECT count(*) - count(DISTINCT task_id) FROM proc_executions WHERE {CALLS}"
        )
        return FaultReport(
            scenario, self.total, faults, lost, int(twice), int(runs), recovery, notes, details
        )


@contextmanager
def fault_queue(server_url: str, log_dir: Path, twin: str = "sync") -> Iterator[FaultQueue]:
    """A :class:`FaultQueue` in a database created for it and dropped afterwards, whose
    workers are threaded ``Worker``s or (``twin="async"``) ``AsyncWorker``s."""
    options = {"sync": (), "async": ("--async",)}[twin]
    with throwaway_database(server_url, "taskqueue_faults") as url:
        queue = FaultQueue(url, log_dir, options)
        try:
            yield queue
        finally:
            queue.close()


def tagged(url: str, application_name: str) -> str:
    """``url`` whose connections show ``application_name`` in ``pg_stat_activity``."""
    parsed = make_url(url)
    query = {**parsed.query, "application_name": application_name}
    return parsed.set(query=query).render_as_string(hide_password=False)


# ------------------------------------------------------------------------ the server


class RestartableServer:
    """A PostgreSQL of the test's own (the embedded ``pgserver`` binaries) in ``data_dir``,
    which the test may stop and start; deleted on :meth:`close`."""

    def __init__(self, data_dir: Path) -> None:
        import pgserver

        self._pgserver = pgserver
        self._data_dir = data_dir
        self._handle = pgserver.get_server(str(data_dir), cleanup_mode="delete")
        self._socket_dir = str(self._handle.get_postmaster_info().socket_dir)
        self.url = normalize_url(str(self._handle.get_uri()))

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a failover or a restart."""
        self._pgserver.pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self._data_dir, user=self._handle.system_user
        )

    def start(self) -> None:
        self._pgserver.pg_ctl(
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {self._socket_dir}",
                "-l",
                str(self._data_dir / "log"),
                "start",
            ],
            pgdata=self._data_dir,
            user=self._handle.system_user,
            timeout=30,
        )

    def close(self) -> None:
        self._handle.cleanup()


@contextmanager
def restartable_server() -> Iterator[RestartableServer]:
    """A :class:`RestartableServer` in a directory of its own.

    Run as root, pgserver runs PostgreSQL as an unprivileged user, which must reach the
    data directory: pytest's own temporary directories are private to root, so the
    server lives in a world-traversable directory, removed afterwards.
    """
    home = Path(tempfile.mkdtemp(prefix="taskqueue-faults-pg-"))
    home.chmod(0o755)
    try:
        server = RestartableServer(home / "pgdata")
        try:
            yield server
        finally:
            server.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------------ the network


class PausableProxy:
    """A TCP proxy on 127.0.0.1 in front of the database of ``url``.

    :meth:`cut` stops forwarding in both directions without closing anything, as a
    network partition does: nobody is told, bytes just stop arriving.  :meth:`heal`
    forwards what was held back and carries on.  :meth:`refuse` drops every connection
    and refuses new ones, as a restarting server does, until :meth:`readmit`.
    :meth:`holding` says whether a cut is holding something back: a client is then
    waiting for an answer that will not come.
    """

    def __init__(self, url: str) -> None:
        self._target = _server_address(url)
        self._open = threading.Event()
        self._open.set()
        self._held = 0  # connections and messages waiting for the cut to heal
        self._held_lock = threading.Lock()  # also orders close() and new connections
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self.url = (
            make_url(url)
            .set(host="127.0.0.1", port=self.port, query={})
            .render_as_string(hide_password=False)
        )
        self._accepting.start()

    def refuse(self) -> None:
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._accepting.join(5)
        for sock in self._sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._sockets = []

    def readmit(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def cut(self) -> None:
        self._open.clear()

    def holding(self) -> bool:
        """Whether a connection or a message is waiting for the cut to heal."""
        with self._held_lock:
            return self._held > 0

    def _wait_until_open(self) -> None:
        """Hold back whatever arrives while the network is cut."""
        if self._open.is_set():
            return
        with self._held_lock:
            self._held += 1
        self._open.wait()
        with self._held_lock:
            self._held -= 1

    def heal(self) -> None:
        self._open.set()

    def close(self) -> None:
        with self._held_lock:
            self._closed = True
        self._open.set()
        for sock in [self._listener, *self._sockets]:
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._wait_until_open()
            family, address = self._target
            upstream = socket.socket(family, socket.SOCK_STREAM)
            with self._held_lock:
                if self._closed:  # closed while this connection was held back by a cut
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            upstream.connect(address)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._wait_until_open()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _server_address(url: str) -> tuple[socket.AddressFamily, Any]:
    """Where the server of ``url`` listens: a TCP address or a Unix socket path."""
    parsed = make_url(url)
    port = parsed.port or 5432
    host = parsed.host or str(parsed.query.get("host", ""))
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (host or "127.0.0.1", port)


@contextmanager
def pausable_proxy(url: str) -> Iterator[PausableProxy]:
    proxy = PausableProxy(url)
    try:
        yield proxy
    finally:
        proxy.close()


__all__ = [
    "TABLE_HEADER",
    "FaultQueue",
    "FaultReport",
    "PausableProxy",
    "RestartableServer",
    "fault_queue",
    "pausable_proxy",
    "restartable_server",
    "tagged",
    "wait_for",
]
