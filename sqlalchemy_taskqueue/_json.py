"""How the queue stores JSON documents (``payload``, ``result``) on any database.

Documents are written by the database's own JSON type and read back as text, decoded
here row by row, so that a document the decoder cannot take spoils only its own row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, ColumnElement, Text, cast, type_coerce
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from sqlalchemy_taskqueue._autogenerate import RevisionRendered
from sqlalchemy_taskqueue.backends import find_backend, supported_dialects

__all__ = ["JSONDocument", "JSONDocumentType", "UndecodableJSON"]


class UndecodableJSON:
    """What a ``payload`` or ``result`` reads as when the stored document cannot be
    decoded (nested too deep for Python's JSON decoder, or not JSON at all): the row
    still loads, so one bad document never breaks a claim batch, a listing or
    ``taskqueue show``.  A worker fails such a task at once, without running a handler
    or retrying it.  (The repository refuses such documents before they are written;
    they come from SQL written around it.)

    >>> UndecodableJSON("RecursionError: maximum recursion depth exceeded")
    <undecodable JSON: RecursionError: maximum recursion depth exceeded>
    """

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"<undecodable JSON: {self.error}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UndecodableJSON) and other.error == self.error

    def __hash__(self) -> int:
        return hash(self.error)


def _decode_json(text: Any) -> Any:
    if not isinstance(text, str):  # decoded by the driver (read without our cast)
        return text
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as exc:
        return UndecodableJSON(f"{type(exc).__name__}: {exc}")


class JSONDocumentType(RevisionRendered, TypeDecorator[Any]):
    """The database's JSON type, as its backend chooses (:meth:`Backend.json_type
    <sqlalchemy_taskqueue.backends.base.Backend.json_type>`; SQLAlchemy's ``JSON`` where no
    backend serves the dialect).  Python ``None`` is stored as SQL NULL, so an absent ``result`` is NULL rather than the JSON literal
    ``null``.

    Documents are read back as text and decoded here, row by row, instead of by the
    driver inside its fetch: a document the decoder cannot take reads as
    :class:`UndecodableJSON` and spoils only its own row (a driver's decoder raising
    mid-fetch would lose every row of the result, a whole claim batch).

    Alembic's autogenerate writes it as the version-1 JSON type of every backend
    (:meth:`revision_type`).

    Example::

        payload: Mapped[Any] = mapped_column(JSONDocumentType(), nullable=False)
    """

    impl = JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """The JSON type the dialect's backend stores documents in.

        >>> from sqlalchemy.dialects import sqlite
        >>> type(JSONDocumentType().load_dialect_impl(sqlite.dialect())).__name__  # no backend yet
        '_SQliteJson'
        """
        backend = find_backend(dialect.name)
        if backend is None:
            return dialect.type_descriptor(JSON(none_as_null=True))
        return dialect.type_descriptor(backend.json_type(dialect))

    def column_expression(self, colexpr: ColumnElement[Any]) -> ColumnElement[Any]:
        """The column read as text (``CAST(payload AS TEXT)``), decoded by
        :meth:`result_processor`.

        >>> from sqlalchemy import column
        >>> print(JSONDocumentType().column_expression(column("payload")))
        CAST(payload AS TEXT)
        """
        return type_coerce(cast(colexpr, Text), self)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any]:
        """Decodes the text of one document; see :class:`UndecodableJSON`.

        >>> from sqlalchemy.engine.default import DefaultDialect
        >>> decode = JSONDocumentType().result_processor(DefaultDialect(), None)
        >>> decode('{"a": [1]}'), decode("[" * 100_000 + "]" * 100_000)
        ({'a': [1]}, <undecodable JSON: RecursionError: maximum recursion depth exceeded while decoding a JSON array from a unicode string>)
        """
        return _decode_json

    def revision_type(self) -> TypeEngine[Any]:
        """What a revision creates the column with: ``JSON``, with each backend's own
        JSON type as its variant.

        >>> JSONDocumentType().revision_type().with_variant  # doctest: +ELLIPSIS
        <bound method TypeEngine.with_variant of JSON(none_as_null=True)...>
        """
        revision_type: TypeEngine[Any] = JSON(none_as_null=True)
        backends = (find_backend(name) for name in supported_dialects())
        for backend in filter(None, backends):
            for dialect, variant in backend.json_type_v1()._variant_mapping.items():
                revision_type = revision_type.with_variant(variant, dialect)
        return revision_type


#: The type of ``payload`` and ``result``.
JSONDocument = JSONDocumentType()
