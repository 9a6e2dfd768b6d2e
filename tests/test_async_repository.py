"""AsyncTaskRepository: the same operations, awaited, through asyncpg."""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue import (
    AsyncTaskRepository,
    InvalidTransitionError,
    TaskNotFoundError,
    TaskQueueDatabaseError,
    TaskRepository,
    TaskStatus,
)

T = TypeVar("T")


def public_methods(cls: type) -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and callable(member) and not isinstance(member, property)
    }


def public_names(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_the_twins_have_the_same_surface() -> None:
    """Same public names (methods and properties), each method with the same signature
    (parameters, defaults, return annotation), every repository method awaitable."""
    extra = {"sync_repository"}  # the async side's bridge to its sync twin
    assert public_names(TaskRepository) == public_names(AsyncTaskRepository) - extra
    for name in public_methods(TaskRepository):
        ours, theirs = getattr(TaskRepository, name), getattr(AsyncTaskRepository, name)
        assert inspect.signature(ours) == inspect.signature(theirs), name
        assert inspect.iscoroutinefunction(theirs), name
        assert (theirs.__doc__ or "").endswith(ours.__doc__ or ""), name


def test_the_twins_take_the_same_constructor_options() -> None:
    """``AsyncTaskRepository(session, model, ...)`` takes the options of ``TaskRepository``
    under the same names, kinds, defaults and annotations; only the session differs."""
    ours = list(inspect.signature(TaskRepository).parameters.values())
    theirs = list(inspect.signature(AsyncTaskRepository).parameters.values())
    assert [p.name for p in theirs] == [p.name for p in ours]
    assert theirs[1:] == ours[1:]


@pytest.fixture
def run_async(
    database_url: str, clean_table: type[Any]
) -> Callable[[Callable[[AsyncSession], Awaitable[T]]], T]:
    url = make_url(database_url).set(drivername="postgresql+asyncpg")

    def run(body: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async def main() -> T:
            engine = create_async_engine(url)
            try:
                async with async_sessionmaker(engine)() as session:
                    return await body(session)
            finally:
                await engine.dispose()

        return asyncio.run(main())

    return run


def test_a_full_round_trip(run_async: Any, clean_table: type[Any], session: Session) -> None:
    async def body(async_session: AsyncSession) -> dict[str, Any]:
        repo = AsyncTaskRepository(async_session, clean_table)
        task_id = await repo.enqueue("export", {"project_id": 7})
        again, created = await repo.enqueue_if_not_exists("import", {"f": 1})
        same, created_again = await repo.enqueue_if_not_exists("import", {"f": 1})
        await async_session.commit()
        task = await repo.dequeue("export")
        await async_session.commit()
        assert task is not None and task.id == task_id
        await repo.update_progress(task.id, 60, lease_token=task.lease_token)
        progress = await repo.get_task_progress("export", project_id=7)
        await repo.complete_task(task.id, result={"rows": 3}, lease_token=task.lease_token)
        await async_session.commit()
        stored = await repo.get_task(task.id)
        depth = await repo.queue_depth()
        return {
            "created": (created, created_again, again == same),
            "progress": progress,
            "status": stored.status if stored else None,
            "result": stored.result if stored else None,
            "depth": [(d.task_type, d.ready) for d in depth],
        }

    outcome = run_async(body)
    assert outcome == {
        "created": (True, False, True),
        "progress": 60,
        "status": TaskStatus.COMPLETED,
        "result": {"rows": 3},
        "depth": [("import", 1)],
    }


def test_errors_propagate_and_write_nothing(
    run_async: Any, clean_table: type[Any], session: Session
) -> None:
    async def body(async_session: AsyncSession) -> None:
        repo = AsyncTaskRepository(async_session, clean_table)
        with pytest.raises(TypeError, match="payload"):
            await repo.enqueue("x", {"bad": object()})
        with pytest.raises(TaskNotFoundError):
            await repo.complete_task(12345)
        task_id = await repo.enqueue("x", {}, run_at=timedelta(hours=1))
        with pytest.raises(InvalidTransitionError):
            await repo.fail_task(task_id, "not running")
        with pytest.raises(ValueError, match="progress"):
            await repo.update_progress(task_id, 101)
        await async_session.rollback()

    run_async(body)
    assert session.scalar(select(func.count()).select_from(clean_table)) == 0


def test_an_async_scoped_session_stands_for_the_current_scopes_session(
    database_url: str, clean_table: type[Any], session: Session
) -> None:
    """With ``async_scoped_session`` scoped to the asyncio task, each task's repository
    runs in that task's ``AsyncSession``: one commits its enqueue, the other rolls back."""
    url = make_url(database_url).set(drivername="postgresql+asyncpg")

    async def main() -> list[tuple[bool, int]]:
        engine = create_async_engine(url)
        scoped = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)

        async def in_task(commit: bool) -> tuple[bool, int]:
            repo = AsyncTaskRepository(scoped, clean_table)
            task_id = await repo.enqueue("a", {"commit": commit})
            same = repo.session is scoped()
            await (scoped.commit() if commit else scoped.rollback())
            await scoped.remove()
            return same, task_id

        try:
            return list(await asyncio.gather(in_task(True), in_task(False)))
        finally:
            await engine.dispose()

    outcomes = asyncio.run(main())
    assert [same for same, _ in outcomes] == [True, True]
    stored = session.execute(select(clean_table.id, clean_table.payload)).all()
    assert stored == [(outcomes[0][1], {"commit": True})]


def test_construction_is_validated(clean_table: type[Any], session: Session) -> None:
    with pytest.raises(TypeError, match="AsyncSession"):
        AsyncTaskRepository(session, clean_table)  # type: ignore[arg-type]

    async def body() -> None:
        engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
        async with AsyncSession(engine) as async_session:
            with pytest.raises(TypeError, match="TaskMixin"):
                AsyncTaskRepository(async_session, dict)  # type: ignore[type-var]
            with pytest.raises(ValueError, match="lease_duration"):
                AsyncTaskRepository(async_session, clean_table, lease_duration=timedelta(0))
        await engine.dispose()

    asyncio.run(body())


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_a_refused_connection_is_a_task_queue_database_error_as_on_the_sync_twin(
    database_url: str, clean_table: type[Any], driver: str
) -> None:
    """A database that refuses connections: the sync twin's driver error leaves as
    ``TaskQueueDatabaseError``, and so must the async twin's (asyncpg raises a bare
    ``ConnectionRefusedError`` for it, which SQLAlchemy passes on unwrapped)."""
    with socket.socket() as unlistened:  # bound, never listening: connections are refused
        unlistened.bind(("127.0.0.1", 0))
        url = make_url(database_url).set(host="127.0.0.1", port=unlistened.getsockname()[1])
        engine = create_engine(url)
        try:
            with Session(engine) as session, pytest.raises(TaskQueueDatabaseError):
                TaskRepository(session, clean_table).enqueue("x", {})
        finally:
            engine.dispose()

        async def body() -> None:
            async_engine = create_async_engine(url.set(drivername=f"postgresql+{driver}"))
            try:
                async with AsyncSession(async_engine) as async_session:
                    with pytest.raises(TaskQueueDatabaseError):
                        await AsyncTaskRepository(async_session, clean_table).enqueue("x", {})
            finally:
                await async_engine.dispose()

        asyncio.run(body())
