"""Every public function, class and method of the package shows an example of its use.

Public means: named in the ``__all__`` of a public module (one whose name, and whose
packages' names, do not start with an underscore; or, in a module without ``__all__``,
defined there under a name without a leading underscore), and the public methods and
properties of such classes.  Private modules' helpers need no example.  Exceptions are exempt: their docstrings say when they are
raised.  An example is an ``Example::`` block or a doctest.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

import sqlalchemy_taskqueue


def package_modules() -> Iterator[ModuleType]:
    yield sqlalchemy_taskqueue
    for info in pkgutil.walk_packages(sqlalchemy_taskqueue.__path__, "sqlalchemy_taskqueue."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            yield importlib.import_module(info.name)


def exported(module: ModuleType) -> Iterator[tuple[str, Any]]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and (inspect.isfunction(value) or inspect.isclass(value))
            and value.__module__ == module.__name__
        ]
    for name in names:
        yield f"{module.__name__}.{name}", getattr(module, name)


def documented_objects() -> dict[str, Any]:
    found: dict[str, Any] = {}
    seen: set[int] = set()
    for module in package_modules():
        for name, value in exported(module):
            if id(value) in seen or not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            seen.add(id(value))
            if inspect.isclass(value) and issubclass(value, BaseException):
                continue
            found[name] = value
            if inspect.isclass(value):
                for member, attribute in vars(value).items():
                    function = attribute.fget if isinstance(attribute, property) else attribute
                    function = getattr(function, "__func__", function)
                    if not member.startswith("_") and inspect.isfunction(function):
                        found[f"{name}.{member}"] = function
    return found


OBJECTS = documented_objects()


def test_the_walk_finds_the_public_api() -> None:
    for name in ("TaskRepository.enqueue", "Worker.run", "TaskMixin", "TaskContext"):
        assert f"sqlalchemy_taskqueue.{name}" in OBJECTS
    assert "sqlalchemy_taskqueue.backends.base.Backend" in OBJECTS
    assert not any(part.startswith("_") for name in OBJECTS for part in name.split(".")[1:])


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_public_object_has_an_example(name: str) -> None:
    doc = inspect.getdoc(OBJECTS[name]) or ""
    assert "Example::" in doc or ">>>" in doc, f"{name}: no example in its docstring"
