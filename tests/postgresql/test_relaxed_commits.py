"""Asynchronous commit (``synchronous_commit = off``): a relaxed claim or progress write
skips the wait for the WAL flush, for its own transaction only; a worker relaxes only
its claim-only transactions and its progress writes, and every transaction that
writes an outcome commits synchronously."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from repository_harness import Repo, claim
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from worker_harness import MakeWorker, enqueue, fetch

from sqlalchemy_taskqueue import LeaseLostError, TaskContext, TaskStatus


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


def test_only_claim_only_transactions_and_progress_writes_commit_asynchronously(
    make_worker: MakeWorker, database_url: str, clean_table: type[Any]
) -> None:
    from sqlalchemy import Engine, create_engine, event

    engine = create_engine(database_url)
    factory = sessionmaker(engine)
    for n in range(3):
        enqueue(factory, clean_table, "job", {"n": n})
    failing = enqueue(factory, clean_table, "boom", max_retries=0)
    # one open transaction per connection: the worker's transactions run concurrently
    # on several (a progress write beside a claim turn), so one shared list would mix
    # their statements into whichever transaction commits first
    transactions: list[list[str]] = []
    open_ones: dict[int, list[str]] = {}

    # on every engine: the async twin's engine is made inside its run
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            transactions.append([statement])  # the claim connection: its own transaction
            return
        open_ones.setdefault(id(conn.connection.dbapi_connection), []).append(statement)

    def committed(conn: Any) -> None:
        done = open_ones.pop(id(conn.connection.dbapi_connection), None)
        if done:
            transactions.append(done)

    event.listen(Engine, "before_cursor_execute", record)
    event.listen(Engine, "commit", committed)

    def job(task: Any, ctx: TaskContext) -> str:
        ctx.update_progress(50)
        ctx.flush_progress(force=True)
        return "ok"

    def boom(task: Any, ctx: TaskContext) -> str:
        ctx.update_progress(30)  # written before the failure, which keeps it
        raise ValueError("boom")

    try:
        worker = make_worker(factory, clean_table, {"job": job, "boom": boom}, concurrency=1)
        worker.run(until_empty=True)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
        event.remove(Engine, "commit", committed)
    relaxed = [t for t in transactions if any("set_config" in s for s in t)]
    claims = [t for t in transactions if any("FOR UPDATE SKIP LOCKED" in s for s in t)]
    progress = [t for t in transactions if any("SET progress=" in s for s in t)]
    completing = [t for t in transactions if any("completed_at=now()" in s for s in t)]
    failing_ones = [t for t in transactions if any("error_message=" in s for s in t)]
    assert relaxed, "the first claim (nothing to acknowledge yet) commits asynchronously"
    # progress is advisory: a server crash may forget its last moments' writes
    assert len(progress) == 4 and all(t in relaxed for t in progress)
    assert all(t in claims or t in progress for t in relaxed)
    # every transaction that writes outcomes commits synchronously
    assert completing and not any(t in relaxed for t in completing)
    assert failing_ones and not any(t in relaxed for t in failing_ones)
    assert fetch(factory, clean_table, failing).status == TaskStatus.FAILED
    assert fetch(factory, clean_table, failing).progress == 30
    assert {fetch(factory, clean_table, n).status for n in (1, 2, 3)} == {TaskStatus.COMPLETED}
    engine.dispose()
