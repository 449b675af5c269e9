"""The backup manifest: a backup whose fingerprints hash rows another way is refused, saying what to do."""

from __future__ import annotations

import json

import pytest

from migrator.errors import PermanentError
from migrator.providers.database import Fingerprint, Table
from migrator.providers.database.backup import FORMAT, ChunkInfo, Manifest, TableBackup


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
    assert FORMAT.endswith("/2")
