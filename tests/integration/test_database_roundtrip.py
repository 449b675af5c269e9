"""Backup → restore → verify against real engines: PostgreSQL → PostgreSQL and SQLite → PostgreSQL, exact values."""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from fixtures.services.azurite import CLOUD_ACCOUNT, Azurite
from migrator.errors import VerificationFailed
from migrator.providers.database import Column, Table, encode_row, open_database, portable_row
from migrator.providers.database.base import join_line
from migrator.steps.database import Backup, Restore, Verify
from migrator.testing import MemoryContext, run_step
from tests.integration.dbdata import AUDIT, DIALECTS, LINES, ORDERS, ROWS, TABLES, populated_source
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration



def backup_to(tmp_path: Path) -> dict[str, Any]:
    return {"kind": "folder", "path": str(tmp_path / "backups"), "prefix": "db"}


def target_rows(target: Any, table: str) -> list[list[Any]]:
    """The target's rows read through psycopg (another driver than the one that wrote them), portable."""
    spec = next(t for t in TABLES if t.name == table)
    columns = ", ".join('"' + c.name.replace('"', '""') + '"' for c in spec.columns)
    return [portable_row(spec.columns, r) for r in target.sql(f'SELECT {columns} FROM "{table}"')]


def canonical(rows: list[list[Any]]) -> list[str]:
    return sorted(repr(r) for r in rows)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_backup_restore_round_trip_keeps_every_value_exact(dialect: str, postgres: PostgresServer,
                                                           tmp_path: Path) -> None:
    source = populated_source(dialect, postgres, tmp_path)
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


@pytest.mark.parametrize("dialect", DIALECTS)
def test_verify_names_the_table_whose_content_differs(dialect: str, postgres: PostgresServer, tmp_path: Path) -> None:
    source = populated_source(dialect, postgres, tmp_path)
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


@pytest.mark.parametrize("dialect", DIALECTS)
def test_restore_into_existing_schema_checks_drift_and_loads(dialect: str, postgres: PostgresServer,
                                                             tmp_path: Path) -> None:
    source = populated_source(dialect, postgres, tmp_path)
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
    source = populated_source("sqlite", postgres, tmp_path)
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


FLOAT_CASES = {
    "json batch": [-0.0, 0.1, 5e-324, 1e15, 1e16, -1.7976931348623157e308, 123456789.0],
    "with non-finite values": [float("nan"), float("inf"), float("-inf"), -0.0, 0.1],
}


@pytest.mark.parametrize("values", list(FLOAT_CASES.values()), ids=list(FLOAT_CASES))
def test_postgres_restore_keeps_every_float_bit_exact(values: list[float], postgres: PostgresServer,
                                                     tmp_path: Path) -> None:
    source, target = postgres.create_database(), postgres.create_database()
    table = Table("floats", (Column("id", "integer", nullable=False), Column("x", "float")), ("id",))
    db = open_database(source.endpoint, None)
    try:
        with db.transaction():
            db.execute(db.create_table_sql(table))
            db.insert_rows(table, table.column_names, [[i, v] for i, v in enumerate(values)])
    finally:
        db.close()
    backup = backup_to(tmp_path)
    run_step(Backup("backup", Backup.Params.model_validate({"database": source.endpoint, "to": backup})),
             MemoryContext())
    run_step(Restore("restore", Restore.Params.model_validate({"backup": backup, "database": target.endpoint})),
             MemoryContext())

    # repr tells -0.0 from 0.0 and shows every digit; read through psycopg, not the driver that wrote them.
    assert [repr(r[0]) for r in target.sql("SELECT x FROM floats ORDER BY id")] == [repr(v) for v in values]
    _, verified = run_step(Verify("verify", Verify.Params.model_validate(
        {"database": target.endpoint, "source": source.endpoint})), MemoryContext())
    assert verified["mismatches"] == []


def test_postgres_writes_the_same_lines_python_encodes(postgres: PostgresServer, tmp_path: Path) -> None:
    """The lines PostgreSQL builds for a backup are byte for byte encode_row of the portable values."""
    source = populated_source("postgresql", postgres, tmp_path)
    rng = random.Random(4)
    doubles = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(3000)]
    doubles = [d for d in doubles if math.isfinite(d)] + [
        1e15, -1e15, 1e16, 9999999999999998.0, 999999999999999.9, 1234567890123456.8, 0.0001, 0.00001, 2.0**53,
        -0.0, 0.0, 5e-324, float("nan"), float("inf"), float("-inf"), 1 / 3]
    floats = Table("floats", (Column("id", "integer", nullable=False), Column("x", "float")), ("id",))
    db = open_database(source, None)
    try:
        with db.transaction():
            db.execute(db.create_table_sql(floats))
            db.insert_rows(floats, floats.column_names, [[i, d] for i, d in enumerate(doubles)])
        cases = [(floats, floats.column_names, [[i, d] for i, d in enumerate(doubles)])]
        every_but_time = [c.name for c in ORDERS.columns if c.type != "time"]
        positions = [ORDERS.column_names.index(n) for n in every_but_time]
        cases.append((ORDERS, every_but_time, [[r[p] for p in positions] for r in ROWS["Order"]()]))
        cases.append((LINES, LINES.column_names, ROWS["line items"]()))
        for table, names, rows in cases:
            assert db.line_select(table, names) is not None
            lines = sorted(join_line(r) for r in db.read_all(table, names, lines=True))
            assert lines == sorted(encode_row(r) for r in rows), table.name
        assert db.line_select(ORDERS, ORDERS.column_names) is None  # time has no line form: read by columns
    finally:
        db.close()
