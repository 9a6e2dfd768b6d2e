"""How a worker's log lines reach a person when the application configured no logging.

Workers log through the standard :mod:`logging` module, under the ``sqlalchemy_taskqueue``
logger (``sqlalchemy_taskqueue.worker`` for the worker itself).  ``taskqueue worker``
configures logging for its process; a worker run from Python leaves logging to the
application, except when the application configured none at all (no handler on the root
logger nor on the package's logger): then, for the time of ``run()``, the package's
logger gets a handler writing INFO lines and above to stderr in the command's format,
removed again when ``run()`` returns.  The root logger is never touched.

To choose for yourself, configure logging before the worker runs; for instance
``logging.basicConfig(level=logging.WARNING)`` keeps only warnings and errors, and
``logging.getLogger("sqlalchemy_taskqueue").addHandler(logging.NullHandler())`` silences
the default without printing anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LOG_FORMAT", "PACKAGE_LOGGER", "default_logging"]

#: The format of ``taskqueue worker``'s log lines (and of the default handler).
LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
#: The logger every log line of the package goes through.
PACKAGE_LOGGER = "sqlalchemy_taskqueue"


@contextmanager
def default_logging() -> Iterator[None]:
    """While the block runs, log the package's INFO lines and above to stderr, unless
    the application configured logging (a handler on the root logger or on the
    package's logger).

    Example::

        with default_logging():
            run_the_worker()
    """
    package = logging.getLogger(PACKAGE_LOGGER)
    if logging.getLogger().handlers or package.handlers:
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    level = package.level
    package.addHandler(handler)
    if level == logging.NOTSET:
        package.setLevel(logging.INFO)  # the root's WARNING would hide started/stopped
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
