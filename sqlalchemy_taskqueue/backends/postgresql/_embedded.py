"""Finding a PostgreSQL server: the configured one, a local one, or an embedded one.

Tests, examples and ``make demo`` call :func:`resolve_database_url`, which returns the
first of:

1. the URL in the first environment variable given that is set (for example
   ``TASKQUEUE_TEST_DATABASE_URL`` or ``TASKQUEUE_DATABASE_URL``);
2. PostgreSQL on ``127.0.0.1:5432`` (user ``postgres``, trust authentication), when it
   answers;
3. an embedded PostgreSQL started from the ``pgserver`` package (install the
   ``embedded`` extra) in a local folder, stopped when the process exits.

Example::

        url = resolve_database_url("TASKQUEUE_DATABASE_URL")
        engine = create_engine(url)
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from sqlalchemy_taskqueue._urls import DATABASE_URL_ENV, normalize_url

__all__ = [
    "LOCAL_SERVER_URL",
    "EmbeddedServer",
    "async_driver_url",
    "async_engine_arguments",
    "default_url",
    "resolve_database_url",
    "start_embedded_server",
]

LOCAL_SERVER_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
DEFAULT_EMBEDDED_DIR = ".taskqueue-pg"

logger = logging.getLogger(__name__)


def default_url(url: URL) -> URL:
    """``url`` with the psycopg2 driver when it names none (``postgres://`` is read as
    ``postgresql://``).

    >>> default_url(make_url("postgres://u:p@db/app")).render_as_string(hide_password=False)
    'postgresql+psycopg2://u:p@db/app'
    """
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg2")
    return url


def async_driver_url(url: str | URL) -> str:
    """The same database through an async driver: psycopg 3 keeps its driver (it has an
    async face), any other PostgreSQL URL gets asyncpg.

    >>> async_driver_url("postgresql+psycopg2://u:p@db/app")
    'postgresql+asyncpg://u:p@db/app'
    >>> async_driver_url("postgresql+psycopg://u@db/app")
    'postgresql+psycopg://u@db/app'
    """
    parsed = default_url(make_url(normalize_url(url)))
    if parsed.drivername != "postgresql+psycopg":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


#: libpq URL parameters and what asyncpg calls them (``connect_args``)
_ASYNCPG_PARAMETERS = {"sslmode": "ssl", "connect_timeout": "timeout"}
#: URL parameters SQLAlchemy's asyncpg dialect takes itself
_ASYNCPG_DIALECT_PARAMETERS = {"prepared_statement_cache_size", "prepared_statement_name_func"}


def async_engine_arguments(url: str | URL) -> tuple[str, dict[str, Any]]:
    """``(url, connect_args)`` for ``create_async_engine`` on the same database.

    asyncpg does not read libpq's URL parameters, so they move to ``connect_args``
    under asyncpg's names (``sslmode`` -> ``ssl``, ``connect_timeout`` -> ``timeout``,
    ``application_name`` -> ``server_settings``); a parameter asyncpg does not know is a
    ``ValueError`` instead of a worker that can never connect.

    >>> async_engine_arguments("postgresql://app@db/app?sslmode=require&application_name=w1")
    ('postgresql+asyncpg://app@db/app', {'server_settings': {'application_name': 'w1'}, 'ssl': 'require'})
    """
    parsed = make_url(async_driver_url(url))
    if parsed.get_dialect().driver != "asyncpg":
        return parsed.render_as_string(hide_password=False), {}
    import asyncpg  # the async extra

    accepted = set(inspect.signature(asyncpg.connect).parameters) | _ASYNCPG_DIALECT_PARAMETERS
    connect_args: dict[str, Any] = {}
    for name, value in parsed.query.items():
        if isinstance(value, tuple):
            raise ValueError(f"the database URL repeats the parameter {name!r}")
        if name == "application_name":
            connect_args.setdefault("server_settings", {})["application_name"] = value
        elif name in _ASYNCPG_PARAMETERS:
            target = _ASYNCPG_PARAMETERS[name]
            connect_args[target] = float(value) if target == "timeout" else value
        elif name not in accepted:
            raise ValueError(
                f"the database URL parameter {name!r} has no asyncpg equivalent; "
                "drop it or use a postgresql+psycopg:// URL"
            )
    moved = [name for name in parsed.query if name not in accepted]
    return parsed.difference_update_query(moved).render_as_string(hide_password=False), (
        connect_args
    )


def _local_server_answers() -> bool:
    import psycopg2

    try:
        connection = psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3
        )
    except psycopg2.Error:
        return False
    connection.close()
    return True


class EmbeddedServer:
    """A running embedded PostgreSQL; :meth:`stop` stops it once no process uses it.

    Example::

        server = start_embedded_server()
        engine = create_engine(server.url)
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.url: str = normalize_url(str(handle.get_uri()))

    def stop(self) -> None:
        """Stop the server (pgserver keeps it running while other processes use it).

        Example::

            server = start_embedded_server()
            try:
                run_tests(server.url)
            finally:
                server.stop()
        """
        self._handle.cleanup()


def start_embedded_server(
    data_dir: str | os.PathLike[str] = DEFAULT_EMBEDDED_DIR,
) -> EmbeddedServer:
    """Start (or reuse) an embedded PostgreSQL whose data lives in ``data_dir``.

    The server is also stopped when the Python process exits.  Requires the ``embedded``
    extra (``pip install 'sqlalchemy-taskqueue[embedded]'``).

    Example::

        server = start_embedded_server("/tmp/pg")
        engine = create_engine(server.url)
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI)
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError(
            "No database URL is set, nothing answers on 127.0.0.1:5432, and the embedded "
            "server is not installed: pip install 'sqlalchemy-taskqueue[embedded]'"
        ) from exc
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    logger.info("starting embedded PostgreSQL in %s", path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = pgserver.get_server(str(path), cleanup_mode="stop")
    return EmbeddedServer(handle)


def resolve_database_url(
    *env_vars: str, embedded_dir: str | os.PathLike[str] = DEFAULT_EMBEDDED_DIR
) -> str:
    """The database to use: an environment variable, the local server, or an embedded one.

    Example::

        resolve_database_url("TASKQUEUE_TEST_DATABASE_URL", "TASKQUEUE_DATABASE_URL")  # 'postgresql+psycopg2://postgres@127.0.0.1:5432/postgres'
    """
    for name in env_vars or (DATABASE_URL_ENV,):
        value = os.environ.get(name, "").strip()
        if value:
            return normalize_url(value)
    if _local_server_answers():
        return LOCAL_SERVER_URL
    return start_embedded_server(embedded_dir).url
