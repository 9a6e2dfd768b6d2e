"""The worker's own engines: connection settings that bound every wait on the network,
per driver, and a disposal that cannot hang.

A worker whose network freezes (a partition, a dead load balancer, a proxy that stops
forwarding without closing anything) must neither wait forever for an answer nor keep
its process alive after a stop request.  The stop is bounded by the workers themselves,
whatever the engine (see :data:`~sqlalchemy_taskqueue.worker._base.STOP_BOUND`); the
settings here make the waits fail by themselves too, so a worker that rides out such an
outage finds out and reconnects instead of hanging until the network comes back.

``taskqueue worker`` builds its engine with :func:`create_worker_engine` (or
:func:`create_async_worker_engine` for ``--async``); an application that builds its own
engine gets none of this unless it asks::

    from sqlalchemy import create_engine
    from sqlalchemy_taskqueue.backends.postgresql._connections import worker_connect_args

    engine = create_engine(url, connect_args=worker_connect_args(url))

What each driver gets (a setting the URL already has is left as it is):

* **psycopg2 and psycopg 3** (libpq): ``connect_timeout`` 10 s; TCP keepalives
  (``keepalives_idle`` 10 s, ``keepalives_interval`` 5 s, ``keepalives_count`` 3), so
  a silent peer is found within about 25 s; ``tcp_user_timeout`` 30 s for data the peer
  never acknowledges (libpq 12 and later); and on the server ``statement_timeout`` and
  ``idle_in_transaction_session_timeout``, 30 s each (``options=-c ...``).
* **asyncpg**: ``timeout`` 10 s to connect; ``command_timeout`` 40 s, enforced by the
  client on every statement (asyncpg has no keepalives); and the same two server
  settings, whose errors come first while the server can still answer.

The worker's statements take milliseconds (a claim, a batch of outcomes, a rescue of at
most a thousand rows) and its transactions never wait for anything but them, so 30 s
only ever ends a statement stuck behind a lock or a dead network, or the session of a
worker cut off in the middle of a transaction: until the server ends that session it
keeps the rows it updated locked, and rescue (``SKIP LOCKED``) passes over them, for as
long as the server's TCP stack takes to notice the client is gone (hours, by default).  Keepalives and ``tcp_user_timeout`` find a dead peer; they cannot find one
that still acknowledges every byte without answering (a proxy whose forwarding is
frozen): there the stop bound is what ends the worker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url

from ._embedded import async_engine_arguments

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "CONNECT_TIMEOUT",
    "STATEMENT_TIMEOUT",
    "create_async_worker_engine",
    "create_worker_engine",
    "worker_connect_args",
]

logger = logging.getLogger("sqlalchemy_taskqueue.worker")

#: Seconds to open a connection (the whole handshake, authentication included).
CONNECT_TIMEOUT = 10
#: Seconds a statement of the worker may run on the server, and a transaction of the
#: worker may sit idle there (its session then ends, and with it the transaction's locks).
STATEMENT_TIMEOUT = 30

#: TCP keepalives: first probe after 10 s of silence, then every 5 s, 3 unanswered end it.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5}
_KEEPALIVE_COUNT = 3
#: Milliseconds sent data may stay unacknowledged before the kernel drops the connection.
_TCP_USER_TIMEOUT_MS = 30_000
#: asyncpg's own per-statement timeout, later than the server's so that the server's
#: clearer error wins whenever the server can still answer.
_CLIENT_STATEMENT_TIMEOUT = STATEMENT_TIMEOUT + 10
#: What the server enforces on the worker's sessions.
_SERVER_SETTINGS = {
    "statement_timeout": f"{STATEMENT_TIMEOUT}s",
    "idle_in_transaction_session_timeout": f"{STATEMENT_TIMEOUT}s",
}


def worker_connect_args(url: str | URL) -> dict[str, Any]:
    """``connect_args`` that bound a worker's waits on the network, for ``url``'s driver
    (psycopg2, psycopg 3 or asyncpg; other drivers get none).  Settings the URL already
    has are left to the URL.

    >>> worker_connect_args("postgresql+psycopg2://app@db/app?connect_timeout=3")["keepalives_idle"]
    10
    >>> "connect_timeout" in worker_connect_args("postgresql+psycopg2://app@db/app?connect_timeout=3")
    False
    """
    parsed = make_url(url) if isinstance(url, str) else url
    driver = parsed.get_dialect().driver
    if driver == "asyncpg":
        return _asyncpg_connect_args(parsed)
    if driver not in ("psycopg2", "psycopg"):
        return {}
    wanted: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT,
        **_KEEPALIVES,
        "keepalives_count": _KEEPALIVE_COUNT,
    }
    if _libpq_version(driver) >= 120000:  # older libpq refuses the parameter outright
        wanted["tcp_user_timeout"] = _TCP_USER_TIMEOUT_MS
    args = {name: value for name, value in wanted.items() if name not in parsed.query}
    options = parsed.query.get("options", "")
    if isinstance(options, str):
        added = [
            f"-c {name}={value}" for name, value in _SERVER_SETTINGS.items() if name not in options
        ]
        if added:
            args["options"] = " ".join([options, *added]).strip()
    return args


def _asyncpg_connect_args(url: URL) -> dict[str, Any]:
    """asyncpg takes no libpq parameters: its own names, as ``connect_args``."""
    args: dict[str, Any] = {}
    if "connect_timeout" not in url.query and "timeout" not in url.query:
        args["timeout"] = CONNECT_TIMEOUT
    if "command_timeout" not in url.query:
        args["command_timeout"] = _CLIENT_STATEMENT_TIMEOUT
    args["server_settings"] = dict(_SERVER_SETTINGS)
    return args


def _libpq_version(driver: str) -> int:
    """The version of the libpq the driver runs on (``160002`` for 16.2)."""
    if driver == "psycopg2":
        import psycopg2.extensions

        return int(psycopg2.extensions.libpq_version())
    import psycopg

    return int(psycopg.pq.version())


def create_worker_engine(url: str | URL, *, concurrency: int) -> Engine:
    """The engine ``taskqueue worker`` runs a :class:`~sqlalchemy_taskqueue.Worker` on:
    :func:`worker_connect_args` applied, and a pool sized for ``concurrency`` slots
    (one connection per slot, the claim connection, heartbeats and LISTEN's).

    Example::

        engine = create_worker_engine("postgresql+psycopg2://app@db/app", concurrency=8)
    """
    return create_engine(
        url,
        pool_size=concurrency + 3,
        max_overflow=concurrency,
        pool_pre_ping=True,
        connect_args=worker_connect_args(url),
    )


def create_async_worker_engine(url: str | URL, *, concurrency: int) -> AsyncEngine:
    """The engine ``taskqueue worker --async`` runs an
    :class:`~sqlalchemy_taskqueue.AsyncWorker` on: the same database through asyncpg
    (or psycopg 3 for a ``postgresql+psycopg://`` URL, see
    :func:`~sqlalchemy_taskqueue.backends.postgresql._embedded.async_engine_arguments`), with
    :func:`worker_connect_args` applied; a ``ValueError`` names a URL parameter asyncpg
    cannot take.

    Example::

        engine = create_async_worker_engine("postgresql://app@db/app", concurrency=8)
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    async_url, moved = async_engine_arguments(url)
    connect_args = worker_connect_args(async_url)
    settings = {**connect_args.get("server_settings", {}), **moved.pop("server_settings", {})}
    connect_args.update(moved)  # the URL's own values win
    if settings:
        connect_args["server_settings"] = settings
    return create_async_engine(
        async_url,
        pool_size=concurrency + 3,
        max_overflow=concurrency,
        pool_pre_ping=True,
        connect_args=connect_args,
    )
