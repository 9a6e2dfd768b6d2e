"""A payload, result or progress match that cannot be stored or read back harms its own
task alone: refused before anything is written, or, when it reached the table around
the repository, failed without disturbing the tasks claimed with it."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker
from worker_harness import MakeWorker, completions_refused, enqueue, fetch

from sqlalchemy_taskqueue import TaskRepository, TaskStatus
from sqlalchemy_taskqueue._json import UndecodableJSON
from sqlalchemy_taskqueue._validation import MAX_JSON_DEPTH
from sqlalchemy_taskqueue.cli import cli

Factory = sessionmaker[Session]


def nested(depth: int) -> Any:
    """A list nested ``depth`` levels deep (``[]`` is one level)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def rows(session: Session, model: type[Any]) -> int:
    return int(session.execute(select(func.count()).select_from(model)).scalar_one())


# ---------------------------------------------------------------- the nesting limit


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 10_000])
@pytest.mark.parametrize("method", ["enqueue", "enqueue_many", "enqueue_if_not_exists"])
def test_a_payload_nested_too_deep_is_refused_and_nothing_is_written(
    session: Session, clean_table: type[Any], method: str, depth: int
) -> None:
    repo = TaskRepository(session, clean_table)
    payload = {"tree": nested(depth - 1)}
    if method == "enqueue_many":
        call = lambda: repo.enqueue_many("job", [{"fine": 1}, payload])  # noqa: E731
    else:
        call = lambda: getattr(repo, method)("job", payload)  # noqa: E731
    with pytest.raises(ValueError, match=f"more than {MAX_JSON_DEPTH} levels deep"):
        call()
    assert rows(session, clean_table) == 0


def test_a_payload_at_the_nesting_limit_is_accepted(
    session: Session, clean_table: type[Any]
) -> None:
    repo = TaskRepository(session, clean_table)
    task_id = repo.enqueue("job", nested(MAX_JSON_DEPTH))
    session.commit()
    task = repo.get_task(task_id)
    assert task is not None and task.payload == nested(MAX_JSON_DEPTH)


def test_a_payload_that_contains_itself_is_not_json(
    session: Session, clean_table: type[Any]
) -> None:
    payload: dict[str, Any] = {}
    payload["self"] = payload
    with pytest.raises(TypeError, match="Circular reference"):
        TaskRepository(session, clean_table).enqueue("job", payload)
    assert rows(session, clean_table) == 0


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 10_000])
def test_a_progress_match_nested_too_deep_is_refused(
    session: Session, clean_table: type[Any], depth: int
) -> None:
    with pytest.raises(ValueError, match="payload match nests"):
        TaskRepository(session, clean_table).get_task_progress("job", tree=nested(depth))


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 10_000])
def test_a_result_nested_too_deep_is_refused_by_complete_task(
    session: Session, clean_table: type[Any], depth: int
) -> None:
    repo = TaskRepository(session, clean_table)
    repo.enqueue("job", {})
    session.commit()
    task = repo.dequeue("job")
    session.commit()
    assert task is not None
    with pytest.raises(ValueError, match="result nests"):
        repo.complete_task(task.id, result=nested(depth), lease_token=task.lease_token)
    with pytest.raises(ValueError, match="result nests"):
        repo.complete_tasks([(task.id, task.lease_token, nested(depth))])
    assert repo.get_task(task.id).status is TaskStatus.IN_PROGRESS  # type: ignore[union-attr]


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 10_000])
def test_the_enqueue_command_refuses_a_payload_nested_too_deep(
    database_url: str, clean_table: type[Any], session: Session, depth: int
) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "enqueue",
            "job",
            "--payload",
            "[" * depth + "]" * depth,
            "--table",
            clean_table.__tablename__,
        ],
        env={"TASKQUEUE_DATABASE_URL": database_url},
        catch_exceptions=False,
    )
    assert result.exit_code == 2, result.output
    assert f"more than {MAX_JSON_DEPTH} levels deep" in result.output
    assert "Traceback" not in result.output
    assert rows(session, clean_table) == 0


# ---------------------------------------------------------------- documents the worker cannot read


def plant_undecodable(factory: Factory, model: type[Any]) -> int:
    """A task whose payload is JSON nested deeper than Python's decoder goes, written
    with SQL around the repository (which would refuse it)."""
    depth = 5_000
    with factory() as session:
        sqlite = session.get_bind().dialect.name == "sqlite"
        payload = ":payload" if sqlite else "CAST(:payload AS JSONB)"  # SQLite: JSON is text
        task_id = session.execute(
            text(
                f"INSERT INTO {model.__tablename__} (type, payload, max_retries, priority) "
                f"VALUES ('job', {payload}, 0, -1) RETURNING id"
            ),
            {"payload": "[" * depth + "]" * depth},
        ).scalar_one()
        session.commit()
    return int(task_id)


def test_a_row_that_cannot_be_decoded_reads_as_undecodable_json(
    session_factory: Factory, clean_table: type[Any], session: Session
) -> None:
    task_id = plant_undecodable(session_factory, clean_table)
    task = TaskRepository(session, clean_table).get_task(task_id)
    assert task is not None and isinstance(task.payload, UndecodableJSON)
    assert task.payload.error.startswith("RecursionError")


def test_a_row_the_worker_cannot_decode_fails_that_task_alone(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    """Six innocent tasks that may not be retried, claimed in one batch with the poison
    one: each runs once and completes; the poison one fails at once, not retried."""
    poison = plant_undecodable(session_factory, clean_table)
    innocent = [
        enqueue(session_factory, clean_table, "job", {"n": n}, max_retries=0) for n in range(6)
    ]
    ran: list[int] = []
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": lambda task, ctx: ran.append(ctx.payload["n"])},
        concurrency=2,
        prefetch=8,
    )
    worker.run(until_empty=True)
    assert sorted(ran) == list(range(6))
    assert {fetch(session_factory, clean_table, i).status for i in innocent} == {
        TaskStatus.COMPLETED
    }
    task = fetch(session_factory, clean_table, poison)
    assert task.status is TaskStatus.FAILED and task.retry_count == 1
    assert task.error_message.startswith("ValueError: the task's payload cannot be read: ")


def test_show_prints_a_task_whose_payload_cannot_be_decoded(
    database_url: str, session_factory: Factory, clean_table: type[Any]
) -> None:
    task_id = plant_undecodable(session_factory, clean_table)
    result = CliRunner().invoke(
        cli,
        ["show", str(task_id), "--table", clean_table.__tablename__],
        env={"TASKQUEUE_DATABASE_URL": database_url},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "<undecodable JSON: RecursionError" in result.output


# ---------------------------------------------------------------- results too large to store


def test_a_result_over_max_result_bytes_fails_its_task_and_the_others_complete(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any]
) -> None:
    big = enqueue(session_factory, clean_table, "job", {"size": 2_000})
    small = [enqueue(session_factory, clean_table, "job", {"size": 10}) for _ in range(3)]
    worker = make_worker(
        session_factory,
        clean_table,
        {"job": lambda task, ctx: "x" * ctx.payload["size"]},
        max_result_bytes=1_000,
    )
    worker.run(until_empty=True)
    task = fetch(session_factory, clean_table, big)
    assert task.status is TaskStatus.FAILED and task.retry_count == 1  # not retried
    assert task.error_message == (
        "ValueError: the handler's result cannot be stored: result is 2002 bytes as JSON, "
        "over the limit of 1000 (max_result_bytes)"
    )
    assert [fetch(session_factory, clean_table, i).result for i in small] == ["x" * 10] * 3


def test_complete_task_refuses_a_result_over_max_result_bytes(
    session: Session, clean_table: type[Any]
) -> None:
    repo = TaskRepository(session, clean_table, max_result_bytes=100)
    repo.enqueue("job", {})
    session.commit()
    task = repo.dequeue("job")
    session.commit()
    assert task is not None
    with pytest.raises(ValueError, match="over the limit of 100 \\(max_result_bytes\\)"):
        repo.complete_task(task.id, result="x" * 200, lease_token=task.lease_token)
    unlimited = TaskRepository(session, clean_table, max_result_bytes=None)
    unlimited.complete_task(task.id, result="x" * 200, lease_token=task.lease_token)
    session.commit()
    assert unlimited.get_task(task.id).result == "x" * 200  # type: ignore[union-attr]


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
def test_a_bad_max_result_bytes_is_refused(
    session: Session, clean_table: type[Any], limit: Any
) -> None:
    with pytest.raises((TypeError, ValueError), match="max_result_bytes"):
        TaskRepository(session, clean_table, max_result_bytes=limit)


def test_a_completion_the_database_refuses_for_good_fails_that_task_and_the_worker_goes_on(
    make_worker: MakeWorker, session_factory: Factory, clean_table: type[Any], engine: Any
) -> None:
    """A result over a limit of the database itself (SQLSTATE class 54, as PostgreSQL
    reports a ``jsonb`` value over 255 MiB) is not worth retrying: the task fails, the
    rest of its outcome batch is written, and the worker keeps claiming."""
    refused = enqueue(session_factory, clean_table, "job", {"refuse": True})
    accepted = [enqueue(session_factory, clean_table, "job", {"n": n}) for n in range(3)]
    with completions_refused(
        engine,
        clean_table,
        "total size of jsonb object elements exceeds the maximum",
        for_good=True,
        refuse_key="refuse",
    ):
        worker = make_worker(
            session_factory, clean_table, {"job": lambda task, ctx: "ok"}, concurrency=4
        )
        worker.run(until_empty=True)
        later = enqueue(session_factory, clean_table, "job", {"n": 9})
        worker.run(until_empty=True)  # it still claims
    statuses = [fetch(session_factory, clean_table, i).status for i in [*accepted, later]]
    assert statuses == [TaskStatus.COMPLETED] * 4
    task = fetch(session_factory, clean_table, refused)
    assert task.status is TaskStatus.FAILED and task.lease_token is None
    assert "the handler's result could not be stored" in task.error_message
    # the database's own words: PostgreSQL's (the trigger's message), SQLite's
    assert "exceeds the maximum" in task.error_message or "too big" in task.error_message
