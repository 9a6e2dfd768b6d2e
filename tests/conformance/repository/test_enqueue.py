"""Enqueueing: ``enqueue`` and ``enqueue_many`` write pending tasks in the caller's
transaction (the repository never commits), with the library's defaults or the given
options and the app's own columns; a payload is stored as the JSON value itself, and
bad input (a payload that is not JSON, a bad option or task type) is refused before
anything is written."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from backends import database_now
from repository_harness import Repo, claim, repository_on_own_table, row_count
from sqlalchemy import Engine, Integer, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from twins import make_repository

from sqlalchemy_taskqueue import TaskMixin, TaskStatus


def test_enqueue_inserts_a_pending_task_with_defaults(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("data_export", {"project_id": "p1", "user_id": "u1"})
    session.commit()
    task = repo.get_task(task_id)
    assert task is not None
    assert task.type == "data_export"
    assert task.payload == {"project_id": "p1", "user_id": "u1"}
    assert task.status is TaskStatus.PENDING
    assert (task.progress, task.priority, task.retry_count, task.max_retries) == (0, 0, 0, 3)
    assert task.created_at.tzinfo is not None and task.run_at.tzinfo is not None
    assert task.started_at is None and task.completed_at is None and task.result is None


def test_enqueue_is_part_of_the_callers_transaction(repo: Repo, session: Session) -> None:
    repo.enqueue("data_export", {})
    session.rollback()
    assert row_count(session, repo.model) == 0
    repo.enqueue("data_export", {})
    session.commit()
    assert row_count(session, repo.model) == 1


def test_repository_never_commits(
    repo: Repo, session: Session, session_factory: sessionmaker[Session]
) -> None:
    repo.enqueue("a", {})
    with session_factory() as other:
        assert row_count(other, repo.model) == 0  # not visible until the caller commits


def test_enqueue_accepts_options_and_strenum_types(repo: Repo, session: Session) -> None:
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    task_id = repo.enqueue(
        TaskStatus.PENDING, [1, "two"], max_retries=0, priority=-5, run_at=when, timeout_seconds=9
    )
    session.commit()
    task = repo.get_task(task_id)
    assert task is not None
    assert (task.type, task.payload, task.max_retries, task.priority) == (
        "pending",
        [1, "two"],
        0,
        -5,
    )
    assert task.run_at == when
    assert task.timeout_seconds == 9


class LegacyTaskType(str, enum.Enum):
    """A task type enum in the pre-``StrEnum`` style (``str()`` gives the member name)."""

    EXPORT = "legacy_export"


def test_str_enum_task_types_are_stored_as_their_value(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue(LegacyTaskType.EXPORT, {}, max_retries=0)
    session.commit()
    task = repo.get_task(task_id)
    assert task is not None and task.type == "legacy_export" == LegacyTaskType.EXPORT
    claimed = claim(repo, "legacy_export")
    assert claimed.id == task_id
    repo.fail_task(task_id, "boom", lease_token=claimed.lease_token)
    session.commit()
    assert repo.retry_failed_tasks(LegacyTaskType.EXPORT) == 1


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"when": datetime.now(timezone.utc)}, TypeError),
        ({"amount": Decimal("1.5")}, TypeError),
        ({1, 2}, TypeError),
        (None, TypeError),
        ({"x": float("nan")}, TypeError),
        ({"x": [float("inf")]}, TypeError),
        ({"x": -float("inf")}, TypeError),
        ({"nul\x00key": 1}, ValueError),
        ({"x": "nul\x00byte"}, ValueError),
        ({"x": "lone \ud800 surrogate"}, ValueError),
    ],
)
def test_enqueue_rejects_payloads_that_are_not_json(
    repo: Repo, session: Session, payload: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="payload"):
        repo.enqueue("a", payload)
    assert row_count(session, repo.model) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": True}, ValueError, "max_retries"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
        ({"max_retries": 10**6}, ValueError, "max_retries must be <= 1000"),
        ({"priority": "high"}, TypeError, "priority"),
        ({"priority": 2**31}, ValueError, "priority"),
        ({"run_at": datetime(2030, 1, 1)}, ValueError, "timezone-aware"),
        ({"run_at": datetime(2001, 1, 1, tzinfo=timezone.utc)}, ValueError, "in the past"),
        ({"run_at": datetime(9999, 1, 1, tzinfo=timezone.utc)}, ValueError, "ahead"),
        ({"run_at": "tomorrow"}, TypeError, "run_at"),
        ({"run_at": timedelta(seconds=-1)}, ValueError, "run_at"),
        ({"timeout_seconds": 0}, ValueError, "timeout_seconds"),
        ({"run_at": timedelta(days=10**6)}, ValueError, "at most"),
        ({"status": "completed"}, TypeError, "status"),
        ({"no_such_column": 1}, TypeError, "no_such_column"),
    ],
)
def test_enqueue_rejects_bad_options_and_writes_nothing(
    repo: Repo, session: Session, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        repo.enqueue("a", {}, **kwargs)
    assert row_count(session, repo.model) == 0


@pytest.mark.parametrize(
    ("task_type", "error"),
    [
        ("", ValueError),
        ("  ", ValueError),
        (5, TypeError),
        (None, TypeError),
        ("x" * 256, ValueError),
        ("nul\x00type", ValueError),
        ("lone \ud800", ValueError),
    ],
)
def test_enqueue_rejects_bad_task_types(
    repo: Repo, session: Session, task_type: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="task_type"):
        repo.enqueue(task_type, {})
    assert row_count(session, repo.model) == 0


class BudgetBase(DeclarativeBase):
    pass


class BudgetTask(TaskMixin, BudgetBase):
    """An app model with an integer column of its own that has a constant default."""

    __tablename__ = "tasks_with_budget_column"

    budget: Mapped[int] = mapped_column(Integer, default=7)


@pytest.fixture
def budget_repo(session: Session, engine: Engine) -> Iterator[Repo]:
    yield from repository_on_own_table(session, engine, BudgetTask)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, (3, 0, 7)),
        ({"max_retries": 3, "priority": 0, "budget": 7}, (3, 0, 7)),
        ({"max_retries": 4, "priority": 1, "budget": 8}, (4, 1, 8)),
        ({"max_retries": 0, "priority": -1, "budget": 0}, (0, -1, 0)),
    ],
)
def test_enqueue_writes_defaults_and_given_values_alike(
    budget_repo: Repo, session: Session, options: dict[str, Any], expected: tuple[int, ...]
) -> None:
    task_id = budget_repo.enqueue("a", {}, **options)
    session.commit()
    task = budget_repo.get_task(task_id)
    assert task is not None
    assert (task.max_retries, task.priority, task.budget) == expected
    assert (task.status, task.progress, task.retry_count) == (TaskStatus.PENDING, 0, 0)


@pytest.mark.parametrize("payload", ["plain text", '{"a": 1}', "", 0, 1.5, True, [], ["é", "😀"]])
def test_enqueue_stores_the_payload_value_itself(
    repo: Repo, session: Session, payload: Any
) -> None:
    task_id = repo.enqueue("a", payload)
    session.commit()
    task = repo.get_task(task_id)
    assert task is not None
    assert task.payload == payload and type(task.payload) is type(payload)


def test_a_backslash_before_u0000_is_not_a_nul(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {"path": "C:\\u0000dir"})
    session.commit()
    assert repo.get_task(task_id).payload == {"path": "C:\\u0000dir"}  # type: ignore[union-attr]


def test_enqueue_with_a_delay_uses_the_database_clock(repo: Repo, session: Session) -> None:
    before = database_now(session)  # PostgreSQL: the transaction's time, as the insert's
    task_id = repo.enqueue("a", {}, run_at=timedelta(minutes=10))
    task = repo.get_task(task_id)
    after = database_now(session)
    assert task is not None
    assert before <= task.run_at - timedelta(minutes=10) <= after


def test_enqueue_many_inserts_in_order_in_one_statement(repo: Repo, session: Session) -> None:
    payloads = [{"n": n} for n in range(250)]
    ids = repo.enqueue_many("bulk", payloads, priority=3)
    session.commit()
    assert len(ids) == 250 and ids == sorted(ids)
    rows = session.execute(
        select(repo.model.id, repo.model.payload, repo.model.priority).order_by(repo.model.id)
    ).all()
    assert [(row.id, row.payload, row.priority) for row in rows] == [
        (task_id, payload, 3) for task_id, payload in zip(ids, payloads, strict=True)
    ]
    assert repo.enqueue_many("bulk", []) == []


def test_enqueue_many_validates_every_payload_before_writing(repo: Repo, session: Session) -> None:
    with pytest.raises(TypeError, match="payload"):
        repo.enqueue_many("bulk", [{"ok": 1}, {"bad": object()}])
    with pytest.raises(TypeError, match="iterable"):
        repo.enqueue_many("bulk", {"not": "a list"})
    assert row_count(session, repo.model) == 0


def test_enqueue_many_round_trips_every_kind_of_json_value(repo: Repo, session: Session) -> None:
    payloads: list[Any] = [
        {"text": "a, b], [c", "emoji": "😀", "quote": '"'},
        [1, [2, [3]]],
        "just a string",
        0,
        -1.5,
        True,
        {"nested": {"null": None, "list": []}},
    ]
    ids = repo.enqueue_many("a", payloads)
    session.commit()
    assert [repo.get_task(task_id).payload for task_id in ids] == payloads  # type: ignore[union-attr]


def test_enqueue_many_calls_python_column_defaults_once_per_row(
    session: Session, engine: Engine
) -> None:
    import uuid as uuid_module

    from conftest import declare_task_model
    from sqlalchemy.orm import mapped_column

    model = declare_task_model(
        "tasks_row_defaults",
        ref=mapped_column(Text, default=lambda: uuid_module.uuid4().hex, unique=True),
    )
    model.metadata.create_all(engine)
    try:
        ids = make_repository(session, model).enqueue_many("a", [{"n": n} for n in range(3)])
        session.commit()
        rows = session.execute(select(model.id, model.payload, model.ref).order_by(model.id)).all()
        assert [row.id for row in rows] == ids
        assert [row.payload for row in rows] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert len({row.ref for row in rows}) == 3
    finally:
        session.rollback()
        model.metadata.drop_all(engine)
