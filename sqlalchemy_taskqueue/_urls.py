"""Database URLs: where the queue's commands read them, how they are checked, normalised
for SQLAlchemy, and printed without their password.

The database-specific part (which driver a bare URL gets) is the backend's
(:meth:`~sqlalchemy_taskqueue.backends.base.Backend.default_url`).
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

from sqlalchemy_taskqueue.backends import backend_for_url

__all__ = [
    "DATABASE_URL_ENV",
    "TEST_DATABASE_URL_ENV",
    "mask_password",
    "normalize_url",
    "require_encoded_password",
]

#: Where the command line, the examples and the demo read the database URL.
DATABASE_URL_ENV = "TASKQUEUE_DATABASE_URL"
#: Where the test suite reads the URL of the server its throwaway databases live on.
TEST_DATABASE_URL_ENV = "TASKQUEUE_TEST_DATABASE_URL"


def normalize_url(url: str | URL) -> str:
    """A URL SQLAlchemy accepts, with the database's default driver when it names none.

    A password holding an ``@`` that is not percent-encoded is refused
    (:func:`require_encoded_password`); a URL of a database no backend serves is left
    as it is (its use then says the database is not supported).

    >>> normalize_url("postgres://u:p@db/app")
    'postgresql+psycopg2://u:p@db/app'
    """
    require_encoded_password(url)
    parsed = url if isinstance(url, URL) else make_url(url)
    backend = backend_for_url(parsed)
    if backend is not None:
        parsed = backend.default_url(parsed)
    return parsed.render_as_string(hide_password=False)


def _unencoded_at(text: str) -> bool:
    """Whether the URL's password holds an ``@`` that is not percent-encoded.

    A URL's password ends at its first ``@``, so the rest of such a password is read as
    part of the host (``u:p@ss@db`` is the password ``p`` on the host ``ss@db``), of
    the database (after a ``/`` in the password), or makes the port unparsable (after a
    ``:``).  A user name with an ``@`` is read whole, and is not a secret.
    """
    try:
        parsed = make_url(text)
    except Exception:  # "u:p@ss:word@db": the port would be "word@db"
        return text.partition("://")[2].count("@") > 1
    if "@" in (parsed.host or ""):
        return True
    return parsed.password is not None and "@" in (parsed.database or "")


def require_encoded_password(url: str | URL) -> None:
    """``ValueError`` when the URL's password holds an ``@`` that is not percent-encoded:
    the URL names another host than meant, and part of the password would be printed
    as that host's name (libpq's "could not translate host name" error does so).

    >>> require_encoded_password("postgresql://app:p%40ss@db/app")  # encoded: fine
    >>> require_encoded_password("postgresql://app:p@ss@db/app")
    Traceback (most recent call last):
    ...
    ValueError: the password in the database URL 'postgresql://app:***@db/app' holds an '@' that is not percent-encoded; write each '@' in it as %40 (in Python: urllib.parse.quote(password, safe=''))
    """
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
    if _unencoded_at(text):
        raise ValueError(
            f"the password in the database URL {mask_password(text)!r} holds an '@' that is "
            "not percent-encoded; write each '@' in it as %40 "
            "(in Python: urllib.parse.quote(password, safe=''))"
        )


def mask_password(url: str | URL) -> str:
    """The URL with its password replaced by ``***``, for logs and error messages.

    No part of a password is ever printed: when a password holds an ``@`` that is not
    percent-encoded, where it ends is unknown, so everything up to the URL's last ``@``
    is masked.

    >>> mask_password("postgresql://app:secret@db/app")
    'postgresql://app:***@db/app'
    >>> mask_password("postgresql://app@db/app?password=secret")
    'postgresql://app@db/app?password=%2A%2A%2A'
    >>> mask_password("postgresql://app:p@ss@db/app")
    'postgresql://app:***@db/app'
    """
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
    if _unencoded_at(text):
        # only the user name (before the first ':', if it holds no '@') and what follows
        # the last '@' cannot be part of the password
        scheme, _, rest = text.partition("://")
        user = rest.partition(":")[0]
        who = f"{user}:***" if user and not set(user) & set("@/?#") else "***"
        text = f"{scheme}://{who}@{rest.rpartition('@')[2]}"
    try:
        parsed = make_url(text)
        if "password" in parsed.query:  # libpq also takes it as a query parameter
            parsed = parsed.update_query_dict({"password": "***"})
        return parsed.render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is printed as nothing rather than leaked
        return "<unparsable database URL>"
