"""What a worker logs and stores of errors: a handler's message once and bounded, and
never the parameters of a statement (payloads, results, lease tokens)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from worker_harness import completions_refused, enqueue, fetch

from sqlalchemy_taskqueue import TaskContext, TaskRepository, TaskStatus
from sqlalchemy_taskqueue._validation import MAX_ERROR_MESSAGE_LENGTH

Factory = sessionmaker[Session]
MakeWorker = Any


def test_a_huge_error_message_is_stored_bounded_and_logged_once(
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(task: Any, ctx: TaskContext) -> None:
        raise ValueError("head " + "x" * 10_000_000 + " tail")

    task_id = enqueue(session_factory, clean_table, "job", max_retries=0)
    with caplog.at_level(logging.INFO, logger="sqlalchemy_taskqueue"):
        make_worker(session_factory, clean_table, {"job": explode}).run(until_empty=True)
    task = fetch(session_factory, clean_table, task_id)
    assert task.status is TaskStatus.FAILED
    assert len(task.error_message) <= MAX_ERROR_MESSAGE_LENGTH
    assert task.error_message.startswith("ValueError: head xxx")
    assert task.error_message.endswith("xxx tail")
    assert "characters left out" in task.error_message
    mentions = [r for r in caplog.records if "ValueError: head" in r.getMessage()]
    assert len(mentions) == 1  # the outcome's line, with the traceback
    assert "in explode" in mentions[0].getMessage()
    assert sum(len(r.getMessage()) for r in caplog.records) < 3 * MAX_ERROR_MESSAGE_LENGTH


def test_fail_task_stores_a_bounded_message(session: Session, clean_table: type[Any]) -> None:
    repo = TaskRepository(session, clean_table)
    repo.enqueue("job", {}, max_retries=0)
    session.commit()
    task = repo.dequeue("job")
    assert task is not None
    repo.fail_task(task.id, "RuntimeError: " + "y" * 100_000)
    session.commit()
    stored = repo.get_task(task.id)
    assert stored is not None and len(stored.error_message or "") <= MAX_ERROR_MESSAGE_LENGTH


def test_database_errors_are_logged_without_statement_parameters(
    make_worker: MakeWorker,
    session_factory: Factory,
    clean_table: type[Any],
    engine: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A completion the database refuses is logged with its SQL but not with the
    results, ids and lease tokens it was sent with."""
    enqueue(session_factory, clean_table, "job", {"refuse": True})
    with completions_refused(engine, clean_table, "storage quota exceeded"):
        worker = make_worker(
            session_factory, clean_table, {"job": lambda task, ctx: {"api_key": "s3cr3t-42"}}
        )
        with caplog.at_level(logging.INFO, logger="sqlalchemy_taskqueue"):
            worker.run(until_empty=True)
    logged = caplog.text
    assert "storage quota exceeded" in logged  # the error is there ...
    assert "s3cr3t-42" not in logged and "[parameters:" not in logged  # ... its values not
    assert "SQL parameters hidden" in logged
