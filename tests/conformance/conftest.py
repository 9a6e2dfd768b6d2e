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
from backends import BACKENDS, backend_database
from worker_harness import make_worker

__all__ = ["database_url", "make_worker"]  # quick polls and short leases, for every twin


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of this run on each backend in turn, dropped afterwards."""
    with backend_database(request) as url:
        yield url
