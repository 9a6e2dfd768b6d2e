"""The task table as a declarative mixin.

Mix :class:`TaskMixin` into your own declarative model, name the table, and add whatever
columns your application needs::

    from sqlalchemy import ForeignKey
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
    from sqlalchemy_taskqueue import TaskMixin

    class Base(DeclarativeBase):
        pass

    class Task(TaskMixin, Base):
        __tablename__ = "tasks"

        project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))

The mixin brings the columns of the queue (``id``, ``type``, ``payload``, ``status`` ...),
the CHECK constraints and the partial indexes the hot paths need, all named after the
table so several queue tables can live in one ``MetaData``.

To add indexes or table options of your own, build ``__table_args__`` with
:func:`merge_table_args`, which keeps the library's indexes.  (A plain tuple or dict
assigned to ``__table_args__`` is merged the same way automatically; a model that ends up
without the claim index is rejected when the class is created.)

For a ``MappedAsDataclass`` base use :class:`TaskDataclassMixin` instead; its fields are
keyword-only so your own fields may come without defaults.
"""

from __future__ import annotations

import functools
import uuid
import weakref
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    Uuid,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Mapped, MappedAsDataclass, declared_attr, mapped_column
from sqlalchemy.orm.properties import MappedColumn
from sqlalchemy.schema import SchemaItem
from sqlalchemy.sql.elements import conv
from sqlalchemy.types import TypeDecorator, TypeEngine

from ._autogenerate import RevisionRendered
from ._concurrency import key_slots_table
from ._controls import controls_table
from ._json import JSONDocument
from ._registry import workers_table
from ._schema import (
    ACTIVE_DEDUPE_PREDICATE,
    CLAIM_ORDER,
    CLAIMABLE_PREDICATE,
    FINISHED_PREDICATE,
    KEYED_CLAIMABLE_PREDICATE,
    LEASED_PREDICATE,
    partial_index,
)
from ._timestamps import DatabaseNow, Timestamp
from .exceptions import TaskTableError
from .scheduling._table import schedules_table
from .status import TaskStatus

__all__ = [
    "QUEUE_COLUMNS",
    "TaskDataclassMixin",
    "TaskMixin",
    "TaskStatusType",
    "claim_index_name",
    "merge_table_args",
    "missing_database_schema",
    "missing_queue_schema",
    "require_database_schema",
    "require_queue_schema",
    "task_table",
    "task_table_args",
]


# every claimed row's status is read back through this (a dict look-up costs a tenth of
# calling the enum)
_STATUS_BY_VALUE = {status.value: status for status in TaskStatus}


class TaskStatusType(RevisionRendered, TypeDecorator[TaskStatus]):
    """Stores :class:`TaskStatus` as text and reads it back as the enum.  Alembic's
    autogenerate writes it as ``sa.Text()``.

    Example::

        status: Mapped[TaskStatus] = mapped_column(TaskStatusType(), default=TaskStatus.PENDING)
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        """The text stored for a status (a :class:`TaskStatus` or its value).

        >>> from sqlalchemy.engine.default import DefaultDialect
        >>> TaskStatusType().process_bind_param(TaskStatus.FAILED, DefaultDialect())
        'failed'
        """
        return None if value is None else TaskStatus(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> TaskStatus | None:
        """The :class:`TaskStatus` for the text read from the database.

        >>> from sqlalchemy.engine.default import DefaultDialect
        >>> TaskStatusType().process_result_value("failed", DefaultDialect())
        <TaskStatus.FAILED: 'failed'>
        """
        if value is None:
            return None
        return _STATUS_BY_VALUE.get(value) or TaskStatus(value)  # ValueError if unknown

    def revision_type(self) -> TypeEngine[Any]:
        """``Text()``: what a revision creates the column with.

        >>> TaskStatusType().revision_type()
        Text()
        """
        return Text()


def task_table(model: Any) -> Table:
    """The table of a task model; ``TypeError`` unless ``model`` is a mapped task model.

    Example::

        task_table(Task).name  # 'tasks'
    """
    table = getattr(model, "__table__", None)
    if not isinstance(model, type) or not issubclass(model, (TaskMixin, TaskDataclassMixin)):
        lacks = ""  # a legacy model mapped without the mixin: name what its table lacks
        if (
            isinstance(model, type)
            and isinstance(table, Table)
            and (missing := missing_queue_schema(table))
        ):
            lacks = f"; {_lacking(model.__name__, table, missing)}"
        raise TypeError(
            f"model must be a mapped class that mixes in TaskMixin or TaskDataclassMixin, "
            f"got {model!r}{lacks}"
        )
    if not isinstance(table, Table):
        raise TypeError(f"model {model.__name__} is not mapped to a table (abstract mixin?)")
    if table not in _VERIFIED_TABLES:
        require_queue_schema(model.__name__, table)
        _VERIFIED_TABLES.add(table)
    return table


#: Tables found complete by :func:`task_table` (checked once, not on every repository).
_VERIFIED_TABLES: weakref.WeakSet[Table] = weakref.WeakSet()


def missing_queue_schema(table: Table) -> list[str]:
    """The library's columns, indexes and constraints that ``table`` lacks (none for a
    table built from :class:`TaskMixin`).

    Example::

        missing_queue_schema(Task.__table__)  # [] or e.g. ["column 'lease_token'"]
    """
    missing = [f"column {name!r}" for name in QUEUE_COLUMNS if name not in table.c]
    present = {str(index.name) for index in table.indexes}
    present.update(str(constraint.name) for constraint in table.constraints)
    missing += [
        f"{kind} {name!r}" for kind, name in _schema_items(table.name) if name not in present
    ]
    return missing


@functools.cache
def _schema_items(table_name: str) -> tuple[tuple[str, str], ...]:
    """``(kind, name)`` of each index and constraint the library declares on a table."""
    return tuple(
        ("index" if isinstance(item, Index) else "constraint", str(getattr(item, "name", "")))
        for item in task_table_args(table_name)
    )


def require_queue_schema(model_name: str, table: Table) -> None:
    """``TypeError`` naming what is missing unless ``table`` has everything the queue
    needs (checked when a task model is declared and when a repository is created).

    Example::

        require_queue_schema("Task", Task.__table__)
    """
    missing = missing_queue_schema(table)
    if missing:
        raise TypeError(
            f"{_lacking(model_name, table, missing)}. Keep every TaskMixin column, and build "
            "__table_args__ with sqlalchemy_taskqueue.merge_table_args(cls, ...)."
        )


def _lacking(model_name: str, table: Table, missing: list[str]) -> str:
    return f"{model_name} (table {table.name!r}) lacks what the queue needs: {', '.join(missing)}"


def missing_database_schema(connection: Connection, table: Table) -> list[str] | None:
    """What the table as it is in the database lacks of the model's columns and of the
    library's indexes (``[]`` when nothing); ``None`` when the table does not exist.

    The model is checked when it is declared; this checks the live table, which an
    unapplied migration (or one written by hand) may have left behind.  It reads the
    catalog a few times, so call it once per start, not per operation.

    Example::

        with engine.connect() as connection:
            missing_database_schema(connection, Task.__table__)  # e.g. ["column 'result'"]
    """
    inspector = inspect(connection)
    if not inspector.has_table(table.name, schema=table.schema):
        return None
    columns = {column["name"] for column in inspector.get_columns(table.name, schema=table.schema)}
    indexes = {index["name"] for index in inspector.get_indexes(table.name, schema=table.schema)}
    missing = [f"column {column.name!r}" for column in table.columns if column.name not in columns]
    missing += [
        f"index {name!r}"
        for kind, name in _schema_items(table.name)
        if kind == "index" and name not in indexes
    ]
    return missing


def require_database_schema(connection: Connection, table: Table) -> None:
    """:class:`~sqlalchemy_taskqueue.exceptions.TaskTableError` naming the table and what
    it lacks, with the fix, unless the table in the database has everything the queue
    needs (workers check at start, ``taskqueue`` commands before they run).

    Example::

        with engine.connect() as connection:
            require_database_schema(connection, Task.__table__)
    """
    missing = missing_database_schema(connection, table)
    if missing == []:
        return
    schema = f", schema={table.schema!r}" if table.schema else ""
    create = f"sqlalchemy_taskqueue.migrations.create_task_table_v5({table.name!r}{schema})"
    if missing is None:
        message = (
            f"The queue table {table.fullname!r} does not exist in the database. Create it: "
            f"`alembic upgrade head` with a revision that calls {create} "
            "(or Base.metadata.create_all(engine) without Alembic)."
        )
    else:
        message = (
            f"The queue table {table.fullname!r} in the database lacks what the queue needs: "
            f"{', '.join(missing)}. Migrate it: `alembic upgrade head` (a table created by "
            f"{create} has every one; `alembic revision --autogenerate` writes a revision "
            "adding what is missing)."
        )
    raise TaskTableError(table.fullname, missing, message)


def claim_index_name(table_name: str) -> str:
    """Name of the partial index the claim query walks, for ``table_name``.

    >>> claim_index_name("tasks")
    'ix_tasks_claimable'
    """
    return f"ix_{table_name}_claimable"


def keyed_claim_index_name(table_name: str) -> str:
    """Name of the partial index the claim walks for tasks with a concurrency key.

    >>> keyed_claim_index_name("tasks")
    'ix_tasks_keyed_claimable'
    """
    return f"ix_{table_name}_keyed_claimable"


#: A task has a concurrency key and a positive limit, or neither.
CONCURRENCY_CHECK = (
    "(concurrency_key IS NULL) = (concurrency_limit IS NULL) "
    "AND (concurrency_limit IS NULL OR concurrency_limit > 0)"
)


def task_table_args(table_name: str) -> tuple[SchemaItem, ...]:
    """The constraints and partial indexes of a queue table called ``table_name``.

    >>> ", ".join(item.name for item in task_table_args("tasks")[:2])
    'ck_tasks_status, ck_tasks_progress'
    """
    statuses = ", ".join(f"'{status.value}'" for status in TaskStatus)
    return (
        CheckConstraint(f"status IN ({statuses})", name=conv(f"ck_{table_name}_status")),
        CheckConstraint(
            "progress >= 0 AND progress <= 100", name=conv(f"ck_{table_name}_progress")
        ),
        CheckConstraint(
            "retry_count >= 0 AND max_retries >= 0", name=conv(f"ck_{table_name}_retries")
        ),
        CheckConstraint(CONCURRENCY_CHECK, name=conv(f"ck_{table_name}_concurrency")),
        partial_index(claim_index_name(table_name), *CLAIM_ORDER, where=CLAIMABLE_PREDICATE),
        partial_index(
            keyed_claim_index_name(table_name), *CLAIM_ORDER, where=KEYED_CLAIMABLE_PREDICATE
        ),
        partial_index(
            f"uq_{table_name}_active_dedupe",
            "type",
            "dedupe_key",
            where=ACTIVE_DEDUPE_PREDICATE,
            unique=True,
        ),
        partial_index(f"ix_{table_name}_lease_expiry", "lease_expires_at", where=LEASED_PREDICATE),
        partial_index(f"ix_{table_name}_finished", "completed_at", where=FINISHED_PREDICATE),
    )


def merge_table_args(cls: type[Any], *args: Any) -> tuple[Any, ...]:
    """``__table_args__`` with the library's indexes plus your own items and options.

    Positional items may be schema items (``Index``, ``UniqueConstraint`` ...), tuples of
    them, or dicts of table options (merged, later ones win).  Use it from a
    ``declared_attr``.

    Example::

        class Task(TaskMixin, Base):
            __tablename__ = "tasks"
            project_id: Mapped[int] = mapped_column()

            @declared_attr.directive
            def __table_args__(cls):
                return merge_table_args(
                    cls, Index("ix_tasks_project", "project_id"), {"comment": "app tasks"}
                )
    """
    items: list[Any] = list(task_table_args(cls.__tablename__))
    options: dict[str, Any] = {}
    for arg in args:
        if isinstance(arg, dict):
            options.update(arg)
        elif isinstance(arg, tuple):
            for item in arg:
                if isinstance(item, dict):
                    options.update(item)
                else:
                    items.append(item)
        else:
            items.append(arg)
    return (*items, options) if options else tuple(items)


class _ColumnFactory:
    """Builds the library's columns for plain or dataclass declarative classes.

    Column types, defaults and ordering are defined once here; the dataclass flavour
    adds only the dataclass arguments (``init``, ``kw_only``, ``default``).
    """

    def __init__(self, *, dataclass: bool) -> None:
        self._dataclass = dataclass

    def _column(
        self, *args: Any, init: bool = True, required: bool = False, **kwargs: Any
    ) -> MappedColumn[Any]:
        if self._dataclass:
            kwargs["kw_only"] = True
            kwargs["init"] = init
            if not required and "default" not in kwargs:
                kwargs["default"] = None
        return mapped_column(*args, **kwargs)

    def id(self) -> MappedColumn[Any]:
        return self._column(
            # SQLite numbers rows itself only in an INTEGER PRIMARY KEY (64 bits there)
            BigInteger().with_variant(Integer(), "sqlite"),
            Identity(always=False),
            primary_key=True,
            init=False,
            sort_order=-100,
        )

    def type(self) -> MappedColumn[Any]:
        return self._column(Text, nullable=False, required=True, sort_order=-99)

    def payload(self) -> MappedColumn[Any]:
        return self._column(JSONDocument, nullable=False, required=True, sort_order=-98)

    def status(self) -> MappedColumn[Any]:
        return self._column(
            TaskStatusType,
            nullable=False,
            default=TaskStatus.PENDING,
            server_default=TaskStatus.PENDING.value,
            sort_order=-97,
        )

    def small_int(self, default: int, order: int) -> MappedColumn[Any]:
        return self._column(
            Integer,
            nullable=False,
            default=default,
            server_default=text(str(default)),
            sort_order=order,
        )

    def timestamp(self, order: int, *, server_now: bool = False) -> MappedColumn[Any]:
        if server_now:
            return self._column(
                Timestamp,
                nullable=False,
                server_default=DatabaseNow(),
                sort_order=order,
            )
        return self._column(Timestamp, nullable=True, sort_order=order)

    def nullable_text(self, order: int) -> MappedColumn[Any]:
        return self._column(Text, nullable=True, sort_order=order)

    def nullable_int(self, order: int) -> MappedColumn[Any]:
        return self._column(Integer, nullable=True, sort_order=order)

    def result(self) -> MappedColumn[Any]:
        return self._column(JSONDocument, nullable=True, sort_order=-84)

    def lease_token(self) -> MappedColumn[Any]:
        return self._column(Uuid(as_uuid=True), nullable=True, sort_order=-82)

    def headers(self) -> MappedColumn[Any]:
        return self._column(JSONDocument, nullable=True, sort_order=-78)


_PLAIN = _ColumnFactory(dataclass=False)
_DATACLASS = _ColumnFactory(dataclass=True)


class TaskMixin:
    """The columns, constraints and indexes of a queue table, for a declarative model.

    Example::

        class Task(TaskMixin, Base):
            __tablename__ = "tasks"
            project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    """

    id: Mapped[int] = _PLAIN.id()
    """Primary key, a 64-bit identity (2^31 lifetime enqueues is reachable)."""
    type: Mapped[str] = _PLAIN.type()
    """Routing key: which handler runs the task."""
    payload: Mapped[Any] = _PLAIN.payload()
    """JSON arguments of the task."""
    status: Mapped[TaskStatus] = _PLAIN.status()
    """Where the task is in its life cycle (:class:`TaskStatus`)."""
    progress: Mapped[int] = _PLAIN.small_int(0, -96)
    """0..100, reported by the handler; never indexed so updates stay HOT."""
    priority: Mapped[int] = _PLAIN.small_int(0, -95)
    """Lower values run first."""
    run_at: Mapped[datetime] = _PLAIN.timestamp(-94, server_now=True)
    """Not claimable before this instant (scheduling and retry backoff)."""
    created_at: Mapped[datetime] = _PLAIN.timestamp(-93, server_now=True)
    """When the task was enqueued."""
    started_at: Mapped[datetime | None] = _PLAIN.timestamp(-92)
    """When the current or last attempt started (NULL while a claimed task waits in a
    worker for a slot: a rescue charges only started attempts)."""
    completed_at: Mapped[datetime | None] = _PLAIN.timestamp(-91)
    """When the task reached a finished state (completed, failed or cancelled)."""
    error_message: Mapped[str | None] = _PLAIN.nullable_text(-90)
    """The last failure."""
    retry_count: Mapped[int] = _PLAIN.small_int(0, -89)
    """Failed attempts so far."""
    max_retries: Mapped[int] = _PLAIN.small_int(3, -88)
    """Retry while ``retry_count < max_retries``."""
    dedupe_key: Mapped[str | None] = _PLAIN.nullable_text(-87)
    """Set by ``enqueue_if_not_exists``; unique per type among active tasks."""
    timeout_seconds: Mapped[int | None] = _PLAIN.nullable_int(-86)
    """Per-task limit on one attempt's run time, overriding the worker's per-type limit."""
    result: Mapped[Any] = _PLAIN.result()
    """JSON value returned by the handler."""
    lease_owner: Mapped[str | None] = _PLAIN.nullable_text(-83)
    """Identity of the worker that holds (or last held) the task."""
    lease_token: Mapped[uuid.UUID | None] = _PLAIN.lease_token()
    """Unique to one claim; writes carrying an older token are refused."""
    lease_expires_at: Mapped[datetime | None] = _PLAIN.timestamp(-81)
    """The task is rescued once this passes without a heartbeat."""
    concurrency_key: Mapped[str | None] = _PLAIN.nullable_text(-80)
    """Tasks sharing this key run at most ``concurrency_limit`` at a time, fleet-wide."""
    concurrency_limit: Mapped[int | None] = _PLAIN.nullable_int(-79)
    """How many tasks of ``concurrency_key`` may be in progress at once."""
    headers: Mapped[Any] = _PLAIN.headers()
    """What travels with the task besides its payload: the trace context of its enqueue
    (W3C ``traceparent``/``tracestate``) when OpenTelemetry is in use; NULL otherwise."""

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return merge_table_args(cls)  # type: ignore[arg-type]  # declared_attr passes the class

    def __init_subclass__(cls, **kwargs: Any) -> None:
        _merge_plain_table_args(cls)
        super().__init_subclass__(**kwargs)
        _require_queue_schema(cls)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id!r} type={self.type!r} status={self.status!s}>"


class TaskDataclassMixin(MappedAsDataclass):
    """:class:`TaskMixin` for a ``MappedAsDataclass`` declarative base.

    ``type`` and ``payload`` are required keyword arguments; every other library field is
    keyword-only with a default, so your own fields can be declared without defaults.

    Example::

        class Base(MappedAsDataclass, DeclarativeBase):
            pass

        class Task(TaskDataclassMixin, Base):
            __tablename__ = "tasks"
            project_id: Mapped[int]

        Task(42, type="export", payload={})
    """

    id: Mapped[int] = _DATACLASS.id()
    type: Mapped[str] = _DATACLASS.type()
    payload: Mapped[Any] = _DATACLASS.payload()
    status: Mapped[TaskStatus] = _DATACLASS.status()
    progress: Mapped[int] = _DATACLASS.small_int(0, -96)
    priority: Mapped[int] = _DATACLASS.small_int(0, -95)
    run_at: Mapped[datetime | None] = _DATACLASS.timestamp(-94, server_now=True)
    created_at: Mapped[datetime | None] = _DATACLASS.timestamp(-93, server_now=True)
    started_at: Mapped[datetime | None] = _DATACLASS.timestamp(-92)
    completed_at: Mapped[datetime | None] = _DATACLASS.timestamp(-91)
    error_message: Mapped[str | None] = _DATACLASS.nullable_text(-90)
    retry_count: Mapped[int] = _DATACLASS.small_int(0, -89)
    max_retries: Mapped[int] = _DATACLASS.small_int(3, -88)
    dedupe_key: Mapped[str | None] = _DATACLASS.nullable_text(-87)
    timeout_seconds: Mapped[int | None] = _DATACLASS.nullable_int(-86)
    result: Mapped[Any] = _DATACLASS.result()
    lease_owner: Mapped[str | None] = _DATACLASS.nullable_text(-83)
    lease_token: Mapped[uuid.UUID | None] = _DATACLASS.lease_token()
    lease_expires_at: Mapped[datetime | None] = _DATACLASS.timestamp(-81)
    concurrency_key: Mapped[str | None] = _DATACLASS.nullable_text(-80)
    concurrency_limit: Mapped[int | None] = _DATACLASS.nullable_int(-79)
    headers: Mapped[Any] = _DATACLASS.headers()

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return merge_table_args(cls)  # type: ignore[arg-type]  # declared_attr passes the class

    def __init_subclass__(cls, **kwargs: Any) -> None:
        _merge_plain_table_args(cls)
        super().__init_subclass__(**kwargs)
        _require_queue_schema(cls)


def _merge_plain_table_args(cls: type[Any]) -> None:
    own = cls.__dict__.get("__table_args__")
    if isinstance(own, (tuple, dict)) and "__tablename__" in cls.__dict__:
        cls.__table_args__ = merge_table_args(cls, own)


def _require_queue_schema(cls: type[Any]) -> None:
    table = cls.__dict__.get("__table__")
    if isinstance(table, Table):
        require_queue_schema(cls.__name__, table)
        schedules_table(table)  # the queue's own tables join the model's MetaData
        controls_table(table)
        key_slots_table(table)
        workers_table(table)


#: The columns :class:`TaskMixin` declares, which every queue table needs.
QUEUE_COLUMNS: tuple[str, ...] = tuple(TaskMixin.__annotations__)
