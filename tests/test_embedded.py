"""Choosing the database server, and the embedded PostgreSQL fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from sqlalchemy_taskqueue.embedded import (
    mask_password,
    normalize_url,
    resolve_database_url,
    start_embedded_server,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5433/app", "postgresql+psycopg2://u:p@db:5433/app"),
        ("postgresql://u@db/app", "postgresql+psycopg2://u@db/app"),
        ("postgresql+psycopg2://u@db/app", "postgresql+psycopg2://u@db/app"),
    ],
)
def test_normalize_url_picks_the_psycopg2_driver(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


def test_mask_password_never_prints_the_secret() -> None:
    masked = mask_password("postgresql://app:s3cret@db/app")
    assert "s3cret" not in masked and masked == "postgresql://app:***@db/app"
    assert mask_password("::not a url::") == "<unparsable database URL>"


def test_an_environment_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQ_FIRST", "")
    monkeypatch.setenv("TQ_SECOND", "postgres://x:y@elsewhere/db")
    assert resolve_database_url("TQ_FIRST", "TQ_SECOND") == "postgresql+psycopg2://x:y@elsewhere/db"


@pytest.mark.slow
def test_embedded_server_starts_and_answers(tmp_path: Path) -> None:
    server = start_embedded_server(tmp_path / "pg")
    try:
        engine = create_engine(server.url, poolclass=NullPool)
        with engine.connect() as connection:
            assert connection.execute(text("select 1 + 1")).scalar_one() == 2
        engine.dispose()
    finally:
        server.stop()
