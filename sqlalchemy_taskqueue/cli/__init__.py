"""The ``taskqueue`` command line (install the ``cli`` extra).

``taskqueue worker MODULE:ATTR`` runs a worker for the handlers (and model) of an app;
the operator commands inspect and repair the queue.  The database URL comes from
``--database-url`` or ``TASKQUEUE_DATABASE_URL``; it is printed only with the password
masked.  Run ``taskqueue --help`` or ``taskqueue COMMAND --help`` for details.
"""

from __future__ import annotations

import sys

from sqlalchemy_taskqueue.exceptions import MissingExtraError, optional_dependency

__all__ = ["cli", "main"]


def __getattr__(name: str) -> object:
    if name == "cli":
        return _load()
    raise AttributeError(name)


def _load() -> object:
    """Import every command module (each registers its commands on the group)."""
    from . import (
        _controls,  # noqa: F401
        _dashboard,  # noqa: F401
        _operations,  # noqa: F401
        _schedules,  # noqa: F401
        _worker_command,  # noqa: F401
        _workers,  # noqa: F401
    )
    from ._group import cli

    return cli


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``taskqueue`` console script (exits with the command's status).

    Example::

        main(["worker", "myapp.tasks:registry", "--concurrency", "8"])
    """
    try:
        with optional_dependency("cli", "click", "rich", feature="the taskqueue command"):
            cli = _load()
    except MissingExtraError as exc:
        print(f"taskqueue: {exc}", file=sys.stderr)
        sys.exit(2)
    cli.main(args=argv, prog_name="taskqueue")  # type: ignore[attr-defined]
