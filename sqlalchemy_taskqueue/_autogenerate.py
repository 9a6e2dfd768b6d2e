"""How Alembic's autogenerate writes the queue's column types into a revision.

``alembic revision --autogenerate`` writes a column type of a library other than
SQLAlchemy as ``<its module>.<its repr>`` and imports nothing for it, so a revision of
a model with :class:`~sqlalchemy_taskqueue.TaskMixin` would name
``sqlalchemy_taskqueue.models.TaskStatusType()`` without importing it and fail with a
``NameError`` at ``alembic upgrade``.  The queue's types (:class:`RevisionRendered`)
therefore present themselves to Alembic as the plain SQLAlchemy types that create the
same columns, written with nothing but the ``import sqlalchemy as sa`` every Alembic
template has: a revision runs in a project set up by ``alembic init`` without
``script.py.mako`` or ``env.py`` learning anything (beyond ``target_metadata``), and,
like the frozen migration helpers, never imports the live library.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.types import TypeEngine

__all__ = ["RevisionRendered", "revision_expression"]

# a type's repr names nested types bare (``astext_type=Text()``): qualify each with ``sa.``
_BARE_TYPE = re.compile(r"(?<![\w.])(?=[A-Z]\w*\()")


def _written_alone(type_: TypeEngine[Any]) -> str:
    module = type(type_).__module__
    dialect = re.match(r"sqlalchemy\.dialects\.(\w+)", module)
    namespace = f"sa.dialects.{dialect.group(1)}." if dialect else "sa."
    name, _, arguments = repr(type_).partition("(")
    return f"{namespace}{name}({_BARE_TYPE.sub('sa.', arguments)}"


def revision_expression(type_: TypeEngine[Any]) -> str:
    """``type_`` (a SQLAlchemy type, with its per-dialect variants) written as Python
    that needs only ``import sqlalchemy as sa``.  A dialect's own type is reached as
    ``sa.dialects.<name>``, which the revision finds loaded: the dialect it runs on
    has been imported by then.

    >>> import sqlalchemy as sa
    >>> revision_expression(sa.Text())
    'sa.Text()'
    >>> revision_expression(sa.JSON(none_as_null=True).with_variant(sa.Text(), "sqlite"))
    "sa.JSON(none_as_null=True).with_variant(sa.Text(), 'sqlite')"
    """
    variants = type_._variant_mapping
    written = _written_alone(type_)
    for dialect in sorted(variants):
        written += f".with_variant({_written_alone(variants[dialect])}, {dialect!r})"
    return written


class RevisionRendered:
    """Mixed into the queue's column types: Alembic's autogenerate writes the type as
    :meth:`revision_type` renders it (see the module's docstring).

    Alembic writes a type from outside SQLAlchemy as ``f"{type_.__module__}.{type_!r}"``;
    each instance therefore names ``sa`` as its module and reprs as the SQLAlchemy
    expression after it.  The class keeps its own ``__module__``.

    Example::

        class TaskStatusType(RevisionRendered, TypeDecorator[TaskStatus]):
            def revision_type(self) -> TypeEngine[Any]:
                return Text()
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__module__ = "sa"

    def revision_type(self) -> TypeEngine[Any]:
        """The plain SQLAlchemy type a revision creates the column with.

        Example::

            TaskStatusType().revision_type()  # Text()
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        # what follows the ``sa.`` Alembic puts first
        return revision_expression(self.revision_type()).removeprefix("sa.")
