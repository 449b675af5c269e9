"""State-store fixtures: every engine test runs against SQLite and against PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_state_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh PostgreSQL database for one test's state, dropped afterwards. The run logs of a PostgreSQL store
    go to a per-user directory: here, one under the test's own tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    name = f"migrator_state_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def state_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A state store spec (directory or URL), once per backend."""
    if request.param == "sqlite":
        return str(tmp_path / "state")
    return request.getfixturevalue("pg_state_url")
