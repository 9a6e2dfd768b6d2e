"""Prometheus metrics for the queue and its workers (install the ``metrics`` extra).

Two sources:

* :class:`QueueCollector` reads the queue from the database at scrape time: tasks by
  type and status, ready and scheduled depth, and the age of the oldest ready task.
* :class:`WorkerMetrics` counts what a worker does (completed, failed, retried, released)
  and times it, fed by the worker's ``on_event`` hook.

``taskqueue worker --metrics-port 9100`` serves both, on 127.0.0.1 unless
``--metrics-host`` says otherwise (the endpoint has no authentication: it names your task
types, and each reading of the queue costs the database a scan of the pending rows, or of
the whole table for the counts by status).  The queue is read at most once per
``cache_for`` (15 s by default) however often, and by however many scrapers at once, the
endpoint is scraped.  In an app, register them on your own registry::

    from prometheus_client import REGISTRY
    from sqlalchemy_taskqueue.contrib.prometheus import QueueCollector, WorkerMetrics

    REGISTRY.register(QueueCollector(sessionmaker(engine), Task))
    metrics = WorkerMetrics(REGISTRY)
    worker = Worker(sessionmaker(engine), Task, handlers, on_event=metrics.on_event)

Every worker's endpoint reports the same queue-wide gauges; aggregate them with ``max``
(or scrape :class:`QueueCollector` from one place only).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from sqlalchemy_taskqueue.durations import Duration, to_seconds
from sqlalchemy_taskqueue.exceptions import TaskQueueError, optional_dependency

with optional_dependency(
    "metrics", "prometheus_client", feature="sqlalchemy_taskqueue.contrib.prometheus"
):
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
from sqlalchemy_taskqueue.models import task_table
from sqlalchemy_taskqueue.monitoring import QueueDepth, StatusCount
from sqlalchemy_taskqueue.repository import TaskRepository

__all__ = ["MetricsServer", "QueueCollector", "WorkerMetrics", "serve_worker_metrics"]

logger = logging.getLogger("sqlalchemy_taskqueue.metrics")

DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
#: How long a reading of the queue serves scrapes: a common scrape interval.
DEFAULT_CACHE_FOR = timedelta(seconds=15)

_Reading = tuple[list[StatusCount], list[QueueDepth]]


class QueueCollector(Collector):
    """Queue-wide gauges, read from the database when Prometheus scrapes.

    A reading serves every scrape for ``cache_for`` after it was taken (0: read at each
    scrape), and scrapes that arrive while the queue is being read wait for that
    reading, so the database is read at most once per ``cache_for`` whatever the
    number of scrapers.

    Example::

        REGISTRY.register(QueueCollector(sessionmaker(engine), Task, cache_for=30))
    """

    def __init__(
        self,
        session_factory: Callable[[], Session],
        model: type[Any],
        *,
        cache_for: Duration = DEFAULT_CACHE_FOR,
    ) -> None:
        task_table(model)
        self._session_factory = session_factory
        self._model = model
        self._cache_for = to_seconds("cache_for", cache_for, allow_zero=True)
        self._lock = threading.Lock()
        self._reading: _Reading | None = None  # None: the last reading failed
        self._read_at: float | None = None  # time.monotonic() when it ended

    def collect(self) -> Iterator[Metric]:
        """Yield the queue's gauges from a reading at most ``cache_for`` old (called by
        ``prometheus_client`` per scrape).

        When the database could not be read, only ``taskqueue_up`` is yielded, with value 0.

        Example::

            [metric.name for metric in QueueCollector(sessionmaker(engine), Task).collect()]
        """
        tasks = GaugeMetricFamily(
            "taskqueue_tasks", "Tasks by type and status.", labels=["type", "status"]
        )
        ready = GaugeMetricFamily(
            "taskqueue_queue_ready", "Pending tasks that are due now.", labels=["type"]
        )
        scheduled = GaugeMetricFamily(
            "taskqueue_queue_scheduled",
            "Pending tasks waiting for their run_at (scheduled or retry backoff).",
            labels=["type"],
        )
        oldest = GaugeMetricFamily(
            "taskqueue_oldest_ready_seconds",
            "Age of the oldest task that is due but not claimed.",
            labels=["type"],
        )
        up = GaugeMetricFamily(
            "taskqueue_up", "1 when the queue could be read (at the last reading)."
        )
        reading = self._read()
        if reading is None:
            up.add_metric([], 0)
            yield up
            return
        counts, depths = reading
        for count in counts:
            tasks.add_metric([count.task_type, count.status.value], count.count)
        for depth in depths:
            ready.add_metric([depth.task_type], depth.ready)
            scheduled.add_metric([depth.task_type], depth.scheduled)
            oldest.add_metric([depth.task_type], depth.oldest_ready_seconds)
        up.add_metric([], 1)
        yield from (tasks, ready, scheduled, oldest, up)

    def _read(self) -> _Reading | None:
        """The cached reading, or a new one once it is ``cache_for`` old; ``None`` when
        the database could not be read (a failure is cached too: an outage must not turn
        every scrape into a connection attempt)."""
        # one reading at a time: a scrape that waited here finds the fresh reading
        with self._lock:
            if self._read_at is not None and time.monotonic() - self._read_at < self._cache_for:
                return self._reading
            try:
                with self._session_factory() as session:
                    repo = TaskRepository(session, self._model)
                    self._reading = (repo.status_counts(), repo.queue_depth())
            except (SQLAlchemyError, TaskQueueError):
                logger.warning("metrics.scrape_failed", exc_info=True)
                self._reading = None
            self._read_at = time.monotonic()
            return self._reading


class WorkerMetrics:
    """Counters and a run-time histogram, fed by ``Worker(on_event=metrics.on_event)``.

    Example::

        metrics = WorkerMetrics(REGISTRY)
        Worker(factory, Task, handlers, on_event=metrics.on_event)
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, documentation: str) -> Counter:
            return Counter(name, documentation, ["type"], registry=registry)

        self.completed = counter("taskqueue_tasks_completed", "Tasks completed.")
        self.failed = counter("taskqueue_tasks_failed", "Tasks failed for good.")
        self.retried = counter("taskqueue_tasks_retried", "Failed attempts scheduled to retry.")
        self.released = counter(
            "taskqueue_tasks_released", "Tasks handed back unfinished at shutdown."
        )
        self.duration = Histogram(
            "taskqueue_task_duration_seconds",
            "Run time of task attempts by outcome.",
            ["type", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def on_event(self, event: str, task: Any, seconds: float) -> None:
        """The worker's event hook: count ``event`` and record the attempt's run time.

        Example::

            metrics.on_event("completed", task, 0.42)
        """
        counter = {
            "completed": self.completed,
            "failed": self.failed,
            "retried": self.retried,
            "released": self.released,
        }.get(event)
        if counter is None:
            return
        counter.labels(task.type).inc()
        self.duration.labels(task.type, event).observe(seconds)


class MetricsServer:
    """A running metrics endpoint (see :func:`serve_worker_metrics`).

    Example::

        endpoint = serve_worker_metrics(9100, sessionmaker(engine), Task)
        print(f"scrape http://localhost:{endpoint.port}/metrics")
    """

    def __init__(self, server: Any, thread: threading.Thread, metrics: WorkerMetrics) -> None:
        self._server = server
        self._thread = thread
        self.metrics = metrics
        self.host: str = str(server.server_address[0])
        self.port: int = int(server.server_port)

    def stop(self) -> None:
        """Stop serving.

        Example::

            server = serve_worker_metrics(9100, sessionmaker(engine), Task)
            try:
                worker.run()
            finally:
                server.stop()
        """
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_worker_metrics(
    port: int,
    session_factory: Callable[[], Session],
    model: type[Any],
    *,
    addr: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
    cache_for: Duration = DEFAULT_CACHE_FOR,
) -> MetricsServer:
    """Serve queue and worker metrics on ``http://addr:port/metrics`` (port 0: any free).

    ``addr`` is the loopback interface by default: the endpoint has no authentication.
    Pass ``"0.0.0.0"`` (or one interface's address) for a Prometheus on another
    machine.  The queue-wide gauges are read at most once per ``cache_for``
    (:class:`QueueCollector`).

    Example::

        server = serve_worker_metrics(9100, sessionmaker(engine), Task)
        Worker(..., on_event=server.metrics.on_event).run()
    """
    registry = registry if registry is not None else CollectorRegistry()
    registry.register(QueueCollector(session_factory, model, cache_for=cache_for))
    metrics = WorkerMetrics(registry)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    logger.info("metrics.serving addr=%s port=%d", addr, server.server_port)
    return MetricsServer(server, thread, metrics)
