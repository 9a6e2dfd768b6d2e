"""Claimed rows as detached task instances, without the ORM's per-query loading set-up.

A worker hands each claimed task to its handler as a detached instance of the
application's model.  Loading one row through an ORM query builds the query's row
processors first (one per mapped column, every time), which on a wake-up from idle costs
as much as the claim's own round trip.  :func:`detached_loader` builds the same detached
instances from the claim statement's rows with SQLAlchemy's public state functions:
``ClassManager.new_instance`` (no ``__init__``, as the ORM itself does), the column
values written into :func:`~sqlalchemy.orm.attributes.instance_dict` (where the ORM's own
loaders put them) and the identity key from
:meth:`~sqlalchemy.orm.Mapper.identity_key_from_primary_key` set on the instance's state,
as the ORM's loading sets it for a new row: each instance looks exactly as if it had been
loaded and expunged (loaded, unmodified, detached), at about a third of the ORM's cost
per row.  (:func:`~sqlalchemy.orm.make_transient_to_detached` would do the same for
three times the work: it recomputes the key through the attribute system and then
commits and expires state that a fresh instance does not have.)  Attributes computed by
SQL (a ``column_property`` of an expression), which no claim row holds, are marked
expired, as the ORM's loading of those rows leaves them: they load on access once the
instance is in a session again, and are never read as ``None``.

Mappings that need the ORM's own loading get ``None`` and keep using it: inheritance or a
polymorphic discriminator (the row decides the class), ``load`` event listeners (which
``@reconstructor`` methods and mutable-type tracking install), a table column not
mapped as a plain column attribute, and a relationship the ORM may load with the row
(``lazy="selectin"`` or ``"immediate"`` load it by a query of their own).

Example::

    load = detached_loader(Task)
    if load is not None:
        tasks = load(session.execute(claim, params).all())
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import inspect
from sqlalchemy.orm import ColumnProperty, configure_mappers
from sqlalchemy.orm.attributes import instance_dict, instance_state
from sqlalchemy.orm.exc import UnmappedColumnError

__all__ = ["detached_loader"]

_T = TypeVar("_T")

# relationship loading that leaves a loaded instance's attribute unloaded (or empty)
_LOADED_ON_ACCESS = {
    "select",
    True,
    "raise",
    "raise_on_sql",
    "noload",
    None,
    "dynamic",
    "write_only",
}


@functools.cache
def detached_loader(model: type[_T]) -> Callable[[Sequence[Sequence[Any]]], list[_T]] | None:
    """A function building detached ``model`` instances from rows holding every column of
    the model's table in table order, or ``None`` when the mapping needs the ORM's own
    loading (see the module docstring).  Decided once per model.

    Example::

        load = detached_loader(Task)
        task = load([row])[0]  # inspect(task).detached is True
    """
    configure_mappers()  # the attributes' loaders are set up then
    mapper = inspect(model)
    if (
        mapper.inherits is not None
        or mapper.polymorphic_on is not None
        or mapper.polymorphic_map
        or mapper.class_manager.dispatch.load
        or any(rel.lazy not in _LOADED_ON_ACCESS for rel in mapper.relationships)
    ):
        return None
    keys: list[str] = []
    for column in mapper.local_table.columns:
        try:
            prop = mapper.get_property_by_column(column)
        except UnmappedColumnError:
            return None
        if not isinstance(prop, ColumnProperty) or list(prop.columns) != [column]:
            return None
        keys.append(prop.key)
    manager = mapper.class_manager
    # column attributes no row holds (SQL expressions): expired, as the ORM's loading of
    # the claim leaves them, so that they load on access instead of reading as None
    expired = frozenset(
        prop.key
        for prop in mapper.column_attrs
        if prop.key not in keys
        and not prop.deferred
        and manager[prop.key].impl.accepts_scalar_loader
    )
    new_instance = manager.new_instance
    identity_key = mapper.identity_key_from_primary_key
    key_positions = [
        list(mapper.local_table.columns).index(column) for column in mapper.primary_key
    ]

    def load(rows: Sequence[Sequence[Any]]) -> list[_T]:
        tasks: list[_T] = []
        for row in rows:
            task = new_instance()
            # the values go straight into the instance's dict, as the ORM's loaders put
            # them: loaded, with no change history; the identity key makes it detached
            instance_dict(task).update(zip(keys, row, strict=True))
            state = instance_state(task)
            state.key = identity_key([row[at] for at in key_positions])
            if expired:
                state.expired_attributes.update(expired)
            tasks.append(task)
        return tasks

    return load
