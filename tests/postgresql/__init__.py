"""PostgreSQL-specific tests: what only the PostgreSQL backend has or does.

SQL shape compiled for the ``postgresql`` dialect, query plans, LISTEN/NOTIFY,
asynchronous commit (``synchronous_commit``), the drivers (psycopg2, psycopg 3, asyncpg)
and their connection settings.  A test belongs here when it would mean nothing against
another database; what every backend must do belongs in ``tests/conformance/``.
"""
