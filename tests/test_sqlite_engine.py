"""What ``configure_engine`` sets on a SQLite engine, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sqlalchemy_taskqueue.backends.sqlite import configure_engine
from sqlalchemy_taskqueue.backends.sqlite._connections import BUSY_TIMEOUT_MS


def test_each_connection_gets_wal_a_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = configure_engine(create_engine(f"sqlite:///{tmp_path / 'queue.db'}"))
    try:
        with engine.connect() as connection:
            pragmas = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            }
    finally:
        engine.dispose()
    assert pragmas == {
        "journal_mode": "wal",
        "busy_timeout": BUSY_TIMEOUT_MS,
        "foreign_keys": 1,
        "synchronous": 1,  # NORMAL
    }


def test_an_immediate_engine_takes_the_write_lock_when_a_transaction_begins(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    immediate = configure_engine(create_engine(url), immediate=True)
    other = create_engine(url, connect_args={"timeout": 0})
    try:
        with other.begin() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
        with immediate.begin() as holder:
            holder.execute(text("SELECT count(*) FROM t"))  # a read only, yet it holds the lock
            with pytest.raises(Exception, match="locked"), other.begin() as writer:
                writer.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        immediate.dispose()
        other.dispose()


def test_an_engine_of_another_database_is_refused(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with pytest.raises(ValueError, match="expects a SQLite engine, not postgresql"):
            configure_engine(engine)
        assert not engine.dispatch.begin  # nothing was set up on it
    finally:
        engine.dispose()
