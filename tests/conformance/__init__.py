"""The conformance suite: what every backend must do.

Repository semantics (``repository/``), worker behaviour (``worker/``) and what spans
them (concurrency, monitoring, documents that cannot be stored or read), specified
through the public API against a real database.  A test belongs here when its
assertions hold for any database the queue supports: it names no PostgreSQL feature,
driver or compiled SQL (those tests are in ``tests/postgresql/``).  Some tests here
still *prepare* their state with PostgreSQL's SQL (``interval`` arithmetic to expire a
lease, ``pg_stat_activity`` to see a lock wait, a ``plpgsql`` trigger to refuse a write);
another backend replaces those steps, never the assertions.

A second backend is checked by running exactly this folder: ``pytest tests/conformance``.
"""
