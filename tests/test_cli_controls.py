"""``taskqueue pause|resume [TYPE]``, ``taskqueue limit``, ``taskqueue limits`` and the
concurrency options of ``taskqueue enqueue``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_taskqueue import TaskRepository
from sqlalchemy_taskqueue._controls import controls_table


def paused(factory: sessionmaker[Session], model: type[Any]) -> list[str]:
    with factory() as session:
        return TaskRepository(session, model).paused()


def test_pause_and_resume_a_type(
    run: Any, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    assert run("pause", "export") == (
        0,
        "task type export paused: workers claim none of it until resumed\n",
    )
    assert paused(session_factory, clean_table) == ["export"]
    code, output = run("limits")
    assert code == 0 and "export" in output
    assert run("resume", "export") == (0, "task type export resumed\n")
    assert paused(session_factory, clean_table) == []
    assert run("limits") == (
        0,
        "Paused: none\nRate limits: none\nConcurrency keys at their limit: none\n",
    )


def test_pause_and_resume_the_whole_queue(
    run: Any, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    run("pause", "export")
    code, output = run("pause")
    assert code == 0 and output.startswith("the whole queue paused")
    code, output = run("limits", "--json")
    assert json.loads(output) == {"paused": ["*", "export"], "rate_limits": [], "keys_at_limit": []}
    assert "(the whole queue)" in run("limits")[1]
    code, output = run("resume")
    assert output == "the whole queue resumed\nstill paused on their own: export\n"
    assert paused(session_factory, clean_table) == ["export"]


def test_a_bad_type_name_is_a_usage_error_and_nothing_is_written(
    run: Any, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    code, output = run("pause", "x" * 300)
    assert code == 2 and "at most 255 characters" in output
    assert paused(session_factory, clean_table) == []


def test_a_queue_without_the_controls_table_is_told_how_to_upgrade(
    run: Any, engine: Engine, clean_table: type[Any]
) -> None:
    table = controls_table(clean_table.__table__)
    table.drop(engine)
    try:
        for command in (["pause"], ["resume", "export"], ["limits"]):
            code, output = run(*command)
            assert code == 1, output
            assert "upgrade_task_table_v2_to_v3" in output
    finally:
        table.create(engine)


def test_limit_sets_and_clears_a_rate_limit(
    run: Any, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    assert run("limit", "webhook", "20", "--per", "1s") == (
        0,
        "task type webhook: at most 20 claims per 1s\n",
    )
    with session_factory() as session:
        [limit] = TaskRepository(session, clean_table).rate_limits()
    assert (limit.task_type, limit.limit, limit.per.total_seconds()) == ("webhook", 20, 1.0)
    code, output = run("limits")
    assert code == 0 and "Rate limits" in output and "webhook" in output
    code, output = run("limits", "--json")
    assert json.loads(output)["rate_limits"] == [
        {
            "task_type": "webhook",
            "limit": 20,
            "per_seconds": 1.0,
            "recent_starts": 0,
            "at_limit": False,
        }
    ]
    assert run("limit", "webhook", "--clear") == (0, "task type webhook: rate limit lifted\n")
    assert run("limit", "webhook", "--clear") == (0, "task type webhook: rate limit none to lift\n")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["limit", "webhook", "20"], "LIMIT needs --per"),
        (["limit", "webhook"], "give either LIMIT with --per, or --clear"),
        (["limit", "webhook", "20", "--per", "1s", "--clear"], "give either LIMIT"),
        (["limit", "webhook", "0", "--per", "1s"], "0 is not in the range"),
        (["limit", "webhook", "5", "--per", "0s"], "--per"),
    ],
)
def test_bad_limit_arguments_are_usage_errors(
    run: Any,
    arguments: list[str],
    message: str,
    session_factory: sessionmaker[Session],
    clean_table: type[Any],
) -> None:
    code, output = run(*arguments)
    assert code == 2 and message in output, output
    with session_factory() as session:
        assert TaskRepository(session, clean_table).rate_limits() == []


def test_enqueue_takes_a_concurrency_key_and_limits_shows_the_keys_at_their_limit(
    run: Any, session_factory: sessionmaker[Session], clean_table: type[Any]
) -> None:
    for _ in range(3):
        code, output = run(
            "enqueue", "sync", "--concurrency-key", "account:7", "--concurrency-limit", "2"
        )
        assert code == 0, output
    with session_factory() as session:
        repo = TaskRepository(session, clean_table)
        assert len(repo.dequeue_many(limit=10)) == 2
        session.commit()
    code, output = run("limits")
    assert code == 0 and "Concurrency keys at their limit" in output and "account:7" in output
    code, output = run("limits", "--json")
    assert json.loads(output)["keys_at_limit"] == [
        {"concurrency_key": "account:7", "limit": 2, "running": 2, "waiting": 1}
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--concurrency-key", ""], "concurrency_key must be a non-empty string"),
        (["--concurrency-key", "a", "--concurrency-limit", "0"], "concurrency_limit must be"),
        (["--concurrency-limit", "x"], "'x' is not a valid integer"),
    ],
)
def test_bad_concurrency_options_are_usage_errors_and_nothing_is_enqueued(
    run: Any,
    arguments: list[str],
    message: str,
    session_factory: sessionmaker[Session],
    clean_table: type[Any],
) -> None:
    code, output = run("enqueue", "sync", *arguments)
    assert code == 2 and message in output, output
    with session_factory() as session:
        assert TaskRepository(session, clean_table).status_counts() == []
