"""TaskRepository against real PostgreSQL: every operation and every error."""

from __future__ import annotations

import enum
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from plans import plan_on
from sqlalchemy import Engine, Integer, Text, event, func, select, text
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)
from twins import TWINS, async_session_for, make_repository, release

from sqlalchemy_taskqueue import (
    AsyncTaskRepository,
    BackoffPolicy,
    InvalidTransitionError,
    LeaseLostError,
    TaskMixin,
    TaskNotFoundError,
    TaskQueueError,
    TaskRepository,
    TaskStatus,
    statements,
)
from sqlalchemy_taskqueue.repository import claim_statement_and_params
from sqlalchemy_taskqueue.testing import task_factory

Repo = TaskRepository[Any]


@pytest.fixture(params=TWINS)
def session(
    request: pytest.FixtureRequest, session_factory: sessionmaker[Session], database_url: str
) -> Iterator[Session]:
    """A session, or (``async``) the sync face of an ``AsyncSession`` over asyncpg, with
    the test body run in the greenlet bridge: every test runs against both twins."""
    if request.param == "sync":
        with session_factory() as session:
            yield session
        return
    with async_session_for(request.node, database_url) as async_session:
        yield async_session.sync_session


@pytest.fixture
def repo(session: Session, clean_table: type[Any]) -> Any:
    return make_repository(session, clean_table)


class ProjectBase(DeclarativeBase):
    pass


class ProjectTask(TaskMixin, ProjectBase):
    """An app model with a column that shares its name with a payload key."""

    __tablename__ = "tasks_with_project_column"

    project_id: Mapped[str | None] = mapped_column(Text)


class BudgetBase(DeclarativeBase):
    pass


class BudgetTask(TaskMixin, BudgetBase):
    """An app model with an integer column of its own that has a constant default."""

    __tablename__ = "tasks_with_budget_column"

    budget: Mapped[int] = mapped_column(Integer, default=7)


def repository_on_own_table(session: Session, engine: Engine, model: Any) -> Iterator[Repo]:
    """A repository for ``model``, whose table exists only for the test."""
    model.metadata.create_all(engine)
    try:
        yield make_repository(session, model)
    finally:
        release(session)
        model.metadata.drop_all(engine)


@pytest.fixture
def budget_repo(session: Session, engine: Engine) -> Iterator[Repo]:
    yield from repository_on_own_table(session, engine, BudgetTask)


@pytest.fixture
def project_repo(session: Session, engine: Engine) -> Iterator[Repo]:
    yield from repository_on_own_table(session, engine, ProjectTask)


def row_count(session: Session, model: type[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def db_now(session: Session) -> datetime:
    return session.scalar(select(func.clock_timestamp()))  # type: ignore[return-value]


def claim(repo: Repo, task_type: str | None = None) -> Any:
    task = repo.dequeue(task_type)
    repo.session.commit()
    assert task is not None
    return task


# ---------------------------------------------------------------- enqueue


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


def test_enqueue_with_a_delay_uses_the_database_clock(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {}, run_at=timedelta(minutes=10))
    task = repo.get_task(task_id)
    assert task is not None
    start = session.scalar(select(func.now()))
    assert task.run_at - start == timedelta(minutes=10)


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


# ---------------------------------------------------------------- enqueue_if_not_exists


def test_enqueue_if_not_exists_returns_the_active_task(repo: Repo, session: Session) -> None:
    first, created = repo.enqueue_if_not_exists("import", {"file": "a.csv", "project": 1})
    assert created
    # same payload, other key order: same canonical JSON, same task
    again, created_again = repo.enqueue_if_not_exists("import", {"project": 1, "file": "a.csv"})
    assert (again, created_again) == (first, False)
    other, other_created = repo.enqueue_if_not_exists("import", {"file": "b.csv", "project": 1})
    assert other_created and other != first
    # the same payload under another type is another task
    _, created_other_type = repo.enqueue_if_not_exists("export", {"file": "a.csv", "project": 1})
    assert created_other_type
    session.commit()
    assert row_count(session, repo.model) == 3


def test_enqueue_if_not_exists_allows_a_new_task_once_the_old_one_finished(
    repo: Repo, session: Session
) -> None:
    first, _ = repo.enqueue_if_not_exists("import", {"file": "a.csv"})
    session.commit()
    task = claim(repo, "import")
    assert task.id == first
    again, created = repo.enqueue_if_not_exists("import", {"file": "a.csv"})
    assert (again, created) == (first, False)  # in progress still counts as active
    repo.complete_task(first, lease_token=task.lease_token)
    new_id, created = repo.enqueue_if_not_exists("import", {"file": "a.csv"})
    assert created and new_id != first


def test_enqueue_if_not_exists_keys_payloads_by_their_stored_json(
    repo: Repo, session: Session
) -> None:
    # keys that are not strings are stored as strings (what enqueue() accepts) ...
    first, created = repo.enqueue_if_not_exists("import", {1: "a", "b": 2})
    assert created
    # ... so the payload with those keys as strings is the same task
    assert repo.enqueue_if_not_exists("import", {"1": "a", "b": 2}) == (first, False)
    second, _ = repo.enqueue_if_not_exists("import", {2: "x", 10: "y"})
    assert repo.enqueue_if_not_exists("import", {"10": "y", "2": "x"}) == (second, False)
    session.commit()
    assert row_count(session, repo.model) == 2


def test_enqueue_if_not_exists_with_an_explicit_key(repo: Repo, session: Session) -> None:
    first, _ = repo.enqueue_if_not_exists("report", {"v": 1}, dedupe_key="report:7")
    second, created = repo.enqueue_if_not_exists("report", {"v": 2}, dedupe_key="report:7")
    assert (second, created) == (first, False)
    task = repo.get_task(first)
    assert task is not None and task.dedupe_key == "report:7"
    with pytest.raises(ValueError, match="dedupe_key"):
        repo.enqueue_if_not_exists("report", {}, dedupe_key="")
    with pytest.raises(TypeError, match="payload"):
        repo.enqueue_if_not_exists("report", {"x": object()})
    session.commit()
    assert row_count(session, repo.model) == 1


# ---------------------------------------------------------------- dequeue


def test_dequeue_claims_and_stamps_the_lease(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {"k": "v"})
    session.commit()
    task = repo.dequeue("a")
    session.commit()
    session.close()
    # still readable after commit and close, despite expire_on_commit=True
    assert task is not None
    assert (task.id, task.payload, task.status) == (task_id, {"k": "v"}, TaskStatus.IN_PROGRESS)
    assert task.started_at is not None and task.lease_expires_at is not None
    assert isinstance(task.lease_token, uuid.UUID)
    assert task.lease_owner == repo.owner
    assert task.lease_expires_at - task.started_at == timedelta(minutes=5)
    stored = repo.get_task(task_id)
    assert stored is not None and stored.status is TaskStatus.IN_PROGRESS
    assert repo.dequeue("a") is None


def test_dequeue_filters_by_one_several_or_any_type(repo: Repo, session: Session) -> None:
    ids = {name: repo.enqueue(name, {}) for name in ("a", "b", "c")}
    session.commit()
    assert repo.dequeue("zzz") is None
    assert claim(repo, "b").id == ids["b"]
    assert {claim(repo, ["a", "c"]).id for _ in range(2)} == {ids["a"], ids["c"]}
    repo.enqueue("d", {})
    session.commit()
    assert claim(repo).type == "d"
    with pytest.raises(ValueError, match="at least one"):
        repo.dequeue([])
    with pytest.raises(TypeError, match="task_type"):
        repo.dequeue([1])  # type: ignore[list-item]
    for not_types in (5, 2.5, object()):
        with pytest.raises(TypeError, match="task_type must be a type name, a sequence"):
            repo.dequeue(not_types)  # type: ignore[arg-type]


def test_dequeue_orders_by_priority_then_age(repo: Repo, session: Session) -> None:
    low = repo.enqueue("a", {"n": "low"}, priority=10)
    old = repo.enqueue("a", {"n": "old"})
    new = repo.enqueue("a", {"n": "new"})
    urgent = repo.enqueue("a", {"n": "urgent"}, priority=-1)
    session.commit()
    assert [claim(repo).id for _ in range(4)] == [urgent, old, new, low]


def test_future_run_at_is_not_claimable_until_due(repo: Repo, session: Session) -> None:
    later = repo.enqueue("a", {}, run_at=datetime.now(timezone.utc) + timedelta(hours=1))
    session.commit()
    assert repo.dequeue("a") is None
    session.execute(
        text(f"UPDATE {repo.model.__tablename__} SET run_at = now() - interval '1 second'")
    )
    session.commit()
    assert claim(repo, "a").id == later


def test_dequeue_many_claims_a_batch_in_order(repo: Repo, session: Session) -> None:
    ids = repo.enqueue_many("a", [{"n": n} for n in range(10)])
    session.commit()
    batch = repo.dequeue_many("a", limit=4)
    session.commit()
    assert [task.id for task in batch] == ids[:4]
    assert len({task.lease_token for task in batch}) == 1
    assert [task.id for task in repo.dequeue_many(limit=100)] == ids[4:]
    with pytest.raises(ValueError, match="limit"):
        repo.dequeue_many("a", limit=0)
    with pytest.raises(TypeError, match="lease_duration"):
        repo.dequeue_many("a", limit=1, lease_duration="30s")  # type: ignore[arg-type]


def _claim_of(table: Any) -> tuple[Any, dict[str, Any]]:
    return claim_statement_and_params(
        table, None, 400, timedelta(seconds=30), "w", relaxed_commit=False
    )


def _prefetching_claim_of(table: Any) -> tuple[Any, dict[str, Any]]:
    """A worker's claim: 4 of the 400 go to free slots, the rest are prefetched."""
    return claim_statement_and_params(
        table, None, 400, timedelta(seconds=30), "w", relaxed_commit=True, starting=4
    )


# statement, and the rows it picks (a SET clause for them)
PICKING_STATEMENTS = {
    "claim": (_claim_of, "status = 'pending'"),
    "prefetching claim": (_prefetching_claim_of, "status = 'pending'"),
    "rescue": (
        lambda table: (statements.rescue_statement(table, limit=400), {}),
        "status = 'in_progress', lease_token = gen_random_uuid(), "
        "lease_expires_at = now() - interval '1 hour'",
    ),
    "cleanup": (
        lambda table: (
            statements.purge_statement(table, older_than=timedelta(days=7), batch_size=400),
            {},
        ),
        "status = 'completed', completed_at = now() - interval '30 days'",
    ),
}


@pytest.mark.parametrize("name", PICKING_STATEMENTS)
def test_batch_statements_read_only_the_rows_they_pick(
    clean_table: type[Any], engine: Engine, name: str
) -> None:
    """30,000 rows, a third of them what the statement picks, and a batch of 400: the
    claim, the lease rescue and a cleanup batch fetch what they picked through the
    primary key.  Joined to a CTE, or with ``id IN (...)``, the planner hash-joined a
    sequential scan of the whole table here: every claim and every cleanup batch read
    the entire table, and cleaning up a large backlog took quadratic time."""
    build, picked = PICKING_STATEMENTS[name]
    table = clean_table.__tablename__
    stmt, params = build(clean_table.__table__)
    plan = plan_on(
        engine,
        stmt,
        params,
        table,
        f"INSERT INTO {table} (type, payload) SELECT 'a', '{{}}' FROM generate_series(1, 30000)",
        f"UPDATE {table} SET {picked} WHERE id > 20000",
    )
    assert "Hash" not in plan, plan
    assert f"Index Scan using {table}_pkey on {table} " in plan, plan
    assert "Index Cond: (id = ANY ($" in plan, plan


def test_limits_beyond_the_databases_integers_are_refused_before_sending(
    repo: Repo, session: Session
) -> None:
    task_id = repo.enqueue("a", {})
    with pytest.raises(ValueError, match="limit"):
        repo.dequeue_many(limit=2**31)
    with pytest.raises(ValueError, match="limit"):
        repo.rescue_expired_leases(limit=2**63)
    with pytest.raises(ValueError, match="batch_size"):
        repo.cleanup_old_tasks(timedelta(days=1), batch_size=2**63)
    session.commit()  # the caller's transaction was not aborted: the task is kept
    assert repo.get_task(task_id) is not None
    assert [task.id for task in repo.dequeue_many(limit=2**31 - 1)] == [task_id]


def test_lease_durations_may_be_seconds(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {})
    session.commit()
    task = repo.dequeue("a", lease_duration=90)
    session.commit()
    assert task is not None and task.lease_expires_at - task.started_at == timedelta(seconds=90)


def test_dequeue_refreshes_a_copy_already_in_the_session(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    loaded = repo.get_task(task_id)
    assert loaded is not None and loaded.status is TaskStatus.PENDING
    claimed = claim(repo)
    assert claimed.id == task_id and claimed.status is TaskStatus.IN_PROGRESS


# ---------------------------------------------------------------- progress


def test_update_progress(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {})
    repo.update_progress(task_id, 10)  # allowed while pending (operator use)
    session.commit()
    task = claim(repo)
    repo.update_progress(task_id, 45, lease_token=task.lease_token)
    session.commit()
    stored = repo.get_task(task_id)
    assert stored is not None and stored.progress == 45


@pytest.mark.parametrize(
    ("progress", "error"),
    [(-1, ValueError), (101, ValueError), (True, ValueError), (5.0, TypeError)],
)
def test_update_progress_rejects_bad_values(
    repo: Repo, session: Session, progress: Any, error: type[Exception]
) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    with pytest.raises(error, match="progress"):
        repo.update_progress(task_id, progress)
    stored = repo.get_task(task_id)
    assert stored is not None and stored.progress == 0


def test_update_progress_on_a_finished_task_is_an_illegal_transition(
    repo: Repo, session: Session
) -> None:
    repo.enqueue("a", {})
    session.commit()
    task = claim(repo)
    repo.complete_task(task.id)
    with pytest.raises(InvalidTransitionError, match="completed") as caught:
        repo.update_progress(task.id, 50)
    assert isinstance(caught.value, TaskQueueError) and isinstance(caught.value, ValueError)
    stored = repo.get_task(task.id)
    assert stored is not None and stored.progress == 100


def test_unknown_ids_raise_task_not_found(repo: Repo) -> None:
    for call in (
        lambda: repo.update_progress(999, 5),
        lambda: repo.complete_task(999),
        lambda: repo.fail_task(999, "x"),
        lambda: repo.cancel_task(999),
        lambda: repo.retry_task(999),
    ):
        with pytest.raises(TaskNotFoundError, match="999") as caught:
            call()
        assert isinstance(caught.value, LookupError) and caught.value.task_id == 999
    assert repo.get_task(999) is None


def test_an_os_error_of_the_application_is_not_reported_as_the_databases(
    repo: Repo, session: Session, tmp_path: Path
) -> None:
    """An ``OSError`` raised by the application's own code inside a repository call
    (here a session hook reading a file that is missing) leaves as itself: only one raised
    while a connection is opened (asyncpg's refused connection) is the database's."""

    def read_tenant(*_args: Any) -> None:
        (tmp_path / "tenant.conf").read_text()

    event.listen(session, "after_begin", read_tenant)
    with pytest.raises(FileNotFoundError):
        repo.enqueue("x", {})


@pytest.mark.parametrize("task_id", [0, -3, True, "7", None, 2**63])
def test_bad_task_ids_are_rejected(repo: Repo, task_id: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="task_id"):
        repo.get_task(task_id)
    with pytest.raises((TypeError, ValueError), match="task_id"):
        repo.complete_task(task_id)


# ---------------------------------------------------------------- complete / fail


def test_complete_task_stores_result_and_finishes(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {})
    session.commit()
    task = claim(repo)
    repo.complete_task(
        task.id, result={"url": "s3://x.csv", "rows": 3}, lease_token=task.lease_token
    )
    session.commit()
    stored = repo.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETED and stored.progress == 100
    assert stored.completed_at is not None and stored.result == {"url": "s3://x.csv", "rows": 3}
    assert stored.lease_expires_at is None


def test_complete_task_requires_in_progress(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    with pytest.raises(InvalidTransitionError, match="pending"):
        repo.complete_task(task_id)
    with pytest.raises(TypeError, match="result"):
        repo.complete_task(task_id, result=object())
    stored = repo.get_task(task_id)
    assert stored is not None and stored.status is TaskStatus.PENDING


def test_fail_task_retries_with_backoff_then_fails(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {}, max_retries=2)
    session.commit()
    expected_delays = [2.0, 4.0]
    for attempt, delay in enumerate(expected_delays, start=1):
        task = claim(repo)
        before = db_now(session)
        status = repo.fail_task(task.id, f"boom {attempt}", lease_token=task.lease_token)
        session.commit()
        assert status is TaskStatus.PENDING
        stored = repo.get_task(task_id)
        assert stored is not None
        assert stored.retry_count == attempt and stored.started_at is None
        assert stored.error_message == f"boom {attempt}"
        wait = (stored.run_at - before).total_seconds()
        assert delay - 0.5 <= wait <= delay * 1.25 + 0.5
        assert repo.dequeue("a") is None  # backoff: not claimable yet
        session.rollback()
        session.execute(text(f"UPDATE {repo.model.__tablename__} SET run_at = now()"))
        session.commit()
    task = claim(repo)
    assert repo.fail_task(task.id, "final", lease_token=task.lease_token) is TaskStatus.FAILED
    session.commit()
    stored = repo.get_task(task_id)
    assert stored is not None
    assert stored.status is TaskStatus.FAILED and stored.error_message == "final"
    assert stored.completed_at is not None and stored.retry_count == 3


def test_max_retries_zero_fails_at_once(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {}, max_retries=0)
    session.commit()
    task = claim(repo)
    assert repo.fail_task(task.id, "no second chance") is TaskStatus.FAILED


def test_fail_task_without_retry_fails_permanently(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {}, max_retries=5)
    session.commit()
    task = claim(repo)
    assert repo.fail_task(task.id, "bad input", retry=False) is TaskStatus.FAILED


def test_backoff_policy_is_configurable(session: Session, clean_table: type[Any]) -> None:
    repo = make_repository(
        session, clean_table, backoff=BackoffPolicy(base_seconds=10, cap_seconds=15, jitter=0)
    )
    repo.enqueue("a", {})
    session.commit()
    task = claim(repo)
    before = db_now(session)
    repo.fail_task(task.id, "x")
    session.commit()
    stored = repo.get_task(task.id)
    assert stored is not None
    # 10 * 2**1 = 20 s, capped at 15 s, no jitter
    assert 14.5 <= (stored.run_at - before).total_seconds() <= 15.5


def test_fail_task_validates_arguments(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {})
    session.commit()
    task = claim(repo)
    with pytest.raises(TypeError, match="error_message"):
        repo.fail_task(task.id, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lease_token"):
        repo.fail_task(task.id, "x", lease_token="not-a-uuid")  # type: ignore[arg-type]
    for message in ("nul\x00byte", "lone \ud800 surrogate"):
        with pytest.raises(ValueError, match="error_message"):
            repo.fail_task(task.id, message, lease_token=task.lease_token)
    stored = repo.get_task(task.id)  # the transaction is still usable: nothing was sent
    assert stored is not None and stored.status is TaskStatus.IN_PROGRESS
    assert stored.retry_count == 0


def test_fail_task_requires_in_progress(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    with pytest.raises(InvalidTransitionError, match="pending"):
        repo.fail_task(task_id, "x")


# ---------------------------------------------------------------- lease fencing


def test_a_stale_lease_cannot_complete_fail_or_report_progress(
    repo: Repo, session: Session
) -> None:
    repo.enqueue("a", {})
    session.commit()
    stale = claim(repo)
    # the lease expires and the task is rescued, then claimed again
    session.execute(
        text(
            f"UPDATE {repo.model.__tablename__} SET lease_expires_at = now() - interval '1 second'"
        )
    )
    session.commit()
    assert repo.rescue_expired_leases() == {stale.id: TaskStatus.PENDING}
    session.commit()  # a rescued task is due at once
    current = claim(repo)
    assert current.id == stale.id and current.lease_token != stale.lease_token

    with pytest.raises(LeaseLostError, match="no longer current"):
        repo.complete_task(stale.id, result={"stale": True}, lease_token=stale.lease_token)
    with pytest.raises(LeaseLostError):
        repo.fail_task(stale.id, "stale failure", lease_token=stale.lease_token)
    with pytest.raises(LeaseLostError):
        repo.update_progress(stale.id, 99, lease_token=stale.lease_token)
    stored = repo.get_task(stale.id)
    assert stored is not None
    assert stored.status is TaskStatus.IN_PROGRESS and stored.progress == 0
    assert stored.result is None and stored.lease_token == current.lease_token

    repo.complete_task(current.id, result={"ok": True}, lease_token=current.lease_token)
    session.commit()
    stored = repo.get_task(current.id)
    assert stored is not None and stored.result == {"ok": True}


def test_operator_calls_without_a_lease_are_not_fenced(repo: Repo, session: Session) -> None:
    repo.enqueue("a", {})
    session.commit()
    task = claim(repo)
    repo.complete_task(task.id, result="done by hand")
    stored = repo.get_task(task.id)
    assert stored is not None and stored.status is TaskStatus.COMPLETED


def test_renew_and_release_leases(repo: Repo, session: Session) -> None:
    repo.enqueue_many("a", [{}, {}])
    session.commit()
    first, second = repo.dequeue_many("a", limit=2, lease_duration=timedelta(seconds=5))
    session.commit()
    renewed = repo.renew_leases(
        [(first.id, first.lease_token), (second.id, uuid.uuid4())],
        lease_duration=timedelta(minutes=2),
    )
    session.commit()
    assert renewed == {first.id}
    stored = repo.get_task(first.id)
    assert stored is not None and stored.lease_expires_at > first.lease_expires_at  # type: ignore[operator]
    assert repo.renew_leases([]) == set()
    with pytest.raises(TypeError, match="pairs"):
        repo.renew_leases([first.id])  # type: ignore[list-item]

    released = repo.release_tasks([(first.id, first.lease_token), (second.id, second.lease_token)])
    session.commit()
    assert released == {first.id, second.id}
    for task_id in released:
        stored = repo.get_task(task_id)
        assert stored is not None
        assert stored.status is TaskStatus.PENDING and stored.retry_count == 0
        assert stored.lease_token is None and stored.started_at is None
        assert stored.run_at == {first.id: first, second.id: second}[task_id].run_at


def test_a_handed_back_task_keeps_its_place_in_the_queue(repo: Repo, session: Session) -> None:
    first = repo.enqueue("a", {})
    session.commit()
    task = claim(repo, "a")
    waiting = repo.enqueue("a", {})  # enqueued after ``first`` was claimed
    session.commit()
    assert repo.release_tasks([(task.id, task.lease_token)]) == {first}
    session.commit()
    # untouched but for the claim: due at once, ahead of a task enqueued after it
    assert [claimed.id for claimed in repo.dequeue_many("a", limit=2)] == [first, waiting]


def test_rescue_consumes_a_retry_or_fails(repo: Repo, session: Session) -> None:
    keep = repo.enqueue("a", {}, max_retries=1)
    last = repo.enqueue("a", {}, max_retries=0)
    healthy = repo.enqueue("a", {})
    session.commit()
    claimed = repo.dequeue_many("a", limit=3)
    session.commit()
    assert {task.id for task in claimed} == {keep, last, healthy}
    waiting = repo.enqueue("a", {})  # enqueued after ``keep`` was claimed
    session.commit()
    session.execute(
        text(
            f"UPDATE {repo.model.__tablename__} SET lease_expires_at = now() - interval '1 s' "
            f"WHERE id IN ({keep}, {last})"
        )
    )
    session.commit()
    rescued = repo.rescue_expired_leases()
    session.commit()
    assert rescued == {keep: TaskStatus.PENDING, last: TaskStatus.FAILED}
    kept = repo.get_task(keep)
    assert (
        kept is not None and kept.retry_count == 1 and "lease expired" in (kept.error_message or "")
    )
    # due at once, in its old place: ahead of a task enqueued after it
    assert [task.id for task in repo.dequeue_many("a", limit=2)] == [keep, waiting]
    session.rollback()
    still = repo.get_task(healthy)
    assert still is not None and still.status is TaskStatus.IN_PROGRESS
    assert repo.rescue_expired_leases() == {}


# ---------------------------------------------------------------- cancel / retry


def test_cancel_task_only_cancels_pending(repo: Repo, session: Session) -> None:
    pending = repo.enqueue("a", {})
    running = repo.enqueue("b", {})
    session.commit()
    claim(repo, "b")
    assert repo.cancel_task(pending) is True
    assert repo.cancel_task(pending) is False
    assert repo.cancel_task(running) is False
    session.commit()
    cancelled = repo.get_task(pending)
    assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
    assert cancelled.completed_at is not None
    assert repo.dequeue("a") is None


def test_retry_task_requeues_a_failed_task(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {}, max_retries=0)
    session.commit()
    task = claim(repo)
    repo.fail_task(task.id, "boom")
    session.commit()
    repo.retry_task(task_id)
    session.commit()
    stored = repo.get_task(task_id)
    assert stored is not None
    assert stored.status is TaskStatus.PENDING and stored.retry_count == 0
    assert stored.completed_at is None
    assert claim(repo, "a").id == task_id  # due at once
    with pytest.raises(InvalidTransitionError, match="failed"):
        repo.retry_task(task_id)


def test_retry_never_duplicates_an_active_deduplicated_task(repo: Repo, session: Session) -> None:
    first, _ = repo.enqueue_if_not_exists("import", {"file": "a.csv"}, max_retries=0)
    session.commit()
    task = claim(repo, "import")
    repo.fail_task(task.id, "boom")
    session.commit()
    active, created = repo.enqueue_if_not_exists("import", {"file": "a.csv"})
    session.commit()
    assert created and active != first
    with pytest.raises(InvalidTransitionError, match=f"task {active} with the same dedupe key"):
        repo.retry_task(first)
    assert repo.retry_failed_tasks() == 0
    session.commit()  # the transaction is still usable: nothing was attempted in the database
    assert repo.get_task(first).status is TaskStatus.FAILED  # type: ignore[union-attr]


def test_retrying_an_active_deduplicated_task_names_its_status_not_itself(
    repo: Repo, session: Session
) -> None:
    running, _ = repo.enqueue_if_not_exists("import", {"file": "a.csv"}, max_retries=0)
    session.commit()
    assert claim(repo, "import").id == running
    pending, _ = repo.enqueue_if_not_exists("import", {"file": "b.csv"})
    session.commit()
    for task_id, status in ((pending, "pending"), (running, "in_progress")):
        with pytest.raises(InvalidTransitionError, match=f"it is {status}, not failed") as caught:
            repo.retry_task(task_id)
        assert "dedupe key" not in str(caught.value)
    repo.fail_task(running, "boom")
    session.commit()
    repo.retry_task(running)  # no other task holds its key
    session.commit()
    assert repo.get_task(running).status is TaskStatus.PENDING  # type: ignore[union-attr]


def test_retry_failed_tasks_retries_one_of_several_sharing_a_dedupe_key(
    repo: Repo, session: Session
) -> None:
    first, _ = repo.enqueue_if_not_exists("import", {"file": "a.csv"}, max_retries=0)
    session.commit()
    repo.fail_task(claim(repo, "import").id, "boom")
    second, _ = repo.enqueue_if_not_exists("import", {"file": "a.csv"}, max_retries=0)
    session.commit()
    repo.fail_task(claim(repo, "import").id, "boom again")
    session.commit()
    assert repo.retry_failed_tasks() == 1
    session.commit()
    statuses = sorted(repo.get_task(i).status for i in (first, second))  # type: ignore[union-attr]
    assert statuses == [TaskStatus.FAILED, TaskStatus.PENDING]


def test_retry_failed_tasks_never_confuses_a_task_id_with_a_dedupe_key(
    repo: Repo, session: Session
) -> None:
    plain = repo.enqueue("import", {"n": 1}, max_retries=0)
    keyed, _ = repo.enqueue_if_not_exists("import", {"n": 2}, dedupe_key=str(plain), max_retries=0)
    session.commit()
    for task in repo.dequeue_many("import", limit=2):
        repo.fail_task(task.id, "boom")
    session.commit()
    assert repo.retry_failed_tasks() == 2
    session.commit()
    assert {repo.get_task(i).status for i in (plain, keyed)} == {TaskStatus.PENDING}  # type: ignore[union-attr]


def test_a_backslash_before_u0000_is_not_a_nul(repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("a", {"path": "C:\\u0000dir"})
    session.commit()
    assert repo.get_task(task_id).payload == {"path": "C:\\u0000dir"}  # type: ignore[union-attr]


def test_long_schema_qualified_names_get_a_valid_channel(session: Session) -> None:
    from sqlalchemy import MetaData, Table

    from sqlalchemy_taskqueue.statements import notify_channel

    long_table = Table("t" * 46, MetaData(), schema="tenant_" + "s" * 20)
    other = Table("t" * 45 + "u", MetaData(), schema="tenant_" + "s" * 20)
    channel = notify_channel(long_table)
    assert len(channel.encode()) <= 63 and channel.startswith("taskqueue_tenant_")
    assert channel == notify_channel(long_table) != notify_channel(other)
    session.execute(select(func.pg_notify(channel, "")))  # PostgreSQL accepts it
    session.rollback()


def test_retry_failed_tasks_in_bulk(repo: Repo, session: Session) -> None:
    ids = repo.enqueue_many("a", [{}, {}, {}], max_retries=0)
    other = repo.enqueue("b", {}, max_retries=0)
    session.commit()
    for task in repo.dequeue_many(limit=10):
        repo.fail_task(task.id, "x")
    session.commit()
    assert repo.retry_failed_tasks("a") == 3
    assert repo.retry_failed_tasks() == 1
    session.commit()
    statuses = {repo.get_task(task_id).status for task_id in [*ids, other]}  # type: ignore[union-attr]
    assert statuses == {TaskStatus.PENDING}


# ---------------------------------------------------------------- reads


def test_get_task_progress_matches_payload_keys(project_repo: Repo, session: Session) -> None:
    repo = project_repo
    older = repo.enqueue("export", {"project_id": "p1", "fmt": "csv"})
    newer = repo.enqueue("export", {"project_id": "p1", "fmt": "xlsx"}, project_id="p2")
    repo.enqueue("export", {"project_id": "p2"})
    repo.enqueue("import", {"project_id": "p1"})
    session.commit()
    repo.update_progress(older, 10)
    repo.update_progress(newer, 60)
    assert repo.get_task_progress("export", "p1") == 60  # the newest active one
    assert repo.get_task_progress("export", project_id="p1", fmt="csv") == 10
    # payload keys, not the model's project_id column (which is "p2" for `newer`)
    assert repo.get_task_progress("export", "p2") == 0
    assert repo.get_task_progress("export", "p9") is None
    assert repo.get_task_progress("missing") is None
    for claimed in repo.dequeue_many("export", limit=5):
        repo.complete_task(claimed.id)
    assert repo.get_task_progress("export", "p1") is None  # finished tasks do not count
    with pytest.raises(TypeError, match="match"):
        repo.get_task_progress("export", when=object())
    with pytest.raises(TypeError, match="task_type"):
        repo.get_task_progress(None)  # type: ignore[arg-type]


def test_get_task_progress_matches_whole_values_not_parts_of_them(
    repo: Repo, session: Session
) -> None:
    repo.enqueue("export", {"tags": ["a", "b"], "options": {"fmt": "csv", "zip": True}})
    session.commit()
    assert repo.get_task_progress("export", tags=["a", "b"]) == 0
    assert repo.get_task_progress("export", options={"zip": True, "fmt": "csv"}) == 0
    # a list or an object that is only part of the payload's value is another value
    assert repo.get_task_progress("export", tags=["a"]) is None
    assert repo.get_task_progress("export", tags=[]) is None
    assert repo.get_task_progress("export", options={"fmt": "csv"}) is None


def test_cleanup_deletes_only_old_finished_tasks(repo: Repo, session: Session) -> None:
    table = repo.model.__tablename__
    ids = repo.enqueue_many("a", [{"n": n} for n in range(7)])
    session.commit()
    claimed = repo.dequeue_many("a", limit=5)
    repo.complete_task(claimed[0].id)
    repo.complete_task(claimed[1].id)
    repo.fail_task(claimed[2].id, "x", retry=False)
    repo.cancel_task(ids[6])
    repo.complete_task(claimed[3].id)  # finished, but recently
    session.commit()
    old = [claimed[0].id, claimed[1].id, claimed[2].id, ids[6]]
    session.execute(
        text(
            f"UPDATE {table} SET completed_at = now() - interval '8 days', "
            "created_at = now() - interval '9 days' "
            f"WHERE id IN ({', '.join(map(str, old))})"
        )
    )
    # an old task that is still active must survive
    session.execute(
        text(f"UPDATE {table} SET created_at = now() - interval '30 days' WHERE id = {ids[5]}")
    )
    session.commit()
    assert repo.cleanup_old_tasks(timedelta(days=7), batch_size=3) == 4
    session.commit()
    remaining = set(session.scalars(select(repo.model.id)))
    assert remaining == {claimed[3].id, claimed[4].id, ids[5]}
    with pytest.raises(TypeError, match="timedelta"):
        repo.cleanup_old_tasks(7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        repo.cleanup_old_tasks(timedelta(days=-1))
    with pytest.raises(ValueError, match="batch_size"):
        repo.cleanup_old_tasks(timedelta(days=1), batch_size=0)


# ---------------------------------------------------------------- construction and factories


def test_repository_rejects_a_model_that_is_not_a_task_table(session: Session) -> None:
    with pytest.raises(TypeError, match="TaskMixin"):
        make_repository(session, dict)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="Session"):
        TaskRepository("session", object)  # type: ignore[arg-type,type-var]


def test_a_scoped_session_stands_for_the_current_scopes_session(
    session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    """A ``scoped_session`` (Flask-SQLAlchemy's ``db.session``) is accepted: each thread's
    repository runs in that thread's session, which the thread's commit through the
    scoped proxy commits, and its rollback rolls back."""
    scoped = scoped_session(session_factory)
    kept: dict[str, Any] = {}

    def in_thread(name: str, commit: bool) -> None:
        repo = TaskRepository(scoped, clean_table)
        kept[name] = (repo.session, scoped(), repo.enqueue("a", {"thread": name}))
        if commit:
            scoped.commit()
        else:
            scoped.rollback()
        scoped.remove()

    threads = [
        threading.Thread(target=in_thread, args=("kept", True)),
        threading.Thread(target=in_thread, args=("dropped", False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert kept["kept"][0] is kept["kept"][1] and kept["dropped"][0] is kept["dropped"][1]
    assert kept["kept"][0] is not kept["dropped"][0]
    with session_factory() as check:
        stored = check.execute(select(clean_table.id, clean_table.payload)).all()
    assert stored == [(kept["kept"][2], {"thread": "kept"})]


def test_repository_rejects_bad_configuration(session: Session, clean_table: type[Any]) -> None:
    with pytest.raises(ValueError, match="lease_duration"):
        make_repository(session, clean_table, lease_duration=timedelta(0))
    with pytest.raises(ValueError, match="at least 1 second"):
        make_repository(session, clean_table, lease_duration=0.5)
    with pytest.raises(ValueError, match="at most"):
        make_repository(session, clean_table, lease_duration=timedelta(days=10**6))
    with pytest.raises(TypeError, match="backoff"):
        make_repository(session, clean_table, backoff=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jitter"):
        BackoffPolicy(jitter=2)
    with pytest.raises(ValueError, match="cap_seconds"):
        BackoffPolicy(cap_seconds=1e12)
    with pytest.raises(TypeError, match="base_seconds"):
        BackoffPolicy(base_seconds="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="owner"):
        make_repository(session, clean_table, owner="")


def test_task_factory_builds_rows_for_tests(repo: Repo, session: Session) -> None:
    factory = task_factory(repo.model, session)
    made = factory.create_batch(3, type="email")
    failed = factory(status=TaskStatus.FAILED, error_message="boom")
    assert [task.type for task in made] == ["email"] * 3
    assert repo.get_task(failed.id).status is TaskStatus.FAILED  # type: ignore[union-attr]
    assert claim(repo, "email").id == made[0].id
    # each row as the queue would have left it in its status
    running = factory(status=TaskStatus.IN_PROGRESS)
    done = factory(status=TaskStatus.COMPLETED)
    assert made[1].started_at is None and made[1].completed_at is None
    assert running.started_at is not None and running.completed_at is None
    assert running.lease_token is not None and running.lease_expires_at is not None
    assert (done.progress, failed.progress) == (100, 0)
    assert repo.rescue_expired_leases() == {}  # the lease is current
    failed_id, running_id = failed.id, running.id
    session.commit()  # cleanup compares with the time its own transaction started
    assert repo.cleanup_old_tasks(timedelta(0)) == 2  # the failed and the completed row
    assert repo.get_task(failed_id) is None and repo.get_task(running_id) is not None


def test_a_relaxed_claim_skips_the_flush_wait_for_its_transaction_only(
    repo: Repo, session: Session
) -> None:
    repo.enqueue_many("a", [{}, {}])
    session.commit()
    assert len(repo.dequeue_many("a", limit=1)) == 1
    assert session.scalar(text("SHOW synchronous_commit")) == "on"
    session.commit()
    assert len(repo.dequeue_many("a", limit=1, relaxed_commit=True)) == 1
    assert session.scalar(text("SHOW synchronous_commit")) == "off"
    session.commit()
    assert session.scalar(text("SHOW synchronous_commit")) == "on"  # the next transaction
    with pytest.raises(TypeError, match="relaxed_commit"):
        repo.dequeue_many("a", limit=1, relaxed_commit="yes")  # type: ignore[arg-type]


def test_a_relaxed_progress_write_skips_the_flush_wait_for_its_transaction_only(
    repo: Repo, session: Session
) -> None:
    task_id = repo.enqueue("a", {})
    session.commit()
    task = claim(repo, "a")
    repo.update_progress(task_id, 10, lease_token=task.lease_token)
    assert session.scalar(text("SHOW synchronous_commit")) == "on"
    session.commit()
    repo.update_progress(task_id, 20, lease_token=task.lease_token, relaxed_commit=True)
    assert session.scalar(text("SHOW synchronous_commit")) == "off"
    session.commit()
    assert session.scalar(text("SHOW synchronous_commit")) == "on"  # the next transaction
    repo.update_progress(task_id, 30, relaxed_commit=True)  # unfenced, by an operator
    session.commit()
    assert repo.get_task(task_id).progress == 30
    with pytest.raises(TypeError, match="relaxed_commit"):
        repo.update_progress(task_id, 40, relaxed_commit=1)  # type: ignore[arg-type]
    with pytest.raises(LeaseLostError):
        repo.update_progress(task_id, 40, lease_token=uuid.uuid4(), relaxed_commit=True)
    session.commit()
    assert repo.get_task(task_id).progress == 30


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


def test_enqueue_many_splits_huge_batches(
    repo: Repo, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy_taskqueue import repository

    monkeypatch.setattr(repository, "_MAX_BATCH_CHARACTERS", 40)  # a few payloads each
    payloads = [{"n": n, "pad": "x" * 10} for n in range(10)]
    ids = repo.enqueue_many("a", payloads)
    session.commit()
    assert ids == sorted(ids) and len(set(ids)) == 10
    assert [repo.get_task(task_id).payload for task_id in ids] == payloads  # type: ignore[union-attr]


def test_each_twin_runs_on_its_own_driver(repo: Any, session: Session, database_url: str) -> None:
    from sqlalchemy.engine import make_url
    from twins import async_url

    twin = getattr(repo, "twin", repo)
    if twin is repo:  # the sync twin on the run's driver (psycopg2 unless the URL says so)
        expected = (make_url(database_url).get_dialect().driver, TaskRepository)
    else:  # the async twin through an async driver
        expected = (async_url(database_url).get_dialect().driver, AsyncTaskRepository)
    assert expected[0] in {"psycopg2", "psycopg", "asyncpg"}
    assert (session.get_bind().dialect.driver, type(twin)) == expected
    task_id = repo.enqueue("a", {"n": 1})
    session.commit()
    assert repo.get_task(task_id).payload == {"n": 1}


@pytest.mark.parametrize("notify", [True, False])
def test_tasks_put_back_in_the_queue_wake_listening_workers(
    repo: Repo, session: Session, database_url: str, notify: bool
) -> None:
    """Handed back, rescued or retried: each is claimable again at once, so the
    repository announces it on the queue's channel, as an enqueue does (one
    notification per transaction), unless made with ``notify=False``."""
    table = repo.model.__tablename__
    quiet = make_repository(session, repo.model, notify=notify)
    listener = connect_listening(database_url, statements.notify_channel(repo.model.__table__))
    try:
        ids = repo.enqueue_many("a", [{}, {}], max_retries=1)
        ids.append(repo.enqueue("a", {}, max_retries=0))
        session.commit()
        drain_notifications(listener)  # the enqueue's own
        first, second, third = repo.dequeue_many("a", limit=3)
        session.commit()
        session.execute(text(f"UPDATE {table} SET lease_expires_at = now() WHERE id = {second.id}"))
        repo.fail_task(third.id, "boom")
        session.commit()
        for put_back in (
            lambda: quiet.release_tasks([(first.id, first.lease_token)]),
            lambda: quiet.rescue_expired_leases(),
            lambda: quiet.retry_task(third.id),
        ):
            put_back()
            session.commit()
            assert drain_notifications(listener) == (1 if notify else 0)
        assert sorted(task.id for task in repo.dequeue_many("a", limit=3)) == ids
    finally:
        listener.close()


def connect_listening(database_url: str, channel: str) -> Any:
    """A psycopg2 connection listening on ``channel``."""
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    connection = psycopg2.connect(**url.translate_connect_args(username="user", database="dbname"))
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(statements.listen_statement(channel))
    return connection


def drain_notifications(connection: Any) -> int:
    """How many notifications arrived (all of them are delivered by the time the
    notifying transaction's commit returned)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # reads what the server has sent meanwhile
    count = len(connection.notifies)
    connection.notifies.clear()
    return count
