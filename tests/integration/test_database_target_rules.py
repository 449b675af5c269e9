"""What a restore refuses before it changes anything, and the 100 ns values it keeps, on real engines.

The decisions are the target dialect's (``Database.key_collisions``, ``Database.cannot_hold``): a SQLite source
with a case-sensitive text key into a target declared case-insensitive (``target_collation``, as Azure SQL
Database's default collation is), and values finer than PostgreSQL keeps.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from migrator.errors import InputError
from migrator.providers.database import open_database
from migrator.steps.database import Backup, Restore, Verify
from migrator.testing import MemoryContext, plan_step, run_step
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration

AZURE_DEFAULT = "SQL_Latin1_General_CP1_CI_AS"


def sqlite_source(tmp_path: Path, ddl: str, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    path = tmp_path / "source.sqlite"
    conn = sqlite3.connect(path)
    try:
        conn.execute(ddl)
        conn.executemany(f"INSERT INTO people VALUES ({', '.join('?' for _ in rows[0])})", rows)
        conn.commit()
    finally:
        conn.close()
    return {"dialect": "sqlite", "connection": str(path)}


def backed_up(source: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    backup = {"kind": "folder", "path": str(tmp_path / "backup")}
    run_step(Backup("backup", Backup.Params.model_validate({"database": source, "to": backup})), MemoryContext())
    return backup


def key_hash(*key: Any) -> str:
    return hashlib.sha256(json.dumps(list(key), ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()[:12]


def test_keys_differing_only_in_case_are_refused_for_a_case_insensitive_target_by_table_and_hash(
        postgres: PostgresServer, tmp_path: Path) -> None:
    source = sqlite_source(tmp_path, "CREATE TABLE people (login TEXT PRIMARY KEY, n INT)",
                           [("Smith", 1), ("smith", 2), ("Jones", 3), ("ærø", 4), ("ÆRØ", 5)])
    backup = backed_up(source, tmp_path)
    target = postgres.create_database()
    params = {"backup": backup, "database": target.endpoint, "target_collation": AZURE_DEFAULT}

    plan = plan_step(Restore("restore", Restore.Params.model_validate(params)), MemoryContext())
    text = " ".join(plan.changes)
    assert "cannot restore: table people: 2 primary keys differ only in case" in text
    assert f"people#{key_hash('smith')}" in text and f"people#{key_hash('ærø')}" in text
    assert not any(v in text for v in ("Smith", "smith", "ærø", "ÆRØ", "Jones"))

    with pytest.raises(InputError, match="differ only in case") as refused:  # preflight: nothing changed
        run_step(Restore("restore", Restore.Params.model_validate(params)), MemoryContext())
    assert "smith" not in str(refused.value).lower()
    assert target.sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [(0,)]

    # PostgreSQL itself compares keys with case: the same backup restores.
    _, out = run_step(Restore("restore", Restore.Params.model_validate(
        {"backup": backup, "database": target.endpoint})), MemoryContext())
    assert out["rows"] == 5


def test_a_case_sensitive_or_collision_free_target_is_not_refused(postgres: PostgresServer, tmp_path: Path) -> None:
    source = sqlite_source(tmp_path, "CREATE TABLE people (login TEXT PRIMARY KEY, n INT)",
                           [("Smith", 1), ("Jones", 2)])
    backup = backed_up(source, tmp_path)
    target = postgres.create_database()
    for collation in (AZURE_DEFAULT, "Latin1_General_CS_AS"):
        plan = plan_step(Restore("restore", Restore.Params.model_validate(
            {"backup": backup, "database": target.endpoint, "target_collation": collation})), MemoryContext())
        assert not any("cannot restore" in c for c in plan.changes), plan.changes


def test_100ns_timestamps_survive_backup_and_restore_exactly_and_postgres_refuses_them_by_table_and_column(
        postgres: PostgresServer, tmp_path: Path) -> None:
    stamps = ["2024-02-29 23:59:59.1234567", "0001-01-01 00:00:00.0000001", "9999-12-31 23:59:59.9999999"]
    source = sqlite_source(tmp_path, "CREATE TABLE people (id INTEGER PRIMARY KEY, seen DATETIME2(7))",
                           [(i, s) for i, s in enumerate(stamps)])
    backup = backed_up(source, tmp_path)

    target = tmp_path / "target.sqlite"
    endpoint = {"dialect": "sqlite", "connection": str(target)}
    run_step(Restore("restore", Restore.Params.model_validate({"backup": backup, "database": endpoint})),
             MemoryContext())
    conn = sqlite3.connect(target)
    try:
        kept = [r[0] for r in conn.execute("SELECT seen FROM people ORDER BY id")]
    finally:
        conn.close()
    assert kept == [s.replace(" ", "T") for s in stamps]  # every digit, in the portable form
    run_step(Verify("verify", Verify.Params.model_validate({"database": endpoint, "backup": backup})),
             MemoryContext())  # the fingerprints hash the 7th digit too

    pg = postgres.create_database()
    with pytest.raises(InputError, match="table people, column seen: timestamp\\(7\\) keeps 7 fractional digits"):
        run_step(Restore("restore", Restore.Params.model_validate({"backup": backup, "database": pg.endpoint})),
                 MemoryContext())
    assert pg.sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [(0,)]


def test_a_7th_digit_changes_the_fingerprint(tmp_path: Path) -> None:
    source = sqlite_source(tmp_path, "CREATE TABLE people (id INTEGER PRIMARY KEY, seen DATETIME2(7))",
                           [(1, "2024-01-01 00:00:00.1234567")])
    db = open_database(source, None)
    try:
        from migrator.steps.database.common import fingerprint

        table = db.tables()[0]
        before = fingerprint(db, table).as_dict()
        db.execute("UPDATE people SET seen = '2024-01-01 00:00:00.1234568'")
        assert fingerprint(db, table).as_dict() != before
    finally:
        db.close()
