"""What PostgreSQL's planner makes of the queue's statements on a large table: the
batch statements (claim, lease rescue, cleanup) fetch the rows they pick through the
primary key, the claim of a queue with concurrency keys walks its indexes, and the
recent failures are read from the finished-rows index; none of them reads the whole
table."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from plans import plan_on
from sqlalchemy import Engine

from sqlalchemy_taskqueue._concurrency import key_slots_table
from sqlalchemy_taskqueue.backends.base import ClaimRequest
from sqlalchemy_taskqueue.backends.postgresql import _statements as statements
from sqlalchemy_taskqueue.backends.postgresql._backend import claim_statement_and_params


def _claim_of(table: Any) -> tuple[Any, dict[str, Any]]:
    return claim_statement_and_params(
        table, ClaimRequest(None, 400, timedelta(seconds=30), "w", relaxed_commit=False)
    )


def _prefetching_claim_of(table: Any) -> tuple[Any, dict[str, Any]]:
    """A worker's claim: 4 of the 400 go to free slots, the rest are prefetched."""
    return claim_statement_and_params(
        table,
        ClaimRequest(None, 400, timedelta(seconds=30), "w", relaxed_commit=True, starting=4),
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


def test_recent_failures_read_the_finished_index_not_the_whole_table(
    clean_table: type[Any], engine: Engine
) -> None:
    """30,000 finished rows, one in fifty failed: the latest 20 failures are read newest
    first from the finished-rows index, which stops after a few hundred entries.  Sorted
    ``NULLS LAST``, against the index's order, the query read the whole table."""
    table = clean_table.__tablename__
    stmt = statements.recent_failures_statement(clean_table.__table__, limit=20)
    plan = plan_on(
        engine,
        stmt,
        {},
        table,
        f"INSERT INTO {table} (type, payload, status, started_at, completed_at) "
        "SELECT 'a', '{}', CASE WHEN n % 50 = 0 THEN 'failed' ELSE 'completed' END, "
        "now() - make_interval(secs => n + 1), now() - make_interval(secs => n) "
        "FROM generate_series(1, 30000) AS n",
    )
    assert "Seq Scan" not in plan, plan
    assert f"Index Scan Backward using ix_{table}_finished on {table}" in plan, plan


def test_a_keyed_claim_walks_the_indexes_and_reads_no_table_whole(
    clean_table: type[Any], engine: Engine
) -> None:
    """30,000 pending tasks, half of them over 100 concurrency keys, and the slots of
    20,000 keys used before: the claim of a queue that uses keys reads the keyed tasks
    from their claim index, the slots through the slots' primary key, the tasks without a
    key from theirs, and fetches what it claims by id; no table is read whole."""
    table = clean_table.__tablename__
    slots = key_slots_table(clean_table.__table__).name
    stmt, params = claim_statement_and_params(
        clean_table.__table__,
        ClaimRequest(None, 8, timedelta(seconds=30), "w", starting=4, keyed=True),
    )
    plan = plan_on(
        engine,
        stmt,
        params,
        table,
        f"INSERT INTO {table} (type, payload, concurrency_key, concurrency_limit) "
        "SELECT 'a', '{}', CASE WHEN n % 2 = 0 THEN 'key-' || n % 100 END, "
        "CASE WHEN n % 2 = 0 THEN 1 END FROM generate_series(1, 30000) AS n",
        f"INSERT INTO {slots} (concurrency_key, slot) "
        "SELECT 'key-' || n, 1 FROM generate_series(0, 19999) AS n",
        f"ANALYZE {slots}",
    )
    assert f"Seq Scan on {table} " not in plan and f"Seq Scan on {slots}" not in plan, plan
    assert f"Index Scan using ix_{table}_keyed_claimable on {table}" in plan, plan
    assert f"Index Scan using ix_{table}_claimable on {table}" in plan, plan
    assert f"using {slots}_pkey on {slots}" in plan, plan
