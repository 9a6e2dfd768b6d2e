"""How an error is told to a person in one line (for log lines and command errors).

A database error's text, as SQLAlchemy renders it, spans several lines: the driver's
message (itself often two lines), the statement and its parameters, and a link.  A log
line or a command's error needs the first line of the driver's message only.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from .exceptions import TaskQueueDatabaseError

__all__ = ["error_line"]


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of the error a person needs to see: the
    driver's own for a database error (never the statement or its parameters).

    >>> error_line(ConnectionRefusedError(111, "Connect call failed"))
    'ConnectionRefusedError: [Errno 111] Connect call failed'
    >>> error_line(ValueError("two\\nlines"))
    'ValueError: two'
    """
    while isinstance(exc, TaskQueueDatabaseError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    name = type(exc).__name__
    return f"{name}: {lines[0]}" if lines else name
