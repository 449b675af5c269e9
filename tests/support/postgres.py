"""Pytest plugin: scratch PostgreSQL databases on the server at 127.0.0.1:5432 (trust auth, user postgres).

Each test gets databases with unique names (``mt_<hex>``), created on demand and dropped (WITH FORCE) when it
ends, so tests running side by side never see each other's tables. ``odbc`` is the connection string the
``postgresql`` dialect takes (psqlODBC, "PostgreSQL Unicode" driver).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

HOST = os.environ.get("MIGRATOR_TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("MIGRATOR_TEST_PG_PORT", "5432"))
USER = os.environ.get("MIGRATOR_TEST_PG_USER", "postgres")


@dataclass
class ScratchDatabase:
    name: str

    @property
    def odbc(self) -> str:
        return f"Driver={{PostgreSQL Unicode}};Server={HOST};Port={PORT};Database={self.name};Uid={USER}"

    @property
    def endpoint(self) -> dict[str, Any]:
        return {"dialect": "postgresql", "connection": self.odbc}

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(host=HOST, port=PORT, user=USER, dbname=self.name, autocommit=True, **kwargs)

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Runs one statement on a fresh connection; the rows it returns (if any)."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []


@dataclass
class PostgresServer:
    created: list[str] = field(default_factory=list)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True)

    def create_database(self) -> ScratchDatabase:
        name = f"mt_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return ScratchDatabase(name)

    def drop_all(self) -> None:
        with self.admin() as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    server = PostgresServer()
    try:
        with server.admin() as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {HOST}:{PORT} as {USER}: {exc}")
    return server


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """Creates scratch databases with ``postgres.create_database()``; drops them after the test."""
    server = PostgresServer()
    yield server
    server.drop_all()


@pytest.fixture
def pg_database(postgres: PostgresServer) -> ScratchDatabase:
    """One empty scratch database."""
    return postgres.create_database()
