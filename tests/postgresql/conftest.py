"""The conformance suite's fixtures, for the tests here that exercise a twin: a
repository test runs against both repository twins (``repository_harness``), a worker
test against every worker twin (``worker_harness``)."""

from __future__ import annotations

from repository_harness import repo, session
from worker_harness import make_worker

__all__ = ["make_worker", "repo", "session"]  # the twin fixtures
