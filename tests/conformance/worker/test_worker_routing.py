"""Which tasks a worker claims and which handler runs them: only tasks of its types
(a ``str`` enum member stands for its value, in handlers, timeouts and claims), and a
task of a type it has no handler for fails, saying so."""

from __future__ import annotations

import enum
import logging
from typing import Any

import pytest
from worker_harness import Factory, MakeWorker, enqueue, fetch

from sqlalchemy_taskqueue import TaskStatus


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
