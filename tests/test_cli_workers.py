"""``taskqueue workers``, and what ``taskqueue stats`` says of types no worker claims."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskRepository
from sqlalchemy_taskqueue._registry import workers_table


def register(factory: sessionmaker[Session], model: type[Any], *types: str) -> None:
    """A worker's registration, as a running worker writes it."""
    with factory.begin() as session:
        TaskRepository(session, model)._record_worker(
            {
                "worker_id": "web-1:4242:9f3c1a2b",
                "host": "web-1",
                "pid": 4242,
                "task_types": list(types),
                "slots": 8,
                "version": "1.2.3",
            },
            timedelta(minutes=5),
        )


def test_workers_lists_the_registered_workers(
    run: Any, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    code, output = run("workers")
    assert code == 0 and output.startswith("Workers: none\nno worker has registered")
    register(session_factory, clean_table, "export", "import")
    code, output = run("workers")
    assert code == 0 and "web-1:4242:9f3c1a2b" in output and "export, import" in output
    code, output = run("workers", "--json")
    [worker] = json.loads(output)
    assert {key: worker[key] for key in ("host", "pid", "task_types", "slots", "version")} == {
        "host": "web-1",
        "pid": 4242,
        "task_types": ["export", "import"],
        "slots": 8,
        "version": "1.2.3",
    }


def test_stats_mark_pending_types_no_live_worker_claims(
    run: Any, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    with session_factory.begin() as session:
        repo = TaskRepository(session, clean_table)
        repo.enqueue("export", {})
        repo.enqueue("report", {})
    register(session_factory, clean_table, "export")
    code, output = run("stats")
    assert code == 0, output
    assert "report (no worker)" in output and "export (no worker)" not in output
    code, output = run("stats", "--json")
    assert json.loads(output)["unhandled_types"] == ["report"]


def test_a_queue_without_the_registry_is_told_how_to_upgrade(
    run: Any, engine: Engine, clean_table: type[Any]
) -> None:
    table = workers_table(clean_table.__table__)
    table.drop(engine)
    try:
        code, output = run("workers")
        assert code == 1 and "upgrade_task_table_v3_to_v4" in output, output
    finally:
        table.create(engine)
