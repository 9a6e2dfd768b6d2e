"""``taskqueue dashboard``: serves the dashboard on its own, on 127.0.0.1 unless it
asks for credentials."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from sqlalchemy_taskqueue.cli._dashboard import is_loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "::", "example.org"])
def test_a_network_address_without_credentials_is_refused(run: Any, host: str) -> None:
    code, output = run("dashboard", "--host", host)
    assert code == 2
    assert "would let anyone on the network use the dashboard" in output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--username", "ops"], "need a token, or a username and a password"),
        (["--token", ""], "token must be a non-empty string"),
        (["--port", "70000"], "70000 is not in the range"),
    ],
)
def test_bad_options_are_refused(run: Any, arguments: list[str], message: str) -> None:
    code, output = run("dashboard", *arguments)
    assert code == 2
    assert message in output


def test_loopback_addresses() -> None:
    assert [is_loopback(h) for h in ("localhost", "127.0.0.1", "127.8.0.1", "::1")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "db.local")] == [False] * 4


@pytest.fixture
def served(
    database_url: str, clean_table: type[Any]
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``taskqueue dashboard`` on a free port of 127.0.0.1 with basic auth; its address."""
    env = {
        **os.environ,
        "TASKQUEUE_DATABASE_URL": database_url,
        "TASKQUEUE_TABLE": clean_table.__tablename__,
        "TASKQUEUE_DASHBOARD_PASSWORD": "pw",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sqlalchemy_taskqueue.cli",
            "dashboard",
            "--port",
            "0",
            "--username",
            "ops",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once it listens
        assert "http://127.0.0.1:" in line, line
        yield line.split("http://", 1)[1].split("/", 1)[0], process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_it_serves_the_dashboard_until_interrupted(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    address, process = served
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{address}/", timeout=10)
    refused.value.close()
    assert refused.value.code == 401
    request = urllib.request.Request(
        f"http://{address}/",
        headers={"Authorization": "Basic " + base64.b64encode(b"ops:pw").decode()},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert "Overview" in response.read().decode()
    process.send_signal(signal.SIGTERM)  # as a service manager stops it
    assert process.wait(timeout=10) == 0
