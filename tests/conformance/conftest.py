"""Every conformance test that takes ``make_worker`` runs against every worker twin:
``Worker``, ``AsyncWorker`` with plain handlers on its threads, and ``AsyncWorker`` with
``async def`` handlers."""

from __future__ import annotations

from worker_harness import make_worker

__all__ = ["make_worker"]  # quick polls and short leases, for every twin
