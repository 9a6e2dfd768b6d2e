"""The former home of :mod:`sqlalchemy_taskqueue.contrib.testing`, kept so that existing
imports keep working.

Example::

    from sqlalchemy_taskqueue.testing import task_factory  # same function as contrib's
"""

from .contrib.testing import task_factory, throwaway_database

__all__ = ["task_factory", "throwaway_database"]
