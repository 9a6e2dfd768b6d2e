"""The conformance suite's fixtures, for the tests here that exercise a twin: a
repository test runs against both repository twins (``repository_harness``)."""

from __future__ import annotations

from repository_harness import repo, session

__all__ = ["repo", "session"]  # the twin fixtures, overriding the plain ones
