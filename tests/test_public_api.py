"""The package's public surface: which modules are public, what each exports, and the
import paths that keep working.

A public module is one whose dotted path has no part starting with an underscore.  Each
has an ``__all__`` naming only what exists there and what is documented (a docstring;
for a constant a ``#:`` comment, or the module docstring naming it); the package's ``__all__`` is the API users import
from the top.  Everything else is private and may change without notice.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import typing
from pathlib import Path
from types import ModuleType

import pytest

import sqlalchemy_taskqueue

PACKAGE_ROOT = Path(sqlalchemy_taskqueue.__file__).parent


def public_module_names() -> list[str]:
    names = ["sqlalchemy_taskqueue"]
    for info in pkgutil.walk_packages([str(PACKAGE_ROOT)], "sqlalchemy_taskqueue."):
        parts = info.name.split(".")[1:]
        if not any(part.startswith("_") for part in parts):
            names.append(info.name)
    return sorted(names)


PUBLIC_MODULES = public_module_names()


def documented_constants(module: ModuleType) -> set[str]:
    """Names assigned at module level with a ``#:`` comment above or a string below."""
    source = inspect.getsource(module)
    lines = source.splitlines()
    tree = ast.parse(source)
    found: set[str] = set()
    for position, node in enumerate(tree.body):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names = [target.id for target in targets if isinstance(target, ast.Name)]
        if not names:
            continue
        above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
        following = tree.body[position + 1] if position + 1 < len(tree.body) else None
        documented_below = (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        )
        if above.startswith("#:") or documented_below:
            found.update(names)
    return found


def test_the_public_modules_are_few_and_named() -> None:
    assert PUBLIC_MODULES == [
        "sqlalchemy_taskqueue",
        "sqlalchemy_taskqueue.async_repository",
        "sqlalchemy_taskqueue.async_worker",
        "sqlalchemy_taskqueue.asyncio",
        "sqlalchemy_taskqueue.backends",
        "sqlalchemy_taskqueue.backends.base",
        "sqlalchemy_taskqueue.backends.postgresql",
        "sqlalchemy_taskqueue.backends.sqlite",
        "sqlalchemy_taskqueue.backoff",
        "sqlalchemy_taskqueue.cli",
        "sqlalchemy_taskqueue.contrib",
        "sqlalchemy_taskqueue.contrib.prometheus",
        "sqlalchemy_taskqueue.contrib.testing",
        "sqlalchemy_taskqueue.dashboard",
        "sqlalchemy_taskqueue.durations",
        "sqlalchemy_taskqueue.exceptions",
        "sqlalchemy_taskqueue.metrics",
        "sqlalchemy_taskqueue.migrations",
        "sqlalchemy_taskqueue.models",
        "sqlalchemy_taskqueue.monitoring",
        "sqlalchemy_taskqueue.repository",
        "sqlalchemy_taskqueue.scheduling",
        "sqlalchemy_taskqueue.status",
        "sqlalchemy_taskqueue.testing",
        "sqlalchemy_taskqueue.worker",
    ]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_a_public_module_exports_only_what_exists_and_is_documented(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no module docstring"
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    constants = documented_constants(module)
    for attribute in exported:
        value = getattr(module, attribute)  # raises if __all__ names what is not there
        is_type_alias = typing.get_origin(value) is not None  # Literal[...], Union[...]
        if (inspect.isclass(value) or callable(value)) and not is_type_alias:
            assert inspect.getdoc(value), f"{name}.{attribute} has no docstring"
        elif not inspect.ismodule(value):
            assert attribute in constants or attribute in module.__doc__, (
                f"{name}.{attribute} is not documented (a #: comment above it, or the "
                "module docstring naming it)"
            )


def test_the_package_all_is_sorted_and_is_the_api() -> None:
    exported = sqlalchemy_taskqueue.__all__
    assert exported == sorted(exported)
    for attribute in exported:
        assert getattr(sqlalchemy_taskqueue, attribute) is not None


@pytest.mark.parametrize(
    ("old_path", "attribute", "new_home"),
    [
        ("sqlalchemy_taskqueue.worker", "Worker", "sqlalchemy_taskqueue"),
        ("sqlalchemy_taskqueue.worker", "WorkerStats", "sqlalchemy_taskqueue"),
        ("sqlalchemy_taskqueue.repository", "TaskRepository", "sqlalchemy_taskqueue"),
        (
            "sqlalchemy_taskqueue.migrations",
            "create_task_table_v1",
            "sqlalchemy_taskqueue.migrations",
        ),
        ("sqlalchemy_taskqueue.monitoring", "QueueStats", "sqlalchemy_taskqueue.monitoring"),
        (
            "sqlalchemy_taskqueue.metrics",
            "QueueCollector",
            "sqlalchemy_taskqueue.contrib.prometheus",
        ),
        (
            "sqlalchemy_taskqueue.metrics",
            "serve_worker_metrics",
            "sqlalchemy_taskqueue.contrib.prometheus",
        ),
        ("sqlalchemy_taskqueue.testing", "task_factory", "sqlalchemy_taskqueue.contrib.testing"),
        (
            "sqlalchemy_taskqueue.testing",
            "throwaway_database",
            "sqlalchemy_taskqueue.contrib.testing",
        ),
        ("sqlalchemy_taskqueue.async_worker", "AsyncWorker", "sqlalchemy_taskqueue.asyncio"),
        (
            "sqlalchemy_taskqueue.async_repository",
            "AsyncTaskRepository",
            "sqlalchemy_taskqueue.asyncio",
        ),
        ("sqlalchemy_taskqueue", "AsyncWorker", "sqlalchemy_taskqueue.asyncio"),
        ("sqlalchemy_taskqueue", "HandlerRegistry", "sqlalchemy_taskqueue.worker"),
        ("sqlalchemy_taskqueue", "TaskContext", "sqlalchemy_taskqueue.worker"),
    ],
)
def test_earlier_import_paths_keep_working(old_path: str, attribute: str, new_home: str) -> None:
    old = getattr(importlib.import_module(old_path), attribute)
    assert old is getattr(importlib.import_module(new_home), attribute)


def test_the_backend_is_found_by_dialect_name() -> None:
    from sqlalchemy.dialects import mssql, postgresql, sqlite

    from sqlalchemy_taskqueue import UnsupportedDialectError
    from sqlalchemy_taskqueue.backends import backend_for, supported_dialects

    assert supported_dialects() == ("postgresql", "sqlite")
    assert backend_for(postgresql.dialect()).name == "postgresql"
    assert backend_for(sqlite.dialect()).name == "sqlite"
    with pytest.raises(UnsupportedDialectError, match=r"'mssql' dialect.*postgresql, sqlite"):
        backend_for(mssql.dialect())


def test_the_enqueue_methods_take_the_same_options() -> None:
    """The options every enqueue method takes are spelled out in each signature, for
    editors and type checkers (a ``TypedDict`` with ``Unpack`` would refuse the model's
    own columns, which ``**columns`` takes); this keeps the three from drifting apart."""
    from sqlalchemy_taskqueue import AsyncTaskRepository, TaskRepository

    def options(method: object) -> list[tuple[str, object, object]]:
        parameters = list(inspect.signature(method).parameters.values())  # type: ignore[arg-type]
        shared = [p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
        shared = [p for p in shared if p.name != "dedupe_key"]
        shared += [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
        return [(p.name, p.default, p.annotation) for p in shared]

    expected = options(TaskRepository.enqueue)
    assert [name for name, _, _ in expected] == [
        "max_retries",
        "priority",
        "run_at",
        "timeout_seconds",
        "concurrency_key",
        "concurrency_limit",
        "columns",
    ]
    for repository in (TaskRepository, AsyncTaskRepository):
        for name in ("enqueue", "enqueue_many", "enqueue_if_not_exists"):
            assert options(getattr(repository, name)) == expected, f"{repository.__name__}.{name}"
