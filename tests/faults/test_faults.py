"""Fault injection: workers killed, frozen and cut off, connections terminated, the
server restarted, a session left idle in transaction, clocks skewed, a worker stopped
behind a frozen network.  In every case each
task must end ``completed`` exactly once (executions may repeat: delivery is
at-least-once, the outcome is exactly-once)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from harness import FaultReport
from scenarios import (
    frozen_network,
    idle_in_transaction,
    keyed_worker_sigkill,
    poison_documents,
    server_restart,
    skewed_clocks,
    stranded_worker,
    terminated_connections,
    worker_sigkill,
)

from sqlalchemy_taskqueue.worker._base import STOP_BOUND

pytestmark = pytest.mark.slow
#: the worker processes: threaded ``Worker``s, or ``AsyncWorker``s (``taskqueue worker --async``)
twins = pytest.mark.parametrize("twin", ["sync", "async"])


def assert_nothing_lost(report: FaultReport) -> None:
    assert report.faults > 0, report
    assert (report.lost, report.completed_twice) == (0, 0), report


@twins
def test_workers_killed_at_random_moments_lose_nothing(
    server_url: str, tmp_path: Path, twin: str
) -> None:
    report = worker_sigkill(server_url, tmp_path, tasks=300, kills=4, twin=twin)
    assert_nothing_lost(report)
    assert report.recovery_seconds is not None
    # every interrupted task started again within a lease (2 s) plus the rescue
    # interval (0.5 s) of the kill, with slack for a loaded machine
    assert report.recovery_seconds < 10, report
    assert set(report.details["exits"]) == {0}, report


@twins
def test_killed_workers_never_let_a_key_run_over_its_limit(
    server_url: str, tmp_path: Path, twin: str
) -> None:
    report = keyed_worker_sigkill(server_url, tmp_path, tasks=300, kills=3, twin=twin)
    assert_nothing_lost(report)
    assert report.details["over_limit"] == {}, report
    assert report.recovery_seconds is not None and report.recovery_seconds < 10, report
    assert set(report.details["exits"]) == {0}, report


@twins
def test_terminated_connections_are_replaced_and_nothing_is_lost(
    server_url: str, tmp_path: Path, twin: str
) -> None:
    report = terminated_connections(server_url, tmp_path, tasks=300, kills=5, twin=twin)
    assert_nothing_lost(report)
    assert report.details["survived"] and set(report.details["exits"]) == {0}, report


@twins
def test_workers_ride_out_a_server_restart(tmp_path: Path, twin: str) -> None:
    pytest.importorskip("pgserver")
    report = server_restart(tmp_path, tasks=300, outage=1.0, twin=twin)
    assert_nothing_lost(report)
    assert report.details["survived"] and set(report.details["exits"]) == {0}, report


def test_an_idle_transaction_slows_vacuum_but_stalls_nothing(
    server_url: str, tmp_path: Path
) -> None:
    report = idle_in_transaction(server_url, tmp_path, tasks=300)
    assert_nothing_lost(report)
    assert report.reexecutions == 0, report
    # the effect is real: rows finished during the idle transaction could not be vacuumed
    assert report.details["unremovable"] > 0, report
    assert report.details["unremovable_after"] == 0, report


@twins
@pytest.mark.parametrize("how", ["network cut", "SIGSTOP"])
def test_a_stranded_worker_is_rescued_and_its_late_outcome_refused(
    server_url: str, tmp_path: Path, how: str, twin: str
) -> None:
    report = stranded_worker(server_url, tmp_path, how=how, twin=twin)
    assert_nothing_lost(report)
    assert report.reexecutions == 3, report  # each task ran on both workers
    assert report.details["rescuer_outcomes"] == 3, report
    assert set(report.details["exits"]) == {0}, report
    assert report.recovery_seconds is not None and report.recovery_seconds < 10, report


@twins
def test_a_worker_behind_a_frozen_network_stops_within_its_bound(
    server_url: str, tmp_path: Path, twin: str
) -> None:
    report = frozen_network(server_url, tmp_path, grace=2.0, twin=twin)
    assert_nothing_lost(report)
    details = report.details
    # the first signal: the grace period, the stop bound, then the process's own exit
    # (closing its pool and event loop, bounded too): the README promises grace + 10 s
    assert details["stop_seconds"] is not None, report
    assert details["stop_seconds"] < details["grace"] + STOP_BOUND + 5, report
    # the second signal: at once
    assert details["exit_seconds"] is not None and details["exit_seconds"] < 2, report
    assert details["exits"] == [0, 128 + signal.SIGINT], report
    assert details["rescued"] == 4, report
    assert report.reexecutions == 4, report  # each task ran on a stopped worker, then again


def test_lease_decisions_use_the_database_clock(server_url: str, tmp_path: Path) -> None:
    report = skewed_clocks(server_url, tmp_path, tasks=200)
    assert_nothing_lost(report)
    # the workers' clocks really were an hour ahead and an hour behind the database's
    behind, ahead = report.details["clock_offsets"]
    assert behind < -3500 and ahead > 3500, report
    # nobody stole a live lease, and no lease was stretched by a worker's clock
    assert report.reexecutions == 0, report
    assert report.details["rescued"] == 0, report
    assert 0 < report.details["longest_lease"] <= 2.5, report


@twins
@pytest.mark.parametrize("kind", ["payload", "result"])
def test_poison_documents_fail_alone_and_harm_no_innocent_task(
    server_url: str, tmp_path: Path, twin: str, kind: str
) -> None:
    report = poison_documents(server_url, tmp_path, kind=kind, tasks=100, poison=5, twin=twin)
    assert_nothing_lost(report)
    assert report.details["harmed"] == 0, report
    assert report.details["failed_at_once"] == 5, report
    assert set(report.details["exits"]) == {0}, report
