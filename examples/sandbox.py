"""Where an example runs: a database and a folder of its own, both gone when it ends.

Every example and ``make demo`` run inside :func:`sandbox`, which gives them

* a server: the one ``TASKQUEUE_DATABASE_URL`` (or ``TASKQUEUE_TEST_DATABASE_URL``)
  names, else PostgreSQL on 127.0.0.1:5432, else an embedded PostgreSQL started from the
  ``pgserver`` wheel (the ``embedded`` extra) in a temporary folder, stopped and removed
  at the end;
* a database created for this run on that server (``<prefix>_<random hex>``), migrated,
  and dropped at the end: on success, on an error and on Ctrl-C;
* a temporary folder (``/tmp/taskqueue-example-*``) for the files the example reads
  and writes, removed at the end.

Nothing is written to the current directory.  The examples are not part of the
installed package: run them from the root of a clone of the repository
(``python -m examples.data_export``), after ``pip install -e '.[<extras>]'``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from sqlalchemy_taskqueue.contrib.testing import (
    DATABASE_URL_ENV,
    TEST_DATABASE_URL_ENV,
    mask_password,
    resolve_database_url,
    start_embedded_server,
    throwaway_database,
)

#: How every temporary folder an example makes is named (``/tmp/taskqueue-example-*``).
FOLDER_PREFIX = "taskqueue-example-"


@dataclass(frozen=True)
class Sandbox:
    """What an example runs in: its migrated database and its folder."""

    engine: Engine
    folder: Path

    @property
    def database(self) -> str:
        """The example's database URL, its password masked (for the console)."""
        return mask_password(self.engine.url.render_as_string(hide_password=False))

    def announce(self, example: str) -> None:
        """Say where the example runs and that nothing of it stays behind."""
        print(f"{example} on {self.database} (a database of its own, dropped at the end)")
        print(f"its files go to {self.folder} (removed at the end)")


def install_hint(extras: str) -> str:
    """How to install ``extras`` into a clone.

    >>> install_hint("migrations,web")
    "pip install -e '.[migrations,web]'"
    """
    return f"pip install -e '.[{extras}]'"


def missing_extra(example: str, extras: str, error: ImportError) -> SystemExit:
    """The exit for an example whose extra is not installed: what is missing and the
    command that installs it, instead of a traceback ending in ``No module named ...``.

    >>> missing_extra("examples.web_polling", "migrations,web", ImportError("No module named 'flask'")).code
    "examples.web_polling needs the extras migrations,web (No module named 'flask'); from the root of a clone of the repository run: pip install -e '.[migrations,web]'"
    """
    return SystemExit(
        f"{example} needs the extras {extras} ({error}); "
        f"from the root of a clone of the repository run: {install_hint(extras)}"
    )


def find_server(stack: ExitStack) -> str:
    """The server's URL; an embedded server is started in a temporary folder that ``stack``
    stops and removes."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=FOLDER_PREFIX)))
    embedded = folder / "pg"
    try:
        url = resolve_database_url(DATABASE_URL_ENV, TEST_DATABASE_URL_ENV, embedded_dir=embedded)
    except RuntimeError as exc:  # no server, and no embedded one installed
        raise SystemExit(
            f"no database server: {exc}. From a clone: {install_hint('embedded')}, "
            f"or set {DATABASE_URL_ENV} to a PostgreSQL server"
        ) from None
    if embedded.exists():  # stopped before its folder is removed (the stack is LIFO)
        stack.callback(start_embedded_server(embedded).stop)
    return url


def own_database(stack: ExitStack, server_url: str, prefix: str) -> str:
    """A new database on the server, dropped (whoever is still connected) by ``stack``."""
    try:
        return stack.enter_context(throwaway_database(server_url, prefix))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SystemExit(
            f"cannot create a database for the example on {mask_password(server_url)}: "
            f"{reason}. Set {DATABASE_URL_ENV} to a PostgreSQL server whose user may "
            "create databases (CREATEDB)"
        ) from None


@contextmanager
def sandbox(prefix: str, migrate: Callable[[Engine], None]) -> Iterator[Sandbox]:
    """A database of the example's own (named ``<prefix>_<hex>``, migrated with
    ``migrate``) and a temporary folder; both removed on exit, however it happens.

    Example::

        with sandbox("taskqueue_example", migrate) as box:
            print(f"on {box.database}, files in {box.folder}")
    """
    with ExitStack() as stack:
        url = own_database(stack, find_server(stack), prefix)
        engine = create_engine(url, pool_size=10)
        stack.callback(engine.dispose)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=FOLDER_PREFIX)))
        migrate(engine)
        yield Sandbox(engine, folder)


def run(main: Callable[[list[str]], int]) -> NoReturn:
    """Exit with ``main``'s status; Ctrl-C ends the example quietly (status 130) once its
    database and folder are gone, without a traceback.

    Example::

        if __name__ == "__main__":
            run(main)
    """
    try:
        status = main(sys.argv[1:])
    except KeyboardInterrupt:
        print("interrupted: the example's database and files were removed", file=sys.stderr)
        status = 130
    sys.exit(status)
