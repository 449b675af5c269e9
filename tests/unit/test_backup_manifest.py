"""The backup manifest: a backup whose fingerprints hash rows another way is refused, saying what to do."""

from __future__ import annotations

import json

import pytest

from migrator.errors import PermanentError
from migrator.providers.database import Column, Fingerprint, Table
from migrator.providers.database.backup import FORMAT, ChunkInfo, Manifest, TableBackup
from migrator.providers.database.base import GeneratedColumn


def test_a_manifest_round_trips_with_the_chunk_text_digest() -> None:
    table = TableBackup(Table("t", (), ()), 2, Fingerprint(2, 99),
                        [ChunkInfo("c", 2, 10, "ab", f"{99:032x}", [2], None, "d41d8cd98f00b204e9800998ecf8427e")])
    again = Manifest.from_bytes(Manifest("sqlite", "2026-01-01T00:00:00", [table]).to_bytes(), "m")
    assert again.tables[0].chunks[0].text_md5 == "d41d8cd98f00b204e9800998ecf8427e"
    assert again.tables[0].fingerprint == Fingerprint(2, 99)


def test_a_backup_of_the_first_format_is_refused_with_what_to_do() -> None:
    old = json.dumps({"format": "migrator-database-backup/1", "source_dialect": "sqlite", "created_at": "x",
                      "tables": []}).encode()
    with pytest.raises(PermanentError, match="backup/1") as caught:
        Manifest.from_bytes(old, "backup/manifest.json")
    assert caught.value.hint is not None and "again" in caught.value.hint
    assert FORMAT.endswith("/3")


def test_a_manifest_of_format_2_reads_without_identity_precision_or_generated_columns() -> None:
    old = json.dumps({"format": "migrator-database-backup/2", "source_dialect": "sqlserver", "created_at": "x",
                      "tables": [{"name": "t", "columns": [{"name": "id", "type": "bigint", "nullable": False},
                                                           {"name": "at", "type": "timestamp"}],
                                  "primary_key": ["id"], "row_count": 0,
                                  "fingerprint": {"rows": 0, "checksum": "0" * 32}, "chunks": []}]}).encode()
    table = Manifest.from_bytes(old, "m").tables[0].table
    assert table.identity is None and table.generated == ()
    assert table.column("at").fraction_digits == 6


def test_a_manifest_keeps_identity_100ns_precision_and_generated_columns() -> None:
    table = Table("t", (Column("id", "bigint", False, identity=True), Column("at", "timestamp", precision=7),
                        Column("shape", "native", native="geography")), ("id",),
                  generated=(GeneratedColumn("rv", "rowversion"), GeneratedColumn("c", "computed", "([id]*(2))", True)))
    data = Manifest("sqlserver", "x", [TableBackup(table, 0, Fingerprint())]).to_bytes()
    assert json.loads(data)["format"] == FORMAT
    assert Manifest.from_bytes(data, "m").tables[0].table == table
    # what /2 wrote stays as it was: no identity key on an ordinary column, no generated list when empty
    assert "identity" not in Column("x", "bigint").to_json() and "generated" not in Table("u", ()).to_json()
