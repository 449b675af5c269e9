"""Identity and serial columns of a PostgreSQL source, through backup and restore to PostgreSQL: the numbers come
across as they are, the target numbers new rows past them (its sequence moved, and proved), and the catalog
says which columns are numbered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from migrator.providers.database import open_database
from migrator.steps.database import Backup, Restore, Verify
from migrator.testing import MemoryContext, run_step
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration


def test_identity_and_serial_keys_come_across_and_the_target_numbers_new_rows_past_them(
        postgres: PostgresServer, tmp_path: Path) -> None:
    source = postgres.create_database()
    source.sql('CREATE TABLE "Tickets" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, subject text)')
    source.sql("CREATE TABLE notes (n serial PRIMARY KEY, ticket bigint, body text)")
    source.sql("CREATE TABLE plain (k integer PRIMARY KEY, v text)")
    source.sql("""INSERT INTO "Tickets" (subject) SELECT 'subject ' || g FROM generate_series(1, 40) g""")
    source.sql('DELETE FROM "Tickets" WHERE id > 30')  # the source's counter is past its largest key
    source.sql("INSERT INTO notes (ticket, body) SELECT g % 30 + 1, 'body' FROM generate_series(1, 25) g")
    source.sql("INSERT INTO plain VALUES (1, 'a'), (7, 'b')")

    db = open_database(source.endpoint, None)
    try:
        catalog = {t.name: t for t in db.tables()}
    finally:
        db.close()
    assert catalog["Tickets"].identity is not None and catalog["Tickets"].identity.name == "id"
    assert catalog["notes"].identity is not None and catalog["notes"].identity.name == "n"
    assert catalog["plain"].identity is None

    target = postgres.create_database()
    backup: dict[str, Any] = {"kind": "folder", "path": str(tmp_path / "backups"), "prefix": "db"}
    run_step(Backup("backup", Backup.Params.model_validate({"database": source.endpoint, "to": backup,
                                                              "chunk_rows": 7})), MemoryContext())
    run_step(Restore("restore", Restore.Params.model_validate({"backup": backup, "database": target.endpoint})),
             MemoryContext())
    _, verified = run_step(Verify("verify", Verify.Params.model_validate(
        {"database": target.endpoint, "source": source.endpoint})), MemoryContext())
    assert verified["mismatches"] == []

    assert [r[0] for r in target.sql('SELECT id FROM "Tickets" ORDER BY id')] == list(range(1, 31))
    # New rows on the target are numbered past what was loaded, not from 1 (which would collide).
    assert target.sql("""INSERT INTO "Tickets" (subject) VALUES ('new') RETURNING id""")[0][0] == 31
    assert target.sql("INSERT INTO notes (ticket, body) VALUES (1, 'new') RETURNING n")[0][0] == 26
    assert target.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'plain' "
                      "AND (is_identity = 'YES' OR column_default IS NOT NULL)") == []
