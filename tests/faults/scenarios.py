"""The fault-injection scenarios, each run against real worker processes and a real
PostgreSQL, each returning a :class:`~harness.FaultReport`.

The tests (``test_faults.py``) run them small and assert that nothing was lost or
completed twice; ``make faults`` (``report.py``) runs them larger and prints the table
published in the README.  Sleeps in here are the fault schedule (when to strike, how long
an outage lasts), never a way to wait for a state: states are awaited with ``wait_for``.
"""

from __future__ import annotations

import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from harness import (
    FaultQueue,
    FaultReport,
    fault_queue,
    pausable_proxy,
    restartable_server,
    tagged,
    wait_for,
)
from keyed_runs import KEY_LIMITS, enqueue_keyed, keyed_runs, keys_over_their_limit, most_at_once
from processes import WorkerProcess
from queue_app import SCHEDULE_ENV
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from sqlalchemy_taskqueue.worker._base import STOP_BOUND

#: Enough slots and prefetch that a kill finds tasks running, waiting and being written.
FLEET_OPTIONS = ("--concurrency", "4", "--prefetch", "2")


class Kill(NamedTuple):
    """A worker SIGKILLed by :func:`kill_at_random`."""

    pid: int
    at: datetime  # by the database clock
    held: list[int]  # the tasks in progress under its leases


def kill_at_random(queue: FaultQueue, kills: int, seed: int) -> tuple[list[Kill], list[int]]:
    """Three workers; one at a time is SIGKILLed at a random moment and replaced,
    ``kills`` times (or until nothing is left to do); then, once every task has
    finished, the survivors are stopped.  The kills, and the survivors' exit codes."""
    rng = random.Random(seed)
    fleet = [queue.spawn(*FLEET_OPTIONS) for _ in range(3)]
    orphaned: list[Kill] = []
    wait_for(lambda: queue.completed() > 0)
    while len(orphaned) < kills and queue.unfinished() > 0:
        time.sleep(rng.uniform(0.1, 0.6))  # the fault schedule: strike at a random moment
        victim = fleet.pop(rng.randrange(len(fleet)))
        victim.kill()
        orphaned.append(Kill(victim.pid, queue.now(), queue.held_by(victim.pid)))
        fleet.append(queue.spawn(*FLEET_OPTIONS))
    queue.wait_until_settled()
    return orphaned, queue.stop_workers()


def worker_sigkill(
    server_url: str,
    work_dir: Path,
    *,
    tasks: int = 400,
    kills: int = 6,
    seed: int = 1,
    twin: str = "sync",
) -> FaultReport:
    """Three workers; one at a time is SIGKILLed at a random moment (claiming, running
    handlers, writing outcomes) and replaced, ``kills`` times.

    Recovery: the longest time from a kill until every task the dead worker held had
    started again elsewhere (the lease, plus the rescue interval).
    """
    with fault_queue(server_url, work_dir, twin) as queue:
        queue.enqueue(tasks, ms=(10, 60), seed=seed)
        orphaned, exits = kill_at_random(queue, kills, seed)
        recovery = max(
            (queue.restarted_after(kill.at, kill.held) for kill in orphaned if kill.held),
            default=None,
        )
        held = sum(len(kill.held) for kill in orphaned)
        return queue.report(
            "worker killed (SIGKILL) at random moments",
            faults=len(orphaned),
            recovery=recovery,
            notes=f"{held} tasks held by killed workers; survivors exited {set(exits)}",
            exits=exits,
        )


def keyed_worker_sigkill(
    server_url: str,
    work_dir: Path,
    *,
    tasks: int = 300,
    kills: int = 4,
    seed: int = 2,
    twin: str = "sync",
) -> FaultReport:
    """:func:`worker_sigkill` on tasks over 15 concurrency keys (10 of limit 1, 5 of
    limit 3): besides losing nothing, no key ever runs more tasks at once than its limit,
    a killed worker's calls counting as running until the kill (its slots stay taken
    until its leases expire).

    Recovery: as for :func:`worker_sigkill`; the keys' slots come back with the leases.
    """
    with fault_queue(server_url, work_dir, twin) as queue:
        with sessionmaker(queue.engine).begin() as session:
            enqueue_keyed(session, tasks, ms=(20, 80), seed=seed)
        queue.total += tasks
        orphaned, exits = kill_at_random(queue, kills, seed)
        recovery = max(
            (queue.restarted_after(kill.at, kill.held) for kill in orphaned if kill.held),
            default=None,
        )
        with queue.engine.connect() as connection:
            runs = keyed_runs(connection, {kill.pid: kill.at for kill in orphaned})
        over = keys_over_their_limit(runs, KEY_LIMITS)
        held = sum(len(kill.held) for kill in orphaned)
        return queue.report(
            "worker killed (SIGKILL), tasks with concurrency keys",
            faults=len(orphaned),
            recovery=recovery,
            notes=(
                f"{held} tasks held by killed workers; keys over their limit: {len(over)}; "
                f"most at once across keys: {most_at_once(runs)}"
            ),
            exits=exits,
            over_limit=over,
        )


def terminated_connections(
    server_url: str,
    work_dir: Path,
    *,
    tasks: int = 400,
    kills: int = 8,
    seed: int = 2,
    twin: str = "sync",
) -> FaultReport:
    """Two workers whose every database connection is ``pg_terminate_backend``-ed at
    random moments; the workers must reconnect and carry on.

    Recovery: the longest time from a round of terminations until the queue completed a
    task again.
    """
    rng = random.Random(seed)
    application = f"tq-fault-{uuid.uuid4().hex[:8]}"
    with fault_queue(server_url, work_dir, twin) as queue:
        queue.enqueue(tasks, ms=(5, 30), seed=seed)
        fleet = [queue.spawn(*FLEET_OPTIONS, url=tagged(queue.url, application)) for _ in range(2)]
        wait_for(lambda: queue.completed() > 0)
        rounds: list[datetime] = []
        terminated = 0
        while len(rounds) < kills and queue.unfinished() > 0:
            time.sleep(rng.uniform(0.1, 0.4))  # the fault schedule
            count = terminate_backends(queue, application)
            if count:
                terminated += count
                rounds.append(queue.now())
        queue.wait_until_settled()
        survived = all(worker.alive() for worker in fleet)
        exits = queue.stop_workers()
        recovery = max((queue.next_completion_after(at) for at in rounds), default=None)
        return queue.report(
            "connections killed (pg_terminate_backend)",
            faults=terminated,
            recovery=recovery,
            notes=f"{len(rounds)} rounds; workers survived: {survived}, exited {set(exits)}",
            survived=survived,
            exits=exits,
        )


def terminate_backends(queue: FaultQueue, application: str) -> int:
    with queue.engine.connect() as connection:
        return len(
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :application"
                ),
                {"application": application},
            ).all()
        )


def periodic_schedule(
    server_url: str,
    work_dir: Path,
    *,
    seconds: float = 20.0,
    kills: int = 4,
    terminations: int = 3,
    seed: int = 7,
    overlap: bool = True,
) -> FaultReport:
    """Three workers (two threaded, one ``--async``) carry the same schedule, every
    second (with ``overlap``: a fire is not held back by the last one's task, still
    running when a kill interrupted it), for ``seconds``; meanwhile one at a time is SIGKILLed at a random
    moment (firing, claiming, running) and replaced, ``kills`` times, and every database
    connection of the fleet is terminated ``terminations`` times.

    The figures are fire times, not tasks: ``tasks`` the fire times from the first fire
    to the last, ``lost`` those with no task, ``completed_twice`` those with more than
    one.  Recovery: the longest time from a fault until the next fire was enqueued.
    """
    rng = random.Random(seed)
    application = f"tq-fault-{uuid.uuid4().hex[:8]}"
    env = {SCHEDULE_ENV: f"every=1s;overlap={int(overlap)}"}
    with fault_queue(server_url, work_dir) as queue:

        def spawn(index: int) -> WorkerProcess:
            twin = ("--async",) if index % 3 == 1 else ()
            return queue.spawn(*twin, url=tagged(queue.url, application), env=env)

        fleet = [spawn(index) for index in range(3)]
        wait_for(lambda: fires(queue) > 0, timeout=60)
        began = time.monotonic()
        plan = sorted(
            [("kill", rng.uniform(1, seconds - 1)) for _ in range(kills)]
            + [("terminate", rng.uniform(1, seconds - 1)) for _ in range(terminations)],
            key=lambda event: event[1],
        )
        struck: list[datetime] = []
        spawned = len(fleet)
        for kind, at in plan:
            time.sleep(max(0.0, began + at - time.monotonic()))  # the fault schedule
            if kind == "kill":
                victim = fleet.pop(rng.randrange(len(fleet)))
                victim.kill()
                fleet.append(spawn(spawned))
                spawned += 1
            else:
                terminate_backends(queue, application)
            struck.append(queue.now())
        time.sleep(max(0.0, began + seconds - time.monotonic()))  # the run's length
        exits = queue.stop_workers()
        counts = [int(count) for count in fire_counts(queue)]
        recovery = max(
            (
                float(
                    queue.scalar(
                        "SELECT EXTRACT(EPOCH FROM min(created_at) - :at) FROM proc_tasks "
                        "WHERE type = 'tick' AND created_at > :at",
                        at=at,
                    )
                    or 0.0
                )
                for at in struck
            ),
            default=None,
        )
        runs = queue.scalar("SELECT count(*) - count(DISTINCT task_id) FROM proc_executions")
        return FaultReport(
            "periodic schedule (every 1 s, 3 workers) under SIGKILL and pg_terminate_backend",
            tasks=len(counts),
            faults=len(struck),
            lost=counts.count(0),
            completed_twice=sum(1 for count in counts if count > 1),
            reexecutions=int(runs),
            recovery_seconds=recovery,
            notes=(
                f"fire times, not tasks: {len(counts)} fires over {seconds:.0f} s, "
                f"{counts.count(0)} missed, {sum(1 for c in counts if c > 1)} enqueued twice; "
                f"{kills} kills, {terminations} rounds of terminations"
            ),
            details={"exits": exits, "counts": counts},
        )


def fires(queue: FaultQueue) -> int:
    return int(queue.scalar("SELECT count(*) FROM proc_tasks WHERE type = 'tick'"))


def fire_counts(queue: FaultQueue) -> list[int]:
    """Tasks per fire time, every second from the first fire to the last (0: missed),
    told by the tasks' dedupe keys (``schedule:tick@<fire time>``: retries move
    ``run_at``, never the key)."""
    with queue.engine.connect() as connection:
        keys = connection.scalars(text("SELECT dedupe_key FROM proc_tasks WHERE type = 'tick'"))
        per_fire = Counter(datetime.fromisoformat(key.split("@", 1)[1]) for key in keys)
    if not per_fire:
        return []
    first, last = min(per_fire), max(per_fire)
    seconds = int((last - first).total_seconds())
    return [per_fire.get(first + timedelta(seconds=step), 0) for step in range(seconds + 1)]


def server_restart(
    work_dir: Path,
    *,
    tasks: int = 400,
    restarts: int = 1,
    outage: float = 2.0,
    twin: str = "sync",
) -> FaultReport:
    """A PostgreSQL of the scenario's own is stopped (fast shutdown) and started again
    while two workers run; the workers must survive the outage and finish.

    Recovery: the longest time from the server accepting connections again until the
    queue completed a task again.
    """
    with (
        restartable_server() as server,
        fault_queue(server.url, work_dir, twin) as queue,
    ):
        queue.enqueue(tasks, ms=(5, 30))
        fleet = [queue.spawn(*FLEET_OPTIONS) for _ in range(2)]
        back: list[datetime] = []
        for round_ in range(1, restarts + 1):
            progress = tasks * round_ // (restarts + 2)
            wait_for(lambda: queue.completed() >= progress)  # noqa: B023 (awaited at once)
            server.stop()
            time.sleep(outage)  # the outage itself
            server.start()
            back.append(queue.now())
        queue.wait_until_settled()
        survived = all(worker.alive() for worker in fleet)
        exits = queue.stop_workers()
        recovery = max(queue.next_completion_after(at) for at in back)
        return queue.report(
            f"PostgreSQL restarted ({outage:.0f} s outage)",
            faults=restarts,
            recovery=recovery,
            notes=f"workers survived: {survived}, exited {set(exits)}",
            survived=survived,
            exits=exits,
        )


def idle_in_transaction(server_url: str, work_dir: Path, *, tasks: int = 1000) -> FaultReport:
    """A session sits ``idle in transaction`` (holding an xid, as a forgotten ``BEGIN``
    does) while a worker drains the queue; measured against the same drain without it.

    Nothing stalls (the queue never waits on the idle session's locks), but no dead
    row version created after it began can be vacuumed until it ends.
    """
    with fault_queue(server_url, work_dir) as queue:
        clean_rate = drain_rate(queue, tasks)
        with queue.engine.connect() as idle:
            idle.execute(text("SELECT txid_current(), count(*) FROM proc_tasks"))
            held_rate = drain_rate(queue, tasks)
            unremovable = dead_rows_left_by_vacuum(queue)
            idle.rollback()
        after = dead_rows_left_by_vacuum(queue)
        return queue.report(
            "a session idle in transaction during the run",
            faults=1,
            recovery=None,
            notes=(
                f"drain {held_rate:.0f} tasks/s vs {clean_rate:.0f} without it; "
                f"vacuum could not remove {unremovable} dead rows until it ended ({after} after)"
            ),
            unremovable=unremovable,
            unremovable_after=after,
            rates=(clean_rate, held_rate),
        )


def drain_rate(queue: FaultQueue, tasks: int) -> float:
    """Tasks per second one worker completes ``tasks`` no-op tasks at (database clock)."""
    ids = queue.enqueue(tasks, ms=(0, 0))
    worker = queue.spawn("--until-empty", *FLEET_OPTIONS, "--log-level", "warning")
    assert worker.wait(120) == 0, worker.output()
    seconds = queue.scalar(
        "SELECT EXTRACT(EPOCH FROM max(completed_at) - min(started_at)) FROM proc_tasks "
        "WHERE id = ANY(:ids)",
        ids=ids,
    )
    return tasks / max(float(seconds), 1e-3)


def dead_rows_left_by_vacuum(queue: FaultQueue) -> int:
    """Run ``VACUUM (VERBOSE)`` on the queue table and return how many dead row versions
    it had to leave because a transaction might still see them."""
    with queue.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # the driver's own cursor: SQLAlchemy's would move the notices to its log
        driver = connection.connection.dbapi_connection
        assert driver is not None
        del driver.notices[:]  # type: ignore[attr-defined]
        driver.cursor().execute("VACUUM (VERBOSE) proc_tasks")
        notices = "".join(driver.notices)  # type: ignore[attr-defined]
    found = re.search(r"(\d+) are dead but not yet removable", notices)
    return int(found.group(1)) if found else 0


def stranded_worker(
    server_url: str,
    work_dir: Path,
    *,
    how: str = "network cut",
    tasks: int = 3,
    twin: str = "sync",
) -> FaultReport:
    """A worker loses contact mid-task: its network is cut (a proxy stops forwarding)
    or it is frozen (``SIGSTOP``, as a long GC pause or an overloaded host does).  Its
    leases expire, a second worker rescues and completes the tasks, and when the first
    comes back its late completions must be refused.

    Recovery: the longest time from the fault until a rescued task started again.
    """
    with fault_queue(server_url, work_dir, twin) as queue, pausable_proxy(queue.url) as proxy:
        faults: dict[str, tuple[Callable[[WorkerProcess], None], Callable[[WorkerProcess], None]]]
        faults = {
            "network cut": (lambda _: proxy.cut(), lambda _: proxy.heal()),
            "SIGSTOP": (
                lambda worker: worker.signal(signal.SIGSTOP),
                lambda worker: worker.signal(signal.SIGCONT),
            ),
        }
        strand, heal = faults[how]
        ids = queue.enqueue(tasks, ms=(3000, 3000))
        victim = queue.spawn("--concurrency", str(tasks), url=proxy.url)
        wait_for(lambda: len(queue.held_by(victim.pid)) == tasks)
        strand(victim)
        struck = queue.now()
        rescuer = queue.spawn("--concurrency", str(tasks))
        queue.wait_until_settled(timeout=60)
        heal(victim)
        # the late outcomes are refused: the victim finds its leases gone
        wait_for(lambda: lost_leases(victim) == set(ids), timeout=60)
        winners = queue.scalar(
            "SELECT count(*) FROM proc_completions WHERE (result #>> '{}')::int = :pid",
            pid=rescuer.pid,
        )
        exits = queue.stop_workers()
        return queue.report(
            f"worker stranded mid-task ({how})",
            faults=1,
            recovery=queue.restarted_after(struck, ids),
            notes=(
                f"{winners}/{tasks} outcomes written by the rescuer, the stranded worker's "
                f"{tasks} refused; exits {set(exits)}"
            ),
            rescuer_outcomes=winners,
            exits=exits,
        )


def frozen_network(
    server_url: str,
    work_dir: Path,
    *,
    tasks: int = 4,
    grace: float = 2.0,
    twin: str = "sync",
) -> FaultReport:
    """Two workers lose their network mid-task (a proxy stops forwarding without closing
    anything, so every call they make waits for an answer that never comes), then are
    told to stop: one by a SIGTERM, which must end it within its grace period plus the
    stop bound, the other by a SIGTERM and then a SIGINT, which must end it at once.  A
    third worker rescues their tasks once the leases expire.

    Recovery: the longest time from the cut until a stranded task started again.
    """
    with (
        fault_queue(server_url, work_dir, twin) as queue,
        pausable_proxy(queue.url) as first_network,
        pausable_proxy(queue.url) as second_network,
    ):
        # long enough to be running still when the grace period ends
        ids = queue.enqueue(tasks, ms=(int((grace + 4) * 1000),) * 2)
        each = tasks // 2
        victims: list[WorkerProcess] = []
        for network in (first_network, second_network):
            victim = queue.spawn(
                "--concurrency", str(each), "--grace", f"{grace:g}s", url=network.url
            )
            # its handlers are running: they have recorded their executions
            wait_for(lambda victim=victim: queue.executions_by(victim.pid) == each)
            victims.append(victim)
        stopped, interrupted = victims
        for network in (first_network, second_network):
            network.cut()
        struck = queue.now()
        # both are now waiting for the database (a claim, a heartbeat) in vain
        wait_for(lambda: first_network.holding() and second_network.holding())
        rescuer = queue.spawn("--concurrency", str(tasks))
        signalled = time.monotonic()
        for victim in victims:
            victim.signal(signal.SIGTERM)
        wait_for(lambda: "worker.shutdown_requested" in interrupted.output())
        interrupted_at = time.monotonic()
        interrupted.signal(signal.SIGINT)
        exited: dict[int, float] = {}

        def victims_exited() -> bool:
            for victim in victims:
                if victim.pid not in exited and not victim.alive():
                    exited[victim.pid] = time.monotonic()
            return len(exited) == len(victims)

        with suppress(AssertionError):  # a worker that outlives this is reported, not waited for
            wait_for(victims_exited, timeout=grace + STOP_BOUND + 30)
        stop_seconds = exited[stopped.pid] - signalled if stopped.pid in exited else None
        exit_seconds = (
            exited[interrupted.pid] - interrupted_at if interrupted.pid in exited else None
        )
        exits = [victim.process.poll() for victim in victims]
        for victim in victims:
            victim.kill()
        queue.wait_until_settled(timeout=60)
        rescued = queue.scalar(
            "SELECT count(*) FROM proc_completions WHERE (result #>> '{}')::int = :pid",
            pid=rescuer.pid,
        )
        queue.stop_workers()

        def took(seconds: float | None) -> str:
            return "still running" if seconds is None else f"{seconds:.1f} s"

        return queue.report(
            "network frozen, then the worker is stopped",
            faults=1,
            recovery=queue.restarted_after(struck, ids),
            notes=(
                f"first signal: stopped in {took(stop_seconds)} (grace {grace:g} s); "
                f"second signal: exited in {took(exit_seconds)}; exits {exits}; "
                f"{rescued}/{tasks} completed by the rescuer"
            ),
            grace=grace,
            stop_seconds=stop_seconds,
            exit_seconds=exit_seconds,
            exits=exits,
            rescued=rescued,
        )


def skewed_clocks(
    server_url: str, work_dir: Path, *, tasks: int = 300, skew_hours: float = 1.0
) -> FaultReport:
    """Two workers whose clocks are off by +/- ``skew_hours`` share the queue with 2 s
    leases.  If any lease decision used a worker's clock, the fast one would see every
    other lease as long expired and steal it, and the slow one's leases would last an
    hour.

    Recovery: not applicable; the notes give the longest lease seen (database clock).
    """
    with fault_queue(server_url, work_dir) as queue:
        queue.enqueue(tasks, ms=(10, 40))
        for hours in (skew_hours, -skew_hours):
            queue.spawn(*FLEET_OPTIONS, clock_skew=hours * 3600)
        longest = 0.0

        def settled() -> bool:
            nonlocal longest
            lease = queue.scalar(
                "SELECT EXTRACT(EPOCH FROM max(lease_expires_at) - clock_timestamp()) "
                "FROM proc_tasks WHERE status = 'in_progress'"
            )
            longest = max(longest, float(lease or 0.0))
            return queue.unfinished() == 0

        wait_for(settled, timeout=120)
        rescued = sum(worker.output().count("task.rescued") for worker in queue.workers)
        # how far each worker's clock was from the database's when a handler started
        with queue.engine.connect() as connection:
            offsets = connection.execute(
                text(
                    "SELECT min(note::float - EXTRACT(EPOCH FROM at)), "
                    "max(note::float - EXTRACT(EPOCH FROM at)) FROM proc_executions"
                )
            ).one()
        exits = queue.stop_workers()
        return queue.report(
            f"worker clocks skewed by +/-{skew_hours:g} h",
            faults=2,
            recovery=None,
            notes=(
                f"longest lease seen {longest:.1f} s (2 s leases); {rescued} rescues; "
                f"exits {set(exits)}"
            ),
            longest_lease=longest,
            rescued=rescued,
            clock_offsets=(float(offsets[0]), float(offsets[1])),
            exits=exits,
        )


def poison_documents(
    server_url: str,
    work_dir: Path,
    *,
    kind: str = "payload",
    tasks: int = 300,
    poison: int = 10,
    twin: str = "sync",
) -> FaultReport:
    """Bad documents among innocent tasks, claimed in the same batches by three workers
    with a prefetch: payloads nested deeper than Python's decoder goes (``kind=
    "payload"``, written with SQL around the repository, which refuses them), or
    handlers returning a result of 2 MiB, over the workers' 1 MiB ``max_result_bytes``
    (``kind="result"``).  Each poison task must fail alone, at once and without a
    retry; every innocent task (``max_retries=0``: a charged retry would fail it) must
    complete, and the workers must keep claiming.

    Recovery: not applicable; the notes count poison tasks failed and innocent tasks
    harmed (not completed, or charged a retry).
    """
    with fault_queue(server_url, work_dir, twin) as queue:
        ids = queue.enqueue(tasks, ms=(1, 5), max_retries=0)
        with queue.engine.begin() as connection:
            depth = 5_000
            task_type, document = {
                "payload": ("count", "[" * depth + "]" * depth),
                "result": ("oversized", '{"bytes": 2097152}'),
            }[kind]
            planted = text(
                "INSERT INTO proc_tasks (type, payload, max_retries) "
                "SELECT :type, CAST(:doc AS JSONB), 3 FROM generate_series(1, :n) RETURNING id"
            )
            # spread among the innocent ones, so that claims batch them together
            params = {"type": task_type, "doc": document, "n": poison}
            poisoned = list(connection.execute(planted, params).scalars())
            connection.execute(
                text("UPDATE proc_tasks SET run_at = run_at - random() * interval '1 second'")
            )
        fleet = [queue.spawn(*FLEET_OPTIONS) for _ in range(3)]
        queue.wait_until_settled(timeout=120)
        harmed = queue.scalar(
            "SELECT count(*) FROM proc_tasks WHERE id = ANY(:ids) "
            "AND (status <> 'completed' OR retry_count > 0)",
            ids=ids,
        )
        failed_at_once = queue.scalar(
            "SELECT count(*) FROM proc_tasks WHERE id = ANY(:ids) "
            "AND status = 'failed' AND retry_count = 1",
            ids=poisoned,
        )
        exits = queue.stop_workers()
        return queue.report(
            f"poison {kind}s among innocent tasks",
            faults=poison,
            recovery=None,
            notes=(
                f"{failed_at_once}/{poison} poison tasks failed at once, not retried; "
                f"innocent tasks harmed: {harmed}; exits {set(exits)}"
            ),
            harmed=int(harmed),
            failed_at_once=int(failed_at_once),
            exits=exits,
            workers=len(fleet),
        )


def lost_leases(worker: WorkerProcess) -> set[int]:
    """Tasks whose outcome ``worker`` found it may no longer write."""
    return {int(found) for found in re.findall(r"task\.lease_lost id=(\d+)", worker.output())}
