"""Worker processes for the tests: ``taskqueue worker`` run on the test app in
``queue_app.py``, and a way to wait for a state instead of sleeping."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).parent


class WorkerProcess:
    """``taskqueue worker queue_app:tasks OPTIONS`` as a child process logging to ``log``;
    ``env`` adds to (or overrides) its environment."""

    def __init__(
        self, database_url: str, log: Path, *options: str, env: dict[str, str] | None = None
    ) -> None:
        env = {
            **os.environ,
            "TASKQUEUE_DATABASE_URL": database_url,
            "PYTHONPATH": str(TESTS),
            **(env or {}),
        }
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sqlalchemy_taskqueue.cli",
                "worker",
                "queue_app:tasks",
                *options,
            ],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def started(self) -> bool:
        """Whether its worker logged ``worker.started`` (its signal handlers are in place)."""
        return b"worker.started" in self.log.read_bytes()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._out.close()

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._out.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for a database or process state, re-reading it until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)
