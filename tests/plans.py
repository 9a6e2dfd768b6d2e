"""What PostgreSQL's planner does with a statement on given data (for plan tests)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text


def plan_on(engine: Engine, stmt: Any, params: dict[str, Any], table: str, *setup: str) -> str:
    """The ``EXPLAIN`` of ``stmt`` with ``params`` after the ``setup`` SQL has filled
    ``table`` and it was analysed; all of it rolled back afterwards."""
    compiled = stmt.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    with engine.connect() as connection:
        for sql in setup:
            connection.execute(text(sql))
        connection.execute(text(f"ANALYZE {table}"))
        explained = connection.exec_driver_sql(
            "EXPLAIN " + str(compiled), compiled.construct_params(params)
        )
        plan = "\n".join(explained.scalars())
        connection.rollback()
    return plan
