"""Helpers for testing applications that use the queue.

:func:`task_factory` builds a `factory_boy <https://factoryboy.readthedocs.io>`_ factory
for your task model, bound to a session (requires the ``test`` extra)::

    TaskFactory = task_factory(Task, session)
    task = TaskFactory(type="data_export", payload={"project_id": 7})
    failed = TaskFactory(status=TaskStatus.FAILED, error_message="boom")

Rows are flushed (not committed), so they live and die with the test's transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from .models import task_table
from .status import TaskStatus

__all__ = ["task_factory"]


def task_factory(model: type[Any], session: Session) -> Any:
    """A factory_boy ``SQLAlchemyModelFactory`` for ``model`` that flushes into ``session``.

    Example::

        TaskFactory = task_factory(Task, session)
        TaskFactory.create_batch(3, type="email")
    """
    import factory
    from factory.alchemy import SQLAlchemyModelFactory

    task_table(model)  # rejects anything that is not a task model

    meta = type(
        "Meta",
        (),
        {"model": model, "sqlalchemy_session": session, "sqlalchemy_session_persistence": "flush"},
    )
    return type(
        f"{model.__name__}Factory",
        (SQLAlchemyModelFactory,),
        {
            "Meta": meta,
            "type": "example",
            "payload": factory.Sequence(lambda n: {"n": n}),
            "status": TaskStatus.PENDING,
        },
    )
