"""database.sync against real engines: a presync backup + restore while the source is live, then inserts,
updates and deletes at the source, then only the changed ranges are applied to the target.

From every source dialect of the contract suite (``dbdata.DIALECTS``: PostgreSQL, SQLite, and SQL Server when
a server is given) into PostgreSQL in process; through the CLI, ``migrator run`` killed with SIGKILL
in the middle of the sync, then ``migrator resume``: nothing lost, nothing doubled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrator.errors import VerificationFailed
from migrator.providers.database import Database, open_database
from migrator.steps.database import Backup, Restore, Sync, Verify, key_ranges
from migrator.testing import MemoryContext, run_step
from tests.integration.dbdata import AUDIT, DIALECTS, LINES, ORDERS, ROWS, TABLES, populated_source
from tests.support.engine import kill_when
from tests.support.postgres import PostgresServer, ScratchDatabase

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHUNK_ROWS = 5



def presync(source: dict[str, Any], target: dict[str, Any], backup: dict[str, Any], chunk_rows: int) -> None:
    """The presync while the source is live: a full backup, restored into the target."""
    run_step(Backup("presync", Backup.Params.model_validate(
        {"database": source, "to": backup, "chunk_rows": chunk_rows})), MemoryContext())
    run_step(Restore("presync_restore", Restore.Params.model_validate({"backup": backup, "database": target})),
             MemoryContext())


def change_source(db: Database) -> dict[str, list[list[Any]]]:
    """Inserts, updates and deletes at the source (a tenant in use); the rows every table must then hold."""
    expected = {name: make() for name, make in ROWS.items()}
    order, lines = db.table_ref(ORDERS.name), db.table_ref(LINES.name)
    q = db.quote
    new_order = [100, *expected["Order"][11][1:]]
    with db.transaction():
        # an update of a parent row that children reference (range 1 of "Order")
        db.execute(f"UPDATE {order} SET {q('Name Of Thing')} = ? WHERE {q('Id')} = ?", ["renamed 😀", 7])
        # a parent and its children deleted (range 0 of "Order", range 1 of "line items")
        db.execute(f"DELETE FROM {lines} WHERE {q('order')} = ?", [3])
        db.execute(f"DELETE FROM {order} WHERE {q('Id')} = ?", [3])
        # a child updated (range 5 of "line items")
        db.execute(f"UPDATE {lines} SET {q('Note')} = ? WHERE {q('order')} = ? AND {q('Line')} = ?",
                   ["changed", 9, 2])
        # new rows beyond the last presync key, parent and child
        db.insert_rows(ORDERS, ORDERS.column_names, [new_order])
        db.insert_rows(LINES, LINES.column_names, [[100, 1, "1.000", "new"]])
        # a table without a primary key: one more identical row
        db.insert_rows(AUDIT, AUDIT.column_names, [["login", 1]])
    for row in expected["Order"]:
        if row[0] == 7:
            row[6] = "renamed 😀"
    expected["Order"] = [r for r in expected["Order"] if r[0] != 3] + [new_order]
    for row in expected["line items"]:
        if row[:2] == [9, 2]:
            row[3] = "changed"
    expected["line items"] = [r for r in expected["line items"] if r[0] != 3] + [[100, 1, "1.000", "new"]]
    expected["Audit Log"].append(["login", 1])
    return expected


def target_rows(target: ScratchDatabase, table: str) -> list[str]:
    """The target's rows read through psycopg (not the driver that wrote them), portable and sorted."""
    from migrator.providers.database import portable_row

    spec = next(t for t in TABLES if t.name == table)
    columns = ", ".join('"' + c.name.replace('"', '""') + '"' for c in spec.columns)
    return sorted(repr(portable_row(spec.columns, r)) for r in target.sql(f'SELECT {columns} FROM "{table}"'))


def row_versions(target: ScratchDatabase) -> dict[int, str]:
    """PostgreSQL's xmin of every "Order" row: it changes exactly when the row is written."""
    return {r[0]: r[1] for r in target.sql('SELECT "Id", xmin::text FROM "Order"')}


def changed_after_presync(postgres: PostgresServer, tmp_path: Path, dialect: str = "postgresql") -> tuple[
        dict[str, Any], ScratchDatabase, dict[str, Any], dict[str, list[list[Any]]], dict[int, str]]:
    """A source of ``dialect`` presynced into a fresh PostgreSQL target, then changed (change_source): the
    source, the target, the backup, the rows every table must hold, and the target's row versions before the
    sync."""
    source = populated_source(dialect, postgres, tmp_path)
    target = postgres.create_database()
    backup = {"kind": "folder", "path": str(tmp_path / "backup")}
    presync(source, target.endpoint, backup, CHUNK_ROWS)
    versions = row_versions(target)
    db = open_database(source, None)
    try:
        return source, target, backup, change_source(db), versions
    finally:
        db.close()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_sync_after_presync_applies_only_the_changed_ranges_and_target_equals_source(
        dialect: str, postgres: PostgresServer, tmp_path: Path) -> None:
    source, target, backup, expected, versions_before = changed_after_presync(postgres, tmp_path, dialect)

    ctx = MemoryContext(run_id="delta-run")
    step = Sync("db_sync", Sync.Params.model_validate(
        {"source": source, "database": target.endpoint, "backup": backup}))
    _, out = run_step(step, ctx)

    # Order: 22 rows in chunks of 5 → 5 ranges + the one beyond; changed: 0 (delete), 1 (update), 5 (insert).
    # line items: 33 rows → 7 ranges + 1; changed: 1 (deletes), 5 (update), 7 (insert). Audit Log: whole, changed.
    assert (out["ranges"], out["changed_ranges"]) == (6 + 8 + 1, 3 + 3 + 1)
    assert (out["rows_updated"], out["rows_inserted"], out["rows_deleted"]) == (2, 2 + len(expected["Audit Log"]),
                                                                                 1 + 3)
    assert out["tables_recopied"] == ["Audit Log"]
    assert out["mismatches"] == [] and set(out["tables"]) == {t.name for t in TABLES}
    for table in TABLES:
        assert target_rows(target, table.name) == sorted(repr(r) for r in expected[table.name]), table.name
    # Rows outside the changed ranges, and unchanged rows inside them, were not written at all.
    versions_after = row_versions(target)
    rewritten = {i for i, v in versions_after.items() if versions_before.get(i) != v}
    assert rewritten == {7, 100}
    _, verified = run_step(Verify("verify", Verify.Params.model_validate(
        {"database": target.endpoint, "source": source})), MemoryContext())
    assert verified["mismatches"] == []
    # A second attempt of the same run finds it done; the delta (incremental backup) lists the changed ranges.
    assert step.check(ctx).done
    delta = (tmp_path / "backup" / "delta")
    assert len(list(delta.rglob("*.jsonl.gz"))) == 7 and (delta / "manifest.json").exists()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_sync_with_nothing_changed_writes_nothing(dialect: str, postgres: PostgresServer, tmp_path: Path) -> None:
    source = populated_source(dialect, postgres, tmp_path)
    target = postgres.create_database()
    backup = {"kind": "folder", "path": str(tmp_path / "backup")}
    presync(source, target.endpoint, backup, CHUNK_ROWS)
    before = row_versions(target)

    _, out = run_step(Sync("db_sync", Sync.Params.model_validate(
        {"source": source, "database": target.endpoint, "backup": backup})), MemoryContext())

    assert out["changed_ranges"] == 0 and out["rows_updated"] == out["rows_inserted"] == out["rows_deleted"] == 0
    assert row_versions(target) == before


def _synced(source: dict[str, Any], target: ScratchDatabase, backup: dict[str, Any], **params: Any) -> dict[str, Any]:
    step = Sync("db_sync", Sync.Params.model_validate(
        {"source": source, "database": target.endpoint, "backup": backup, **params}))
    ctx = MemoryContext()
    step.check(ctx)
    return dict(step.apply(ctx))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_sync_proves_what_it_wrote_by_reading_it_back(dialect: str, postgres: PostgresServer, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that does not land as the source has it (here: corrupted right after the update) is a mismatch."""
    source = populated_source(dialect, postgres, tmp_path)
    target = postgres.create_database()
    backup = {"kind": "folder", "path": str(tmp_path / "backup")}
    presync(source, target.endpoint, backup, CHUNK_ROWS)
    db = open_database(source, None)
    try:
        change_source(db)
    finally:
        db.close()
    real = Database.upsert_lines

    def corrupting(dst: Database, table: Any, lines: Any, present: Any = None) -> tuple[int, int]:
        result = real(dst, table, lines, present)
        if table.name == LINES.name:
            dst.execute(f"UPDATE {dst.table_ref(LINES.name)} SET {dst.quote('Note')} = 'corrupted' "
                        f"WHERE {dst.quote('order')} = 9 AND {dst.quote('Line')} = 2")
        return result

    monkeypatch.setattr(Database, "upsert_lines", corrupting)
    out = _synced(source, target, backup)
    assert out["mismatches"] == [LINES.name]


def test_the_target_changed_since_its_restore_is_caught(postgres: PostgresServer, tmp_path: Path) -> None:
    """Rows the sync does not touch were verified by the restore; a row added since shows in the count, a row
    changed since in the restore's verification and in a sync with ``verify: full``."""
    source = populated_source("postgresql", postgres, tmp_path)
    target = postgres.create_database()
    backup = {"kind": "folder", "path": str(tmp_path / "backup")}
    presync(source, target.endpoint, backup, CHUNK_ROWS)
    target.sql('UPDATE "Order" SET "Code" = \'tampered\' WHERE "Id" = 12')  # a range nothing else changes
    restore = Restore("presync_restore", Restore.Params.model_validate({"backup": backup, "database": target.endpoint}))
    with pytest.raises(VerificationFailed, match=r"Order.*content differs from the backup"):
        restore.verify(MemoryContext())
    assert _synced(source, target, backup, verify="full")["mismatches"] == ["Order"]
    target.sql('UPDATE "Order" SET "Code" = \'C0012\' WHERE "Id" = 12')
    target.sql('INSERT INTO "line items" ("order", "Line") VALUES (12, 9)')
    assert _synced(source, target, backup)["mismatches"] == ["line items"]


def test_key_ranges_cover_every_key_once() -> None:
    from migrator.providers.database.backup import ChunkInfo

    chunks = [ChunkInfo(f"c{i}", 5, 0, "", "", [i * 5]) for i in range(1, 4)]
    ranges = key_ranges(chunks)
    assert [(r.low, r.high) for r in ranges] == [(None, [5]), ([5], [10]), ([10], [15]), ([15], None)]
    assert ranges[-1].chunk is None
    empty = key_ranges([ChunkInfo("c0", 0, 0, "", "", None)])
    assert [(r.low, r.high) for r in empty] == [(None, None)]


# -- through the CLI: SIGKILL in the middle of the sync, then resume -------------------------------------------

PEOPLE = 60_000
SYNC_CHUNK_ROWS = 500


def test_sigkill_mid_sync_then_resume_loses_nothing_and_doubles_nothing(postgres: PostgresServer,
                                                                         tmp_path: Path) -> None:
    source, target = postgres.create_database(), postgres.create_database()
    source.sql('CREATE TABLE "Person" (id bigint PRIMARY KEY, "First Name" text, amount numeric(20,4))')
    source.sql(f"""INSERT INTO "Person" SELECT g, 'name ' || g, g * 1.25 FROM generate_series(1, {PEOPLE}) g""")
    source.sql("CREATE TABLE events (kind text, n integer)")
    source.sql("INSERT INTO events SELECT 'k' || (g % 7), g % 100 FROM generate_series(1, 5000) g")
    backup = tmp_path / "backup"
    presync(source.endpoint, target.endpoint, {"kind": "folder", "path": str(backup)}, SYNC_CHUNK_ROWS)
    # The tenant in use: changes in every range, rows deleted, rows added beyond the last presync key.
    source.sql('UPDATE "Person" SET amount = amount + 1 WHERE id % 37 = 0')
    source.sql('DELETE FROM "Person" WHERE id % 101 = 0')
    source.sql(f"""INSERT INTO "Person" SELECT g, 'new ' || g, 0 FROM generate_series({PEOPLE + 1},
                   {PEOPLE + 3000}) g""")
    source.sql("INSERT INTO events VALUES ('late', 1)")

    env = {"tenant": {"name": "contoso"},
           "source": {"database": source.endpoint}, "target": {"database": target.endpoint},
           "settings": {"backup": {"kind": "folder", "path": str(backup)}}}
    steps = [{"id": "sync", "uses": "database.sync",
              "with": {"source": "${source.database}", "database": "${target.database}",
                       "backup": "${settings.backup}"}},
             {"id": "verify", "uses": "database.verify",
              "with": {"database": "${target.database}", "source": "${source.database}"}}]
    env_file, playbook = tmp_path / "env.yaml", tmp_path / "playbook.yaml"
    env_file.write_text(yaml.safe_dump(env))
    playbook.write_text(yaml.safe_dump({"name": "delta", "on_failure": "stop", "steps": steps}))
    state_dir, run_id = tmp_path / "state", "delta-kill"
    cli = [sys.executable, "-m", "migrator"]
    child_env = dict(os.environ, PYTHONPATH=str(ROOT))

    def ranges_written() -> int:
        folder = backup / "delta"
        return sum(1 for _ in folder.rglob("*.jsonl.gz")) if folder.exists() else 0

    runner = subprocess.Popen([*cli, "run", str(playbook), "-e", str(env_file), "--state", str(state_dir),
                               "--run-id", run_id], cwd=tmp_path, env=child_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kill_when(runner, lambda: ranges_written() >= 20, "twenty changed ranges written", timeout=180)
    assert ranges_written() < PEOPLE // SYNC_CHUNK_ROWS  # killed part-way through

    resumed = subprocess.run([*cli, "resume", run_id, "--state", str(state_dir)], cwd=tmp_path, env=child_env,
                             capture_output=True, timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr).decode(errors="replace")

    query = 'SELECT id, "First Name", amount::text FROM "Person" ORDER BY id'
    assert target.sql(query) == source.sql(query)
    assert target.sql('SELECT count(*), count(DISTINCT id) FROM "Person"') == \
        source.sql('SELECT count(*), count(*) FROM "Person"')
    events = "SELECT kind, n, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2"
    assert target.sql(events) == source.sql(events)


class _StopAfter(MemoryContext):
    """Asks the step to stop once it has stored ``chunks`` chunks, as a SIGTERM at that point would."""

    def __init__(self, chunks: int) -> None:
        super().__init__(run_id="live-presync")
        self.stored = 0
        self.limit = chunks

    def progress(self, message: str | None = None) -> None:
        self.stored += 1
        if self.stored >= self.limit:
            self.cancel_event.set()


def test_presync_backup_interrupted_and_resumed_while_the_source_takes_writes_then_sync_catches_up(
        postgres: PostgresServer, tmp_path: Path) -> None:
    from migrator.errors import Cancelled

    source = populated_source("postgresql", postgres, tmp_path)
    target = postgres.create_database()
    backup = {"kind": "folder", "path": str(tmp_path / "backup")}
    step = Backup("presync", Backup.Params.model_validate({"database": source, "to": backup, "chunk_rows": CHUNK_ROWS}))
    ctx = _StopAfter(3)
    with pytest.raises(Cancelled):
        step.apply(ctx)
    assert any("Order" in key for key in ctx.items.keys(None))  # stopped with "Order" half read
    db = open_database(source, None)
    try:
        expected = change_source(db)  # the tenant is live: it writes between the attempts
        extra = [101, *expected["Order"][0][1:]]
        db.insert_rows(ORDERS, ORDERS.column_names, [extra])  # so the half-read table's row count moves
        expected["Order"].append(extra)
    finally:
        db.close()
    ctx.cancel_event.clear()
    ctx.limit = 10**9
    step.apply(ctx)  # the resumed attempt accepts that a live table moved, and says so
    moved = [message for kind, message, _ in ctx.events if kind == "database.backup.moved"]
    assert moved, "the resumed presync should have found a table that moved under it"
    run_step(Restore("presync_restore", Restore.Params.model_validate({"backup": backup, "database": target.endpoint})),
             MemoryContext())
    _, out = run_step(Sync("db_sync", Sync.Params.model_validate(
        {"source": source, "database": target.endpoint, "backup": backup})), MemoryContext(run_id="live-presync"))
    assert out["mismatches"] == []
    for table in TABLES:
        assert target_rows(target, table.name) == sorted(repr(r) for r in expected[table.name]), table.name


def test_a_presync_backup_without_chunk_text_digests_is_compared_by_fingerprint(postgres: PostgresServer,
                                                                               tmp_path: Path) -> None:
    """Chunks without ``text_md5`` (the field is optional in a manifest): ranges are compared by fingerprint."""
    import json

    source = populated_source("sqlite", postgres, tmp_path)
    target = postgres.create_database()
    backup = {"kind": "folder", "path": str(tmp_path / "backup")}
    presync(source, target.endpoint, backup, CHUNK_ROWS)
    manifest = tmp_path / "backup" / "manifest.json"
    doc = json.loads(manifest.read_text())
    for table in doc["tables"]:
        for chunk in table["chunks"]:
            assert chunk.pop("text_md5")
    manifest.write_text(json.dumps(doc))
    db = open_database(source, None)
    try:
        expected = change_source(db)
    finally:
        db.close()
    out = _synced(source, target, backup)
    assert (out["ranges"], out["changed_ranges"], out["mismatches"]) == (6 + 8 + 1, 3 + 3 + 1, [])
    for table in TABLES:
        assert target_rows(target, table.name) == sorted(repr(r) for r in expected[table.name]), table.name


#: What change tracking would report after change_source(): every key it touched, in the order written.
TRACKED = {"Order": [[7], [3], [100]], "line items": [[3, 1], [3, 2], [3, 3], [9, 2], [100, 1]]}


def tracked_source(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[str]:
    """PostgreSQL as a change-tracking source: the backup records version 1041, and ``changed_keys`` answers
    ``answer(table)``; returns the tables whose ranges were read (a list the patched reader fills)."""
    from migrator.providers.database.postgresql import PostgresDatabase

    monkeypatch.setattr(PostgresDatabase, "change_version", lambda self: 1041)
    monkeypatch.setattr(PostgresDatabase, "changed_keys", lambda self, table, since: answer(table, since))
    ranged: list[str] = []
    real = Database.read_range

    def read_range(db: Database, table: Any, *args: Any, **kwargs: Any) -> Any:
        ranged.append(table.name)
        return real(db, table, *args, **kwargs)

    monkeypatch.setattr(Database, "read_range", read_range)
    return ranged


def test_sync_with_change_tracking_reads_only_the_changed_keys_and_target_equals_source(
        postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from migrator.providers.database.base import ChangedKeys

    asked: list[int] = []

    def answer(table: Any, since: int) -> ChangedKeys:
        asked.append(since)
        return ChangedKeys(TRACKED[table.name], f"change tracking since version {since}")

    ranged = tracked_source(monkeypatch, answer)
    source, target, backup, expected, versions_before = changed_after_presync(postgres, tmp_path)
    ranged.clear()

    ctx = MemoryContext()
    _, out = run_step(Sync("db_sync", Sync.Params.model_validate(
        {"source": source, "database": target.endpoint, "backup": backup})), ctx)

    assert set(asked) == {1041}  # the version the presync backup recorded
    assert out["tables_by_change_tracking"] == ["Order", "line items"] and ranged == []  # no range re-read
    assert (out["rows_updated"], out["rows_inserted"], out["rows_deleted"]) == (2, 2 + len(expected["Audit Log"]),
                                                                                 1 + 3)
    assert out["mismatches"] == []
    for table in TABLES:
        assert target_rows(target, table.name) == sorted(repr(r) for r in expected[table.name]), table.name
    rewritten = {i for i, v in row_versions(target).items() if versions_before.get(i) != v}
    assert rewritten == {7, 100}
    _, verified = run_step(Verify("verify", Verify.Params.model_validate(
        {"database": target.endpoint, "source": source})), MemoryContext())
    assert verified["mismatches"] == []


def test_a_change_tracking_version_too_old_falls_back_to_the_range_compare_and_says_so(
        postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from migrator.providers.database.base import ChangedKeys

    reason = "the presync's change-tracking version 1041 is below CHANGE_TRACKING_MIN_VALID_VERSION 2200"
    ranged = tracked_source(monkeypatch, lambda table, since: ChangedKeys(None, f"table {table.name}: {reason}"))
    source, target, backup, expected, _ = changed_after_presync(postgres, tmp_path)
    ranged.clear()

    ctx = MemoryContext()
    _, out = run_step(Sync("db_sync", Sync.Params.model_validate(
        {"source": source, "database": target.endpoint, "backup": backup})), ctx)

    said = [m for kind, m, _ in ctx.events if kind == "database.sync.ranges"]
    assert said == [f"table {n}: {reason}: comparing the presync's key ranges instead" for n in ("Order", "line items")]
    assert out["tables_by_change_tracking"] == [] and {"Order", "line items"} <= set(ranged)
    assert out["mismatches"] == []
    for table in TABLES:
        assert target_rows(target, table.name) == sorted(repr(r) for r in expected[table.name]), table.name
