"""The conformance suite: every test here runs on every database the queue supports
(``database_url`` is parametrised by backend: PostgreSQL, then SQLite, a fresh file
of the run's own), and every test that takes ``make_worker`` against every worker twin:
``Worker``, ``AsyncWorker`` with plain handlers on its threads, and ``AsyncWorker`` with
``async def`` handlers.

A test that checks what only one database does is marked ``only_on("postgresql")``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from backends import BACKENDS, backend_database, engine_for
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from worker_harness import make_worker

__all__ = [
    "database_url",
    "engine",
    "make_worker",
    "session_factory",
]  # quick polls and short leases, for every twin


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of this run on each backend in turn, dropped afterwards."""
    with backend_database(request) as url:
        yield url


# the session-scoped fixtures built on ``database_url``, overridden here so that the
# tests outside this folder never get one made for a backend of this suite
@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    yield from engine_for(database_url)


@pytest.fixture(scope="session")
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine)
