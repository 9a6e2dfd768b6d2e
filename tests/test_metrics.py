"""Prometheus metrics, scraped over HTTP."""

from __future__ import annotations

import urllib.request
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskRepository, Worker
from sqlalchemy_taskqueue.metrics import serve_worker_metrics


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

    server = serve_worker_metrics(0, session_factory, clean_table, addr="127.0.0.1")
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
    from sqlalchemy_taskqueue.cli.loading import model_for_table

    server = serve_worker_metrics(
        0, session_factory, model_for_table("no_such_queue"), addr="127.0.0.1"
    )
    try:
        assert scrape(server.port)[("taskqueue_up", ())] == 0
    finally:
        server.stop()
