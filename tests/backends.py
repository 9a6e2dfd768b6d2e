"""The databases the conformance suite runs on, one throwaway database each.

* ``postgresql``: a database created for the run on the server the tests use (see
  ``conftest.server_url``), dropped afterwards;
* ``sqlite``: a fresh file in the run's temporary directory (WAL mode), deleted with it.

Tests that check what only one database does are marked ``@only_on("postgresql")``;
they are skipped, with that reason, on the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, create_engine

from sqlalchemy_taskqueue.backends.sqlite import configure_engine
from sqlalchemy_taskqueue.contrib.testing import throwaway_database

BACKENDS = ["postgresql", "sqlite"]
F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def backend_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a throwaway database on the backend ``request.param`` names."""
    if request.param == "sqlite":
        directory = request.getfixturevalue("tmp_path_factory").mktemp("sqlite")
        yield f"sqlite:///{directory / 'queue.db'}"
        return
    with throwaway_database(request.getfixturevalue("server_url")) as url:
        yield url


def engine_for(database_url: str) -> Iterator[Engine]:
    """For a fixture: an engine on ``database_url``, disposed afterwards."""
    engine = create_engine(database_url, pool_size=20, max_overflow=20)
    if engine.dialect.name == "sqlite":
        configure_engine(engine)  # as the SQLite docs tell applications to
    yield engine
    engine.dispose()


def only_on(*backends: str, reason: str = "") -> Callable[[F], F]:
    """Mark a test that checks what only ``backends`` do (their SQL, plans, channels)."""

    def mark(test: F) -> F:
        return pytest.mark.only_on(*backends, reason=reason)(test)

    return mark


def skip_unless_backend(item: pytest.Item, backend: str) -> None:
    """Skip ``item`` on ``backend`` when its ``only_on`` mark leaves that backend out."""
    marker = item.get_closest_marker("only_on")
    if marker is not None and backend not in marker.args:
        why = marker.kwargs.get("reason") or f"only {' and '.join(marker.args)} can"
        pytest.skip(f"not on {backend}: {why}")


def _dialect_name(bind: Any) -> str:
    get_bind = getattr(bind, "get_bind", None)
    return str((get_bind() if get_bind is not None else bind).dialect.name)


def instant(bind: Any, seconds: float = 0, *, base: str | None = None) -> str:
    """SQL text, in the database of ``bind`` (a session, connection or engine), for the
    instant ``seconds`` after now (or after the timestamp column ``base``)."""
    if _dialect_name(bind) == "sqlite":
        origin = base or "'now'"
        return f"strftime('%Y-%m-%d %H:%M:%f000', {origin}, '{seconds:+f} seconds')"
    return f"({base or 'now()'} + interval '{seconds} seconds')"


def database_now(bind: Any) -> Any:
    """The database clock (on PostgreSQL the transaction's start), as an aware datetime."""
    from sqlalchemy import select

    from sqlalchemy_taskqueue._timestamps import DatabaseNow

    return bind.scalar(select(DatabaseNow()))
