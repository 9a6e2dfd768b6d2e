"""Prometheus metrics, scraped over HTTP."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskRepository, Worker
from sqlalchemy_taskqueue.cli import cli
from sqlalchemy_taskqueue.contrib.prometheus import QueueCollector, serve_worker_metrics


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_worker_and_queue_metrics_are_served(
    session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    with session_factory() as session:
        repo = TaskRepository(session, clean_table)
        repo.enqueue_many("ok", [{}, {}, {}])
        repo.enqueue("bad", {}, max_retries=0)
        repo.enqueue("bad", {}, max_retries=1)
        repo.enqueue("later", {}, run_at=timedelta(hours=1))
        session.commit()

    def bad(task: Any, ctx: Any) -> None:
        raise RuntimeError("nope")

    # read at each scrape: the second must see what the worker did
    server = serve_worker_metrics(0, session_factory, clean_table, cache_for=0)
    try:
        before = scrape(server.port)
        assert before[("taskqueue_queue_ready", (("type", "ok"),))] == 3
        assert before[("taskqueue_queue_scheduled", (("type", "later"),))] == 1
        assert before[("taskqueue_up", ())] == 1
        worker = Worker(
            session_factory,
            clean_table,
            {"ok": lambda task, ctx: None, "bad": bad},
            poll_interval=0.05,
            on_event=server.metrics.on_event,
        )
        worker.run(until_empty=True)
        after = scrape(server.port)
    finally:
        server.stop()
    assert after[("taskqueue_tasks_completed_total", (("type", "ok"),))] == 3
    assert after[("taskqueue_tasks_failed_total", (("type", "bad"),))] == 1
    assert after[("taskqueue_tasks_retried_total", (("type", "bad"),))] == 1
    assert (
        after[("taskqueue_task_duration_seconds_count", (("outcome", "completed"), ("type", "ok")))]
        == 3
    )
    assert after[("taskqueue_tasks", (("status", "completed"), ("type", "ok")))] == 3
    assert after[("taskqueue_tasks", (("status", "pending"), ("type", "later")))] == 1
    assert after[("taskqueue_oldest_ready_seconds", (("type", "bad"),))] == pytest.approx(0, abs=60)


def test_a_scrape_survives_a_missing_table(session_factory: sessionmaker[Session]) -> None:
    from sqlalchemy_taskqueue.cli._loading import model_for_table

    server = serve_worker_metrics(
        0, session_factory, model_for_table("no_such_queue"), addr="127.0.0.1"
    )
    try:
        assert scrape(server.port)[("taskqueue_up", ())] == 0
    finally:
        server.stop()


def test_the_endpoint_listens_on_the_loopback_interface_by_default(
    session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    server = serve_worker_metrics(0, session_factory, clean_table)
    try:
        assert server.host == "127.0.0.1"
        assert scrape(server.port)[("taskqueue_up", ())] == 1
    finally:
        server.stop()


@contextmanager
def queue_readings(engine: Engine, model: type[Any]) -> Iterator[list[str]]:
    """The statements that read ``model``'s table (appended to while the block runs)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if f"FROM {model.__tablename__}" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_scrapes_share_one_reading_per_cache_interval(
    session_factory: sessionmaker[Session], clean_table: type[Any], engine: Engine
) -> None:
    """Anyone who can reach the endpoint made the database count the whole table at
    every scrape (20 scrapes of a 300k-row table: 4.8 s, 124 sequential scans)."""
    with session_factory() as session:
        TaskRepository(session, clean_table).enqueue("job", {})
        session.commit()
    server = serve_worker_metrics(0, session_factory, clean_table, cache_for=3600)
    try:
        with queue_readings(engine, clean_table) as statements:
            # scrapes at once wait for the one reading in progress ...
            with ThreadPoolExecutor(8) as pool:
                first = list(pool.map(scrape, [server.port] * 8))
            with session_factory() as session:
                TaskRepository(session, clean_table).enqueue("job", {})
                session.commit()
            # ... and scrapes within the interval are served from it
            later = [scrape(server.port) for _ in range(12)]
        assert len(statements) == 2  # status counts and queue depth, once
        ready = ("taskqueue_queue_ready", (("type", "job"),))
        assert {sample[ready] for sample in first + later} == {1}
    finally:
        server.stop()


def test_without_a_cache_every_scrape_reads_the_queue(
    session_factory: sessionmaker[Session], clean_table: type[Any], engine: Engine
) -> None:
    server = serve_worker_metrics(0, session_factory, clean_table, cache_for=0)
    ready = ("taskqueue_queue_ready", (("type", "job"),))
    try:
        with queue_readings(engine, clean_table) as statements:
            for expected in (1, 2):
                with session_factory() as session:
                    TaskRepository(session, clean_table).enqueue("job", {})
                    session.commit()
                assert scrape(server.port)[ready] == expected
        assert len(statements) == 4
    finally:
        server.stop()


def test_a_failed_reading_is_cached_too(
    session_factory: sessionmaker[Session], engine: Engine
) -> None:
    from sqlalchemy_taskqueue.cli._loading import model_for_table

    model = model_for_table("no_such_queue")
    server = serve_worker_metrics(0, session_factory, model, cache_for=3600)
    try:
        with queue_readings(engine, model) as statements:
            assert [scrape(server.port)[("taskqueue_up", ())] for _ in range(3)] == [0, 0, 0]
        assert len(statements) == 1
    finally:
        server.stop()


def test_a_bad_cache_interval_is_refused(
    session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    with pytest.raises(ValueError, match="cache_for must be >= 0 seconds"):
        QueueCollector(session_factory, clean_table, cache_for=-1)


def test_the_worker_command_serves_metrics_on_the_host_it_is_given(
    database_url: str, caplog: pytest.LogCaptureFixture, engine: Engine
) -> None:
    from queue_app import Base

    Base.metadata.create_all(engine)
    try:
        for options, host in (([], "127.0.0.1"), (["--metrics-host", "localhost"], "localhost")):
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="sqlalchemy_taskqueue.metrics"):
                result = CliRunner().invoke(
                    cli,
                    ["worker", "queue_app:tasks", "--until-empty", "--metrics-port", "0", *options],
                    env={"TASKQUEUE_DATABASE_URL": database_url},
                    catch_exceptions=False,
                )
            assert result.exit_code == 0, result.output
            assert f"metrics.serving addr={host} port=" in caplog.text
    finally:
        Base.metadata.drop_all(engine)


def test_a_metrics_host_that_cannot_be_bound_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        cli,
        ["worker", "queue_app:tasks", "--metrics-port", "0", "--metrics-host", "192.0.2.1"],
        env={"TASKQUEUE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    assert "cannot serve metrics on host '192.0.2.1' port 0" in result.output


def test_the_metrics_options_are_documented() -> None:
    result = CliRunner().invoke(cli, ["worker", "--help"])
    assert "--metrics-host" in result.output and "[default: 127.0.0.1]" in result.output
    assert "--metrics-cache" in result.output
