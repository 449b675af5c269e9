"""Backup → restore → verify against real engines: PostgreSQL → PostgreSQL and SQLite → PostgreSQL, exact values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from migrator.errors import VerificationFailed
from migrator.providers.database import open_database, portable_row
from migrator.steps.database import Backup, Restore, Verify
from migrator.testing import MemoryContext, run_step
from tests.integration.dbdata import AUDIT, LINES, ORDERS, ROWS, TABLES, populate
from tests.support.azurite import CLOUD_ACCOUNT, Azurite
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration


def make_source(dialect: str, postgres: PostgresServer, tmp_path: Path) -> dict[str, Any]:
    if dialect == "postgresql":
        endpoint = postgres.create_database().endpoint
        db = open_database(endpoint, None)
    else:
        endpoint = {"dialect": "sqlite", "connection": str(tmp_path / "source.sqlite")}
        db = open_database(endpoint, None, must_exist=False)
    try:
        populate(db)
    finally:
        db.close()
    return endpoint


def backup_to(tmp_path: Path) -> dict[str, Any]:
    return {"kind": "folder", "path": str(tmp_path / "backups"), "prefix": "db"}


def target_rows(target: Any, table: str) -> list[list[Any]]:
    """The target's rows read through psycopg (another driver than the one that wrote them), portable."""
    spec = next(t for t in TABLES if t.name == table)
    columns = ", ".join('"' + c.name.replace('"', '""') + '"' for c in spec.columns)
    return [portable_row(spec.columns, r) for r in target.sql(f'SELECT {columns} FROM "{table}"')]


def canonical(rows: list[list[Any]]) -> list[str]:
    return sorted(repr(r) for r in rows)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_backup_restore_round_trip_keeps_every_value_exact(dialect: str, postgres: PostgresServer,
                                                           tmp_path: Path) -> None:
    source = make_source(dialect, postgres, tmp_path)
    target = postgres.create_database()
    backup = backup_to(tmp_path)

    _, out = run_step(Backup("backup", Backup.Params.model_validate(
        {"database": source, "to": backup, "chunk_rows": 4})), MemoryContext())
    assert out["rows"] == sum(len(f()) for f in ROWS.values())
    assert out["chunks"] > len(TABLES)  # more than one chunk per table: keyset and offset paging both ran

    _, restored = run_step(Restore("restore", Restore.Params.model_validate(
        {"backup": backup, "database": target.endpoint})), MemoryContext())
    assert sorted(restored["created"]) == sorted(t.name for t in TABLES)

    for reference in ({"source": source}, {"backup": backup}):
        ctx = MemoryContext()
        _, verified = run_step(Verify("verify", Verify.Params.model_validate(
            {"database": target.endpoint, **reference})), ctx)
        assert verified["mismatches"] == []
        assert verified["tables"]["Order"]["actual"]["rows"] == len(ROWS["Order"]())

    for table in TABLES:
        assert canonical(target_rows(target, table.name)) == canonical(ROWS[table.name]())

    db = open_database(target.endpoint, None)
    try:
        restored_tables = {t.name: t for t in db.tables()}
    finally:
        db.close()
    assert restored_tables["line items"].primary_key == ("order", "Line")
    assert restored_tables["Audit Log"].primary_key == ()
    assert [fk.ref_table for fk in restored_tables["line items"].foreign_keys] == ["Order"]
    assert restored_tables["Order"].column("Amount").scale == 10


def test_verify_names_the_table_whose_content_differs(postgres: PostgresServer, tmp_path: Path) -> None:
    source = make_source("postgresql", postgres, tmp_path)
    target = postgres.create_database()
    backup = backup_to(tmp_path)
    run_step(Backup("backup", Backup.Params.model_validate({"database": source, "to": backup})), MemoryContext())
    run_step(Restore("restore", Restore.Params.model_validate({"backup": backup, "database": target.endpoint})),
             MemoryContext())
    # Same row count, one character added to one value: only the checksum can tell.
    target.sql("""UPDATE "line items" SET "Note" = 'note 1/1.' WHERE "order" = 1 AND "Line" = 1""")

    with pytest.raises(VerificationFailed, match="line items") as raised:
        run_step(Verify("verify", Verify.Params.model_validate({"database": target.endpoint, "source": source})),
                 MemoryContext())
    assert "Order" not in str(raised.value).split("table ", 1)[1]


def test_restore_into_existing_schema_checks_drift_and_loads(postgres: PostgresServer, tmp_path: Path) -> None:
    source = make_source("postgresql", postgres, tmp_path)
    target = postgres.create_database()
    db = open_database(target.endpoint, None)
    try:
        for table in (ORDERS, LINES, AUDIT):  # the application's own schema, made beforehand
            with db.transaction():
                db.execute(db.create_table_sql(table))
    finally:
        db.close()
    backup = backup_to(tmp_path)
    run_step(Backup("backup", Backup.Params.model_validate({"database": source, "to": backup})), MemoryContext())
    _, out = run_step(Restore("restore", Restore.Params.model_validate(
        {"backup": backup, "database": target.endpoint, "schema_mode": "existing"})), MemoryContext())
    assert out["created"] == []
    assert target.sql('SELECT count(*) FROM "line items"') == [(len(ROWS["line items"]()),)]


def test_backup_to_an_azure_container_restores_and_verifies(postgres: PostgresServer, tmp_path: Path,
                                                            azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_STORAGE_KEY", azurite.cloud_key)
    source = make_source("sqlite", postgres, tmp_path)
    target = postgres.create_database()
    backup = {"kind": "azure", "account_url": azurite.cloud_url, "container": azurite.create_container(CLOUD_ACCOUNT),
              "account_key": "${env:BACKUP_STORAGE_KEY}", "prefix": "databases/ws365"}
    _, out = run_step(Backup("backup", Backup.Params.model_validate(
        {"database": source, "to": backup, "chunk_rows": 8})), MemoryContext())
    assert azurite.cloud_key not in repr(out)
    run_step(Restore("restore", Restore.Params.model_validate({"backup": backup, "database": target.endpoint})),
             MemoryContext())
    _, verified = run_step(Verify("verify", Verify.Params.model_validate(
        {"database": target.endpoint, "backup": backup})), MemoryContext())
    assert verified["mismatches"] == [] and len(verified["tables"]) == len(TABLES)
