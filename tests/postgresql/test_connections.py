"""The worker's own engines: every wait on the network is bounded, whatever the driver."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from sqlalchemy_taskqueue._engines import dispose_async_engine, dispose_engine
from sqlalchemy_taskqueue.backends.postgresql._connections import (
    CONNECT_TIMEOUT,
    STATEMENT_TIMEOUT,
    create_async_worker_engine,
    create_worker_engine,
    worker_connect_args,
)


def test_libpq_drivers_get_connect_keepalive_and_statement_timeouts() -> None:
    for driver in ("psycopg2", "psycopg"):
        args = worker_connect_args(f"postgresql+{driver}://app@db/app")
        assert args["connect_timeout"] == CONNECT_TIMEOUT
        assert (args["keepalives"], args["keepalives_idle"], args["keepalives_count"]) == (1, 10, 3)
        assert args["tcp_user_timeout"] == 30_000
        assert args["options"] == (
            f"-c statement_timeout={STATEMENT_TIMEOUT}s"
            f" -c idle_in_transaction_session_timeout={STATEMENT_TIMEOUT}s"
        )


def test_settings_the_url_has_are_left_to_it() -> None:
    args = worker_connect_args(
        "postgresql+psycopg2://app@db/app?connect_timeout=3&keepalives_idle=60"
        "&options=-c%20search_path%3Dqueue"
    )
    assert "connect_timeout" not in args and "keepalives_idle" not in args
    # the URL's options are kept, the timeouts added to them
    assert args["options"] == (
        f"-c search_path=queue -c statement_timeout={STATEMENT_TIMEOUT}s"
        f" -c idle_in_transaction_session_timeout={STATEMENT_TIMEOUT}s"
    )
    own = worker_connect_args(
        "postgresql+psycopg2://app@db/app?options=-c%20statement_timeout%3D5s"
    )
    assert own["options"] == (
        f"-c statement_timeout=5s -c idle_in_transaction_session_timeout={STATEMENT_TIMEOUT}s"
    )


def test_asyncpg_gets_its_own_names_and_a_client_side_statement_timeout() -> None:
    args = worker_connect_args("postgresql+asyncpg://app@db/app")
    assert args["timeout"] == CONNECT_TIMEOUT
    # enforced by the client: it ends a statement even when the server cannot answer
    assert args["command_timeout"] > STATEMENT_TIMEOUT
    assert args["server_settings"] == {
        "statement_timeout": f"{STATEMENT_TIMEOUT}s",
        "idle_in_transaction_session_timeout": f"{STATEMENT_TIMEOUT}s",
    }
    assert worker_connect_args("postgresql+pg8000://app@db/app") == {}


def test_the_worker_engine_connects_with_its_timeouts(database_url: str) -> None:
    engine = create_worker_engine(database_url, concurrency=2)
    try:
        with engine.connect() as connection:
            assert connection.scalar(text("SHOW statement_timeout")) == f"{STATEMENT_TIMEOUT}s"
            idle = connection.scalar(text("SHOW idle_in_transaction_session_timeout"))
            assert idle == f"{STATEMENT_TIMEOUT}s"
            dsn = connection.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
        assert (dsn["connect_timeout"], dsn["keepalives_idle"]) == (str(CONNECT_TIMEOUT), "10")
        assert dsn["tcp_user_timeout"] == "30000"
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_the_async_worker_engine_connects_with_its_timeouts(database_url: str, driver: str) -> None:
    url = make_url(database_url).set(drivername=f"postgresql+{driver}")
    url = url.update_query_dict({"application_name": "tq-timeouts"})

    async def settings() -> tuple[Any, ...]:
        engine = create_async_worker_engine(url, concurrency=2)
        try:
            async with engine.connect() as connection:
                timeout = await connection.scalar(text("SHOW statement_timeout"))
                idle = await connection.scalar(text("SHOW idle_in_transaction_session_timeout"))
                name = await connection.scalar(text("SHOW application_name"))
                raw = await connection.get_raw_connection()
                driver_connection: Any = raw.driver_connection
                client_timeout = (
                    driver_connection._config.command_timeout if driver == "asyncpg" else None
                )
        finally:
            await engine.dispose()
        return timeout, idle, name, client_timeout

    timeout, idle, name, client_timeout = asyncio.run(settings())
    assert timeout == idle == f"{STATEMENT_TIMEOUT}s"
    assert name == "tq-timeouts"  # the URL's own setting kept
    if driver == "asyncpg":
        assert client_timeout > STATEMENT_TIMEOUT


def test_disposing_of_engines_is_bounded_when_the_network_freezes(database_url: str) -> None:
    """asyncpg waits for the server to acknowledge a connection's close, without a limit:
    ``await engine.dispose()`` hung until the network came back."""
    from faults.harness import pausable_proxy

    with pausable_proxy(database_url) as proxy:
        engine = create_worker_engine(proxy.url, concurrency=1)

        async def dispose_async() -> tuple[bool, float]:
            async_engine = create_async_worker_engine(proxy.url, concurrency=1)
            async with async_engine.connect() as connection:
                await connection.execute(text("SELECT 1"))  # back to the pool, open
            proxy.cut()
            began = time.monotonic()
            disposed = await dispose_async_engine(async_engine, timeout=1.0)
            return disposed, time.monotonic() - began

        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            disposed, took = asyncio.run(dispose_async())
            assert not disposed and took < 2.0  # cut off at its timeout
            began = time.monotonic()
            dispose_engine(engine, timeout=1.0)
            assert time.monotonic() - began < 2.0
        finally:
            proxy.heal()
            engine.dispose()
