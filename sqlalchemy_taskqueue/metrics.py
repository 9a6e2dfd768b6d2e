"""The former home of :mod:`sqlalchemy_taskqueue.contrib.prometheus`, kept so that
existing imports keep working.

Example::

    from sqlalchemy_taskqueue.metrics import QueueCollector  # same class as contrib's
"""

from .contrib.prometheus import MetricsServer, QueueCollector, WorkerMetrics, serve_worker_metrics

__all__ = ["MetricsServer", "QueueCollector", "WorkerMetrics", "serve_worker_metrics"]
