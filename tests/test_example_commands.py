"""The examples and the demo as a person runs them (``python -m examples.<name>`` from a
clone): what they print, the exit status, and that they leave nothing behind: no
database on the server, no file in the current directory, no ``/tmp/taskqueue-*``
folder.  Each runs in a fresh, empty working directory."""

from __future__ import annotations

import doctest
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa
from processes import wait_for
from sqlalchemy.engine import make_url

import examples.sandbox
import examples.web_api

ROOT = Path(__file__).resolve().parent.parent
DATABASE = re.compile(r" on (postgresql\+psycopg2://\S+/(taskqueue_(?:example|demo)_\w+))")


def example_databases(server_url: str) -> set[str]:
    admin = sa.create_engine(server_url, poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as connection:
            return set(
                connection.scalars(
                    sa.text(
                        "SELECT datname FROM pg_database WHERE datname LIKE 'taskqueue_example%'"
                        " OR datname LIKE 'taskqueue_demo%'"
                    )
                )
            )
    finally:
        admin.dispose()


def example_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{examples.sandbox.FOLDER_PREFIX}*"))


@contextmanager
def nothing_left_behind(server_url: str, cwd: Path) -> Iterator[None]:
    """Assert that what runs inside adds no example database, folder or file."""
    databases, folders = example_databases(server_url), example_folders()
    yield
    assert example_databases(server_url) - databases == set()
    assert example_folders() - folders == set()
    assert list(cwd.iterdir()) == []


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """An empty working directory for the command."""
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


def command_env(server_url: str) -> dict[str, str]:
    """The environment of a person at the root of a clone with the server configured."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TASKQUEUE")}
    return env | {
        "TASKQUEUE_DATABASE_URL": server_url,
        "PYTHONPATH": str(ROOT),  # what running from the clone's root gives
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run_example(
    module: str, cwd: Path, server_url: str, *args: str, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>``; ``prelude`` runs first in the same process."""
    command = [sys.executable, "-m", module, *args]
    if prelude:
        run = f"{prelude}; import runpy; runpy.run_module({module!r}, run_name='__main__')"
        command = [sys.executable, "-c", run, *args]
    return subprocess.run(
        command,
        cwd=cwd,
        env=command_env(server_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def header_database(output: str) -> str:
    """The database the command's header names."""
    match = DATABASE.search(output)
    assert match, output
    return match.group(2)


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("examples.data_export", "task 1: completed 100% result={'path': '/tmp/taskqueue-example-"),
        ("examples.bulk_import", "asking again gave 1 (created=False)"),
        ("examples.custom_columns", "ada asked for export on beta (task 3)"),
    ],
)
def test_an_example_runs_on_its_own_database_and_leaves_nothing(
    server_url: str, cwd: Path, module: str, expected: str
) -> None:
    with nothing_left_behind(server_url, cwd):
        done = run_example(module, cwd, server_url)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
    assert f"{module} on postgresql+psycopg2://" in done.stdout
    assert "(a database of its own, dropped at the end)" in done.stdout
    assert header_database(done.stdout) not in example_databases(server_url)


@pytest.mark.slow
def test_the_demo_names_its_database_and_leaves_nothing(server_url: str, cwd: Path) -> None:
    with nothing_left_behind(server_url, cwd):
        done = run_example("examples.demo", cwd, server_url)
    assert done.returncode == 0, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("sqlalchemy-taskqueue demo on postgresql+psycopg2://")
    server = make_url(server_url)
    database = header_database(first)
    assert first.endswith(f"@{server.host}:{server.port or 5432}/{database}")
    assert re.fullmatch(r"taskqueue_demo_[0-9a-f]{10}", database)
    assert "all tasks completed" in done.stdout and "(created=False)" in done.stdout
    assert f"dropped {database} and removed /tmp/taskqueue-example-" in done.stdout


def read_until(stream: IO[str], marker: str) -> str:
    """The process's output up to and including the line holding ``marker``."""
    seen = ""
    while marker not in seen:
        line = stream.readline()
        assert line, f"the process ended before printing {marker!r}: {seen}"
        seen += line
    return seen


def call(base: str, method: str, path: str) -> Any:
    request = urllib.request.Request(
        base + path, method=method, data=b"" if method == "POST" else None
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "pace", "seconds"),
    [
        ("examples.web_polling", [], 6),  # the default: about 6 s an export
        ("examples.web_polling_async", ["--pace", "1"], 3),
    ],
)
def test_polling_a_web_example_shows_progress_move_until_ctrl_c(
    server_url: str, cwd: Path, tmp_path: Path, module: str, pace: list[str], seconds: float
) -> None:
    port = free_port()
    with nothing_left_behind(server_url, cwd), (tmp_path / "stderr").open("w+") as errors:
        server = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port), *pace],
            cwd=cwd,
            env=command_env(server_url),
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        try:
            assert server.stdout is not None
            intro = read_until(server.stdout, "is ready")
            assert f"an export takes about {seconds} s" in intro
            wait_for(lambda: answers(port) or server.poll() is not None)
            base = f"http://127.0.0.1:{port}"
            project = int(re.search(r"project (\d+) is ready", intro).group(1))  # type: ignore[union-attr]
            started = time.monotonic()
            task_id = call(base, "POST", f"/projects/{project}/exports")["task_id"]
            seen = []
            while (body := call(base, "GET", f"/tasks/{task_id}"))["status"] != "completed":
                assert body["status"] in ("pending", "in_progress"), body
                seen.append(body["progress"])
                assert time.monotonic() - started < 60, seen
                time.sleep(0.1)  # the client's polling interval
            took = time.monotonic() - started
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=60) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            server.stdout.close()  # type: ignore[union-attr]
    assert seen == sorted(seen)
    assert len({value for value in seen if 0 < value < 100}) >= 3, seen
    assert seconds - 1 <= took, (took, seen)


@pytest.mark.slow
def test_ctrl_c_in_the_demo_drops_its_database(server_url: str, cwd: Path) -> None:
    with nothing_left_behind(server_url, cwd):
        demo = subprocess.Popen(
            [sys.executable, "-m", "examples.demo"],
            cwd=cwd,
            env=command_env(server_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert demo.stdout is not None
        header = read_until(demo.stdout, "enqueued")
        demo.send_signal(signal.SIGINT)
        rest, errors = demo.communicate(timeout=60)
    assert demo.returncode == 130, rest + errors
    assert "interrupted: the example's database and files were removed" in errors
    assert "Traceback" not in errors
    assert header_database(header) not in example_databases(server_url)


@pytest.mark.parametrize(
    ("module", "blocked", "extras"),
    [
        ("examples.web_polling", "flask", "migrations,web"),
        ("examples.web_polling_async", "fastapi", "migrations,web-async"),
        ("examples.demo", "rich", "migrations,cli"),
        ("examples.data_export", "alembic", "migrations"),
    ],
)
def test_a_missing_extra_is_named_with_the_command_that_installs_it(
    server_url: str, cwd: Path, module: str, blocked: str, extras: str
) -> None:
    """As if the extra were not installed: the import of its module fails."""
    with nothing_left_behind(server_url, cwd):
        done = run_example(
            module, cwd, server_url, prelude=f"import sys; sys.modules[{blocked!r}] = None"
        )
    assert done.returncode == 1
    assert f"needs the extras {extras} (" in done.stderr and blocked in done.stderr
    assert f"from the root of a clone of the repository run: pip install -e '.[{extras}]'" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_a_server_that_does_not_answer_is_named_without_its_password(
    server_url: str, cwd: Path
) -> None:
    unreachable = f"postgresql://app:s3cret@127.0.0.1:{free_port()}/postgres"
    with nothing_left_behind(server_url, cwd):
        done = run_example("examples.data_export", cwd, unreachable)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "cannot create a database for the example on postgresql+psycopg2://app:***@127.0.0.1:"
    )
    assert "Set TASKQUEUE_DATABASE_URL to a PostgreSQL server whose user may create" in (
        done.stderr
    )
    assert "s3cret" not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_a_user_who_may_not_create_databases_is_told_so(server_url: str, cwd: Path) -> None:
    role = f"taskqueue_nocreatedb_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
    try:
        as_role = make_url(server_url).set(username=role, password=None)
        with nothing_left_behind(server_url, cwd):
            done = run_example(
                "examples.custom_columns", cwd, as_role.render_as_string(hide_password=False)
            )
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()
    assert done.returncode == 1
    assert "permission denied to create database" in done.stderr
    assert "whose user may create databases (CREATEDB)" in done.stderr


@pytest.mark.parametrize("module", [examples.sandbox, examples.web_api])
def test_the_examples_doctests_hold(module: Any) -> None:
    failed, tried = doctest.testmod(module)
    assert (failed, tried > 0) == (0, True)
