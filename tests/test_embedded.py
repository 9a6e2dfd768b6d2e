"""Choosing the database server, and the embedded PostgreSQL fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from sqlalchemy_taskqueue._urls import mask_password, normalize_url
from sqlalchemy_taskqueue.contrib.testing import resolve_database_url, start_embedded_server


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


#: passwords holding an '@' that is not percent-encoded; SQLAlchemy ends the password at
#: the first '@' and reads the rest as the host, the database or a port
UNENCODED = [
    "postgresql://app:first@second@db/app",
    "postgresql://app:first@second@db:5432/app?sslmode=require",
    "postgresql://app:first@sec/ond@db/app",
    "postgresql://app:first@sec:ond@db/app",
    "postgresql://app:first@second@[::1]/app",
    "postgresql://app:first@@db/app",
]


@pytest.mark.parametrize("url", [*UNENCODED, make_url(UNENCODED[0])], ids=str)
def test_no_part_of_a_password_with_an_unencoded_at_is_printed(url: Any) -> None:
    masked = mask_password(url)
    for part in ("first", "second", "sec", "ond"):
        assert part not in masked
    assert masked.startswith("postgresql://app:***@")


@pytest.mark.parametrize("url", UNENCODED)
def test_a_password_with_an_unencoded_at_is_refused(url: str) -> None:
    with pytest.raises(
        ValueError, match="not percent-encoded; write each '@' in it as %40"
    ) as info:
        normalize_url(url)
    assert "first" not in str(info.value) and "ond" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:first%40second@db/app",  # encoded
        "postgresql://app@corp:secret@db/app",  # an '@' in the user name is read whole
        "postgresql://app@db/app?options=-c%20x%3Dy@z",
    ],
)
def test_urls_without_an_unencoded_at_in_the_password_are_accepted(url: str) -> None:
    assert normalize_url(url).startswith("postgresql+psycopg2://app")
    assert "first" not in mask_password(url) and "secret" not in mask_password(url)


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
