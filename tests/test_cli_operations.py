"""The operator commands against a real queue table."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import TaskRepository, TaskStatus
from sqlalchemy_taskqueue.cli import cli

Repo = TaskRepository[Any]


@pytest.fixture
def run(database_url: str, clean_table: type[Any]) -> Any:
    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            cli,
            [*args, "--table", clean_table.__tablename__],
            env={"TASKQUEUE_DATABASE_URL": database_url},
            catch_exceptions=False,
        )
        return result.exit_code, result.output

    return invoke


def failed_task(repo: Repo, session: Session, task_type: str = "export") -> int:
    task_id = repo.enqueue(task_type, {}, max_retries=0)
    session.commit()
    task = repo.dequeue(task_type)
    assert task is not None
    repo.fail_task(task.id, "RuntimeError: disk full")
    session.commit()
    return task_id


def test_every_command_and_option_has_help_text() -> None:
    """``--help`` is complete: each command says what it does, each option what it sets."""
    commands: list[tuple[str, click.Command]] = [("taskqueue", cli)]
    assert isinstance(cli, click.Group)
    commands += [(f"taskqueue {name}", command) for name, command in cli.commands.items()]
    assert len(commands) > 8
    missing = [name for name, command in commands[1:] if not command.get_short_help_str()]
    for name, command in commands:
        missing += [
            f"{name} {option.opts[0]}"
            for option in command.params
            if isinstance(option, click.Option) and not option.help
        ]
    assert missing == []


def test_enqueue_and_show(run: Any, repo: Repo) -> None:
    code, output = run("enqueue", "export", "--payload", '{"project_id": 7}', "--priority", "-1")
    assert code == 0
    task_id = int(output)
    task = repo.get_task(task_id)
    assert task is not None and task.payload == {"project_id": 7} and task.priority == -1
    code, output = run("show", str(task_id))
    assert code == 0 and "payload" in output and '{"project_id": 7}' in output
    code, output = run("show", str(task_id), "--json")
    assert json.loads(output)["status"] == "pending"


def test_enqueue_unique_and_delayed(run: Any, repo: Repo) -> None:
    first = run("enqueue", "import", "--payload", '{"file": "a.csv"}', "--unique")
    second = run("enqueue", "import", "--payload", '{"file": "a.csv"}', "--unique")
    assert first[0] == second[0] == 0
    assert second[1].startswith(first[1].strip()) and "already active" in second[1]
    code, _ = run("enqueue", "later", "--delay", "1h")
    assert code == 0
    assert repo.dequeue("later") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "export", "--payload", "{oops"], "not valid JSON"),
        (["enqueue", "export", "--payload", "null"], "payload"),
        (["enqueue", "export", "--payload", '{"x": NaN}'], "not JSON-serialisable"),
        (["enqueue", "export", "--payload", '"nul\\u0000"'], "NUL character"),
        (["enqueue", "export", "--max-retries", "5000"], "max_retries must be <= 1000"),
        (["enqueue", "export", "--priority", "99999999999"], "priority must be <="),
        (["enqueue", "", "--payload", "{}"], "task_type must not be empty"),
        (["enqueue", "x" * 300], "at most 255 characters"),
        (["enqueue", "export", "--delay", "soon"], "invalid duration"),
        (["cleanup", "--older-than", "7 days"], "invalid duration"),
        (["cleanup"], "--older-than"),
        (["retry"], "TASK_ID or --all-failed"),
        (["retry", "1", "--all-failed"], "TASK_ID or --all-failed"),
        (["show", "0"], "0"),
        (["show", "abc"], "abc"),
        (["stuck", "--older-than", "0s"], "positive"),
        (["stats", "--window", "0s"], "positive"),
        (["stats", "--window", "a while"], "invalid duration"),
        # values the queue itself refuses: a message and exit 2, not a traceback
        (["failed", "--type", ""], "task_type must be a non-empty string"),
        (["retry", "--all-failed", "--type", ""], "task_type must not be empty"),
        (["show", "99999999999999999999"], "task_id must be <="),
        (["cancel", "99999999999999999999"], "task_id must be <="),
        (["retry", "99999999999999999999"], "task_id must be <="),
        (["stuck", "--older-than", "99999d"], "at most 36500 days"),
        (["stats", "--window", "99999d"], "at most 36500 days"),
        (["cleanup", "--older-than", "99999d"], "at most 36500 days"),
        (["failed", "--limit", "99999999999999999999"], "limit must be <="),
    ],
)
def test_bad_arguments_exit_2(run: Any, args: list[str], message: str) -> None:
    code, output = run(*args)
    assert code == 2
    assert message in output


@pytest.mark.parametrize("command", ["show", "cancel", "retry"])
def test_unknown_ids_exit_1(run: Any, command: str) -> None:
    code, output = run(command, "987654")
    assert code == 1
    assert "987654" in output


def test_cancel(run: Any, repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("export", {})
    session.commit()
    assert run("cancel", str(task_id)) == (0, f"task {task_id} cancelled\n")
    code, output = run("cancel", str(task_id))
    assert code == 1 and "only pending or running tasks" in output
    assert repo.get_task(task_id).status is TaskStatus.CANCELLED  # type: ignore[union-attr]


def test_cancel_a_running_task(run: Any, repo: Repo, session: Session) -> None:
    task_id = repo.enqueue("export", {})
    session.commit()
    assert repo.dequeue("export") is not None
    session.commit()
    code, output = run("cancel", str(task_id))
    assert (code, output) == (
        0,
        f"task {task_id} cancelled (its worker stops it at its next heartbeat)\n",
    )
    session.expire_all()
    assert repo.get_task(task_id).status is TaskStatus.CANCELLED  # type: ignore[union-attr]


def test_failed_and_retry(run: Any, repo: Repo, session: Session) -> None:
    first = failed_task(repo, session)
    second = failed_task(repo, session, "email")
    code, output = run("failed")
    assert code == 0 and "RuntimeError: disk full" in output and str(first) in output
    code, output = run("failed", "--json", "--type", "email")
    assert [item["id"] for item in json.loads(output)] == [second]
    assert run("retry", str(first)) == (0, f"task {first} is pending again\n")
    code, output = run("retry", str(first))
    assert code == 1 and "not failed" in output
    assert run("retry", "--all-failed") == (0, "1 failed task(s) are pending again\n")
    session.expire_all()
    assert {repo.get_task(i).status for i in (first, second)} == {TaskStatus.PENDING}  # type: ignore[union-attr]
    code, output = run("failed")
    assert code == 0 and "none" in output


def test_stats_table_and_json(run: Any, repo: Repo, session: Session) -> None:
    repo.enqueue_many("export", [{}, {}])
    failed_task(repo, session, "email")
    code, output = run("stats")
    assert code == 0
    assert "Tasks by type and status" in output and "export" in output and "email" in output
    assert "Finished in the last 24h" in output
    assert "Finished in the last 90m" in run("stats", "--window", "90m")[1]
    code, output = run("stats", "--json")
    counts = {
        (c["task_type"], c["status"]): c["count"] for c in json.loads(output)["status_counts"]
    }
    assert counts == {("export", "pending"): 2, ("email", "failed"): 1}


def test_stuck(run: Any, repo: Repo, session: Session) -> None:
    repo.enqueue("export", {})
    session.commit()
    task = repo.dequeue("export")
    session.execute(
        text(f"UPDATE {repo.model.__tablename__} SET lease_expires_at = now() - interval '1 s'")
    )
    session.commit()
    code, output = run("stuck")
    assert code == 0 and "(expired)" in output
    code, output = run("stuck", "--json")
    assert [item["id"] for item in json.loads(output)] == [task.id]  # type: ignore[union-attr]


def test_cleanup_dry_run_then_delete(run: Any, repo: Repo, session: Session) -> None:
    for _ in range(3):
        failed_task(repo, session)
    keep = repo.enqueue("export", {})
    session.execute(
        text(
            f"UPDATE {repo.model.__tablename__} SET completed_at = now() - interval '8 days' WHERE status = 'failed'"
        )
    )
    session.commit()
    dry = run("cleanup", "--older-than", "7d", "--dry-run")[1]
    assert dry == "would delete 3 finished task(s) older than 7d\n"
    done = run("cleanup", "--older-than", "7d", "--batch-size", "2")[1]
    assert done == "deleted 3 finished task(s) older than 7d\n"
    remaining = session.scalars(text(f"SELECT id FROM {repo.model.__tablename__}")).all()
    assert remaining == [keep]


def test_the_database_url_may_come_before_the_command(
    database_url: str, clean_table: type[Any]
) -> None:
    result = CliRunner().invoke(
        cli, ["--database-url", database_url, "stats", "--table", clean_table.__tablename__]
    )
    assert result.exit_code == 0, result.output
    assert "Tasks by type and status" in result.output or "none" in result.output


def test_a_missing_table_is_reported_clearly(database_url: str) -> None:
    result = CliRunner().invoke(
        cli, ["stats", "--table", "no_such_table"], env={"TASKQUEUE_DATABASE_URL": database_url}
    )
    assert result.exit_code == 1
    assert "no_such_table" in result.output and "does not exist" in result.output


def test_the_database_url_before_the_command_wins_over_the_environment(
    database_url: str, clean_table: type[Any], repo: Repo, session: Session
) -> None:
    """An operator who names a database on the command line gets that database, not the
    one TASKQUEUE_DATABASE_URL happens to name (the command's own option reads it too)."""
    task_id = repo.enqueue("export", {})
    session.commit()
    elsewhere = "postgresql+psycopg2://nobody@127.0.0.1:1/elsewhere"
    result = CliRunner().invoke(
        cli,
        ["--database-url", database_url, "cancel", str(task_id)],
        env={"TASKQUEUE_DATABASE_URL": elsewhere, "TASKQUEUE_TABLE": clean_table.__tablename__},
    )
    assert result.exit_code == 0, result.output
    assert "127.0.0.1:1" not in result.output
    session.expire_all()
    assert repo.get_task(task_id).status is TaskStatus.CANCELLED  # type: ignore[union-attr]
    # an URL given after the command still wins over one given before it
    result = CliRunner().invoke(
        cli,
        ["--database-url", elsewhere, "show", str(task_id), "--database-url", database_url],
        env={"TASKQUEUE_TABLE": clean_table.__tablename__},
    )
    assert result.exit_code == 0 and "cancelled" in result.output, result.output
