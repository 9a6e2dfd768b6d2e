"""Integrations with other tools, each behind its own extra.

- :mod:`sqlalchemy_taskqueue.contrib.prometheus`: queue gauges and worker metrics for
  Prometheus (the ``metrics`` extra);
- :mod:`sqlalchemy_taskqueue.contrib.testing`: factory_boy factories and throwaway
  databases for an app's own tests (the ``test`` extra).
"""

__all__: list[str] = []
