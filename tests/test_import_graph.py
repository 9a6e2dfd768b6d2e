"""How the package's modules depend on each other: no import cycle, data flows one way
(command line and workers, then the repository, then the backend), and only the
database's own backend package names its database or drivers.

Only imports that run when a module is imported count: those at module level, outside
``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import sqlalchemy_taskqueue

PACKAGE_ROOT = Path(sqlalchemy_taskqueue.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}


def runtime_imports(name: str) -> set[str]:
    """The package's modules ``name`` imports when it is imported."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:  # module level only: function-level imports run later
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes = [node] if not isinstance(node, ast.Try) else node.body
        for statement in nodes:
            if isinstance(statement, ast.ImportFrom):
                if statement.level:
                    base = package.split(".")
                    base = base[: len(base) - (statement.level - 1)]
                    target = ".".join(base + ([statement.module] if statement.module else []))
                else:
                    target = statement.module or ""
                for alias in statement.names:
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if candidate in MODULES else target)
            elif isinstance(statement, ast.Import):
                found.update(alias.name for alias in statement.names)
    return {target for target in found if target in MODULES and target != name}


GRAPH = {name: runtime_imports(name) for name in MODULES}


def test_there_is_no_import_cycle() -> None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, " -> ".join([*visiting[visiting.index(name) :], name])
        visiting.append(name)
        for target in sorted(GRAPH[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


@pytest.mark.parametrize(
    "lower",
    [
        "sqlalchemy_taskqueue.repository",
        "sqlalchemy_taskqueue.models",
        "sqlalchemy_taskqueue.monitoring",
        "sqlalchemy_taskqueue.backends.base",
        "sqlalchemy_taskqueue.backends.postgresql._backend",
    ],
)
def test_lower_layers_do_not_import_the_workers_or_the_command_line(lower: str) -> None:
    reachable: set[str] = set()
    pending = [lower]
    while pending:
        for target in GRAPH[pending.pop()]:
            if target not in reachable:
                reachable.add(target)
                pending.append(target)
    upper = {
        name
        for name in reachable
        if name.startswith(("sqlalchemy_taskqueue.worker", "sqlalchemy_taskqueue.cli"))
    }
    assert not upper, f"{lower} reaches {sorted(upper)}"


DATABASE_WORDS = re.compile(r"postgresql|psycopg|asyncpg|pg_|jsonb", re.IGNORECASE)


def code_mentions(path: Path) -> list[str]:
    """Lines of code (not docstrings, comments, URL examples or messages) naming
    PostgreSQL or one of its drivers: imports, attribute access, names."""
    tree = ast.parse(path.read_text())
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Name, ast.Attribute)):
            continue
        text = ast.unparse(node)
        if DATABASE_WORDS.search(text):
            found.append(f"{path.name}:{node.lineno}: {text}")
    return found


def test_only_the_postgresql_backend_names_postgresql_in_code() -> None:
    backend = PACKAGE_ROOT / "backends" / "postgresql"
    allowed = {
        # the embedded PostgreSQL server that tests and examples may start
        "sqlalchemy_taskqueue.contrib.testing",
    }
    mentions = [
        mention
        for name, path in MODULES.items()
        if backend not in path.parents and name not in allowed
        for mention in code_mentions(path)
    ]
    assert mentions == []
