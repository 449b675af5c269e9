"""database.read_only against real engines, and bad input that must fail clearly with nothing marked done."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from migrator.errors import InputError, MigratorError
from migrator.providers.database import open_database
from migrator.steps.database import Backup, ReadOnly, Restore
from migrator.testing import MemoryContext, run_step
from tests.integration.dbdata import DIALECTS, LINES, ORDERS, populated_source
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration


def _pg_write(endpoint: dict[str, Any], postgres: PostgresServer) -> None:
    name = endpoint["connection"].split("Database=")[1].split(";")[0]
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=name, autocommit=True) as conn:
        conn.execute("""INSERT INTO "Audit Log" VALUES ('probe', 9)""")


def _sqlite_write(endpoint: dict[str, Any], postgres: PostgresServer) -> None:
    conn = sqlite3.connect(endpoint["connection"])
    try:
        conn.execute("""INSERT INTO "Audit Log" VALUES ('probe', 9)""")
        conn.commit()
    finally:
        conn.close()



def _dialect_write(endpoint: dict[str, Any], postgres: PostgresServer) -> None:
    db = open_database(endpoint, None)
    try:
        with db.transaction():
            db.execute(f"INSERT INTO {db.table_ref('Audit Log')} VALUES ('probe', 9)")
    finally:
        db.close()


#: Per dialect, a write from another session (another driver where there is one) and how it is refused.
WRITERS = {"postgresql": (_pg_write, psycopg.errors.ReadOnlySqlTransaction),
           "sqlite": (_sqlite_write, sqlite3.IntegrityError),
           "sqlserver": (_dialect_write, MigratorError)}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_read_only_rejects_writes_until_rolled_back(dialect: str, postgres: PostgresServer,
                                                    tmp_path: Path) -> None:
    endpoint = populated_source(dialect, postgres, tmp_path, "app.sqlite")
    write, refusal = WRITERS[dialect]
    step = ReadOnly("ro", ReadOnly.Params.model_validate({"database": endpoint}))
    ctx = MemoryContext()
    first, out = run_step(step, ctx)
    assert not first.done and out["read_only"] is True
    with pytest.raises(refusal):
        write(endpoint, postgres)
    assert step.check(MemoryContext()).done  # a resumed run sees it is already on

    step.compensate(ctx)
    write(endpoint, postgres)  # accepted again
    assert not step.check(MemoryContext()).done


BAD_CONNECTIONS = [
    ("malformed", "Driver={PostgreSQL Unicode;Server=127.0.0.1", "malformed ODBC connection string"),
    ("no driver", "Server=127.0.0.1;Database=x", "no Driver="),
]


@pytest.mark.parametrize(("case", "connection", "message"), BAD_CONNECTIONS, ids=[c[0] for c in BAD_CONNECTIONS])
def test_malformed_connection_string_is_refused_when_the_playbook_loads(case: str, connection: str,
                                                                      message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Backup.Params.model_validate({"database": {"dialect": "postgresql", "connection": connection},
                                      "to": {"kind": "folder", "path": "/tmp"}})


def test_wrong_credentials_fail_as_input_error_and_mark_nothing_done(pg_database: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The test server trusts every local user, so a user that does not exist stands in for a wrong password.
    monkeypatch.setenv("DB_PASSWORD", "not-the-password")
    connection = pg_database.odbc.replace("Uid=postgres", "Uid=no_such_user;Pwd=${env:DB_PASSWORD}")
    step = Backup("backup", Backup.Params.model_validate({
        "database": {"dialect": "postgresql", "connection": connection},
        "to": {"kind": "folder", "path": str(tmp_path)}}))
    ctx = MemoryContext()
    with pytest.raises(InputError, match="no_such_user") as raised:
        run_step(step, ctx)
    assert "not-the-password" not in str(raised.value)
    assert "user and password" in (raised.value.hint or "")
    assert ctx.items.count() == 0 and not list(tmp_path.iterdir())


def test_missing_table_in_existing_target_schema_is_named_and_nothing_is_loaded(
        postgres: PostgresServer, tmp_path: Path) -> None:
    source = populated_source("postgresql", postgres, tmp_path, "app.sqlite")
    target = postgres.create_database()
    db = open_database(target.endpoint, None)
    try:
        with db.transaction():
            db.execute(db.create_table_sql(ORDERS))  # "line items" and "Audit Log" are missing
    finally:
        db.close()
    backup = {"kind": "folder", "path": str(tmp_path / "b")}
    run_step(Backup("backup", Backup.Params.model_validate({"database": source, "to": backup})), MemoryContext())
    ctx = MemoryContext()
    step = Restore("restore", Restore.Params.model_validate(
        {"backup": backup, "database": target.endpoint, "schema_mode": "existing"}))
    with pytest.raises(InputError, match=f"table {LINES.name} is missing from the target schema"):
        run_step(step, ctx)
    assert ctx.items.count() == 0
    assert target.sql('SELECT count(*) FROM "Order"') == [(0,)]
    assert target.sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [(1,)]
    assert "missing" in str(step.plan(MemoryContext()).changes)


def test_unreachable_server_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(MigratorError) as raised:
        open_database({"dialect": "postgresql",
                       "connection": "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=1;Database=x;Uid=u"}, None)
    assert raised.value.retryable
