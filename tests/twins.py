"""Running the same tests against the sync classes and their async twins.

A test written in plain synchronous code runs unchanged against the async twins:

* :func:`async_session_for` gives an ``AsyncSession`` over asyncpg; the test gets its
  synchronous face (``AsyncSession.sync_session``) and the whole test body runs inside
  SQLAlchemy's greenlet bridge (``conftest.pytest_pyfunc_call``), so that face does its
  I/O through asyncpg.
* :class:`AwaitingRepository` calls every method of an ``AsyncTaskRepository`` and
  awaits it (``await_only``) from that synchronous code.
* :class:`AsyncWorkerRunner` drives an ``AsyncWorker`` from a thread: ``run()`` runs it
  on a new event loop with a fresh asyncpg engine.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import await_only, greenlet_spawn

from sqlalchemy_taskqueue import (
    AsyncTaskRepository,
    AsyncWorker,
    HandlerRegistry,
    TaskRepository,
    Worker,
)
from sqlalchemy_taskqueue._engines import dispose_async_engine
from sqlalchemy_taskqueue.backends.postgresql._embedded import (
    async_driver_url,
    async_engine_arguments,
)
from sqlalchemy_taskqueue.backends.sqlite import configure_engine
from sqlalchemy_taskqueue.worker._asyncio import DaemonThreadPool

TWINS = ["sync", "async"]
T = TypeVar("T")


def async_url(url: str | Any) -> Any:
    """The async form of a database URL: aiosqlite on SQLite; on PostgreSQL psycopg 3
    stays, anything else is asyncpg."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    return make_url(async_driver_url(url))


def async_engine_for(url: str | Any, **options: Any) -> AsyncEngine:
    """An async engine on the database at ``url`` (a SQLite one set up as
    :func:`~sqlalchemy_taskqueue.backends.sqlite.configure_engine` does)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(async_url(parsed), **options)
        configure_engine(engine.sync_engine)
        return engine
    target, connect_args = async_engine_arguments(parsed.render_as_string(hide_password=False))
    return create_async_engine(target, connect_args=connect_args, **options)


@contextmanager
def async_session_for(node: pytest.Item, url: Any) -> Iterator[AsyncSession]:
    """An ``AsyncSession`` on a loop of its own; the test ``node`` runs in the greenlet."""
    loop = asyncio.new_event_loop()
    engine = async_engine_for(url)
    session = AsyncSession(engine)
    session.info.update(async_session=session, loop=loop)
    node.async_twin_loop = loop  # type: ignore[attr-defined]
    try:
        yield session
    finally:
        loop.run_until_complete(session.close())
        loop.run_until_complete(engine.dispose())
        loop.close()


def release(session: Session) -> None:
    """Roll back and close ``session`` from fixture code (outside the greenlet)."""
    async_session = session.info.get("async_session")
    if async_session is None:
        session.close()
    else:
        session.info["loop"].run_until_complete(async_session.close())


class AwaitingRepository:
    """An ``AsyncTaskRepository`` with each coroutine method awaited in place, for test
    code running in the greenlet bridge; ``session`` is the sync face of its session."""

    def __init__(self, repository: AsyncTaskRepository[Any]) -> None:
        self.twin = repository
        self.session: Session = repository.session.sync_session

    def __getattr__(self, name: str) -> Any:
        member = getattr(self.twin, name)
        if not inspect.iscoroutinefunction(member):
            return member

        def awaited(*args: Any, **kwargs: Any) -> Any:
            return await_only(member(*args, **kwargs))

        return awaited


def make_repository(session: Session, model: type[Any], **options: Any) -> Any:
    """A ``TaskRepository``, or the awaited twin when ``session`` is an async session's
    sync face."""
    async_session = session.info.get("async_session")
    if async_session is None:
        return TaskRepository(session, model, **options)
    return AwaitingRepository(AsyncTaskRepository(async_session, model, **options))


class AsyncWorkerRunner:
    """An ``AsyncWorker`` driven like a ``Worker``: ``run()`` blocks the calling thread
    while the worker runs on a new event loop (with an asyncpg engine of that loop)."""

    def __init__(
        self, worker: AsyncWorker[Any], factory: async_sessionmaker[Any], like: Engine
    ) -> None:
        self.worker = worker
        self._factory = factory  # the worker's, bound to an engine of each run's loop
        self._url = like.url.render_as_string(hide_password=False)  # the sync engine's database

    def run(self, **options: Any) -> None:
        async def main() -> None:
            engine = async_engine_for(self._url, pool_size=20, max_overflow=20)
            self._factory.configure(bind=engine)
            try:
                await self.worker.run(**options)
            finally:
                await dispose_async_engine(engine)  # never waits for a frozen network

        asyncio.run(main())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.worker, name)


#: daemon threads (like the workers'), so a test handler that never returns cannot keep
#: the test's event loop from closing
_WRAPPER_THREADS = DaemonThreadPool(16, "test-coroutine-handler")


def as_coroutines(handlers: Any) -> Any:
    """``handlers`` with each plain function wrapped in an ``async def`` that awaits it on
    a thread: the worker runs them as coroutines (created, awaited, cancelled on the loop)
    while test handlers that block keep working."""

    def wrap(function: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        if not callable(function) or inspect.iscoroutinefunction(function):
            return function  # a bad value is passed on to be refused

        @functools.wraps(function)
        async def coroutine(task: Any, ctx: Any) -> Any:
            loop = asyncio.get_running_loop()
            # in the coroutine's context, as asyncio.to_thread would (its current span)
            in_context = functools.partial(contextvars.copy_context().run, function, task, ctx)
            return await loop.run_in_executor(_WRAPPER_THREADS, in_context)

        return coroutine

    if isinstance(handlers, HandlerRegistry):
        wrapped = HandlerRegistry(handlers.model)
        for task_type in handlers:
            spec = handlers.spec(task_type)
            assert spec is not None
            wrapped.add(task_type, wrap(spec.function), timeout=spec.timeout_seconds)
        for schedule in handlers.schedules:
            wrapped.schedule(
                schedule.task_type,
                name=schedule.name,
                cron=schedule.cron,
                every=schedule.every,
                payload=schedule.payload,
                timezone=schedule.timezone,
                missed=schedule.missed,
                catch_up=schedule.catch_up,
                priority=schedule.priority,
                max_retries=schedule.max_retries,
                overlap=schedule.overlap,
                **schedule.columns,
            )
        return wrapped
    if isinstance(handlers, dict):
        return {task_type: wrap(function) for task_type, function in handlers.items()}
    return handlers


def worker_maker(twin: str) -> Callable[..., Any]:
    """``make(session_factory, model, handlers, **options)`` for the ``twin`` worker:
    ``sync`` (``Worker``), ``async`` (``AsyncWorker``, plain handlers on its threads) or
    ``async-def`` (``AsyncWorker``, every handler a coroutine)."""

    def make(factory: Any, model: type[Any], handlers: Any, **options: Any) -> Any:
        if twin == "sync":
            return Worker(factory, model, handlers, **options)
        if twin == "async-def":
            handlers = as_coroutines(handlers)
        if not isinstance(factory, sessionmaker):  # a bad value, passed on to be refused
            return AsyncWorker(factory, model, handlers, **options)
        engine = factory.kw["bind"]
        assert isinstance(engine, Engine)
        # the sync factory's Session class (and so its event listeners) carries over
        async_factory = async_sessionmaker(sync_session_class=factory.class_)
        worker = AsyncWorker(async_factory, model, handlers, **options)
        return AsyncWorkerRunner(worker, async_factory, engine)

    make.twin = twin  # type: ignore[attr-defined]
    return make


def in_session(twin: str, factory: sessionmaker[Session], body: Callable[[Session], T]) -> T:
    """``body(session)`` in a session of the ``twin``'s kind: from ``factory``, or the
    sync face of an ``AsyncSession`` over asyncpg on a new loop, with ``body`` run in the
    greenlet bridge (callable from any thread)."""
    if twin == "sync":
        with factory() as session:
            return body(session)
    engine = factory.kw["bind"]

    async def main() -> T:
        async_engine = async_engine_for(engine.url.render_as_string(hide_password=False))
        try:
            async with AsyncSession(async_engine) as async_session:
                async_session.info.update(async_session=async_session)
                return await greenlet_spawn(body, async_session.sync_session)
        finally:
            await async_engine.dispose()

    return asyncio.run(main())


@contextmanager
def running(worker: Any, **kw: Any) -> Iterator[threading.Thread]:
    """Run the worker on a background thread; stop it and join on exit."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            worker.run(**kw)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert errors == []
