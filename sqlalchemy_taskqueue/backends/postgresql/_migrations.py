"""The PostgreSQL parts of the frozen, versioned migration helpers
(:mod:`sqlalchemy_taskqueue.migrations`): never edited once released; a schema change
gets new ``_v2`` functions.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = ["index_options_v1", "json_type_v1", "tune_statements_v1", "untune_statements_v1"]

#: Storage parameters of a version-1 queue table: room on each page for updated rows
#: (HOT for progress writes), and autovacuum that keeps up with an update-heavy table.
_STORAGE_V1 = {
    "fillfactor": "80",
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.02",
    "autovacuum_analyze_threshold": "1000",
    "autovacuum_vacuum_cost_delay": "0",
}


def json_type_v1() -> sa.types.TypeEngine[Any]:
    """``jsonb`` (``JSON`` on other dialects, for ``--sql`` output read elsewhere)."""
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def index_options_v1(where: str) -> dict[str, Any]:
    """A partial index: ``postgresql_where``."""
    return {"postgresql_where": sa.text(where)}


def tune_statements_v1(qualified_table: str) -> list[str]:
    """Set the version-1 storage parameters."""
    settings = ", ".join(f"{name} = {value}" for name, value in _STORAGE_V1.items())
    return [f"ALTER TABLE {qualified_table} SET ({settings})"]


def untune_statements_v1(qualified_table: str) -> list[str]:
    """Reset them to the server's defaults."""
    return [f"ALTER TABLE {qualified_table} RESET ({', '.join(_STORAGE_V1)})"]
