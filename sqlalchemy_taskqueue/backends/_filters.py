"""The dashboard's and the operators' task filters as SQL every database reads alike.

Example::

    select(Task).where(*query_conditions(Task.__table__, TaskQuery(task_type="email")))
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Table

from sqlalchemy_taskqueue.backends.base import TaskQuery

__all__ = ["query_conditions"]


def _search(table: Table, text: str) -> ColumnElement[bool]:
    # digits are an id, found through the primary key (an OR with the dedupe key would
    # read the whole table)
    if text.isdigit() and len(text) <= 18:
        return table.c.id == int(text)
    return table.c.dedupe_key == text


def query_conditions(table: Table, query: TaskQuery) -> list[ColumnElement[bool]]:
    """The conditions of ``query``'s filters (not its cursor or limit), as SQL.

    Example::

        conditions = query_conditions(Task.__table__, TaskQuery(task_type="email"))
    """
    c = table.c
    conditions: list[ColumnElement[bool]] = []
    if query.statuses:
        conditions.append(c.status.in_(list(query.statuses)))
    if query.task_type is not None:
        conditions.append(c.type == query.task_type)
    if query.created_after is not None:
        conditions.append(c.created_at >= query.created_after)
    if query.created_before is not None:
        conditions.append(c.created_at < query.created_before)
    for name, value in query.columns.items():
        conditions.append(c[name] == value)
    if query.search is not None:
        conditions.append(_search(table, query.search))
    return conditions
