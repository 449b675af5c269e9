"""PostgreSQL's COPY paths against a real server: backup lines byte for byte those of the ODBC path, restores
through COPY exact for every type, inside the restore's fence, in the backup's snapshot; the connection derived
from the ODBC string without showing its password."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest

from migrator.errors import InputError, LockLost, MigratorError
from migrator.providers.database import Column, Table, open_database
from migrator.providers.database.backup import chunked_lines
from migrator.providers.database.base import encode_row, join_line, row_converter
from migrator.providers.database.pgcopy import FAST_DECODE, conninfo
from migrator.providers.database.postgresql import PostgresDatabase
from migrator.steps.database import Backup, Restore
from migrator.testing import MemoryContext, run_step
from tests.support.postgres import PostgresServer, ScratchDatabase

pytestmark = pytest.mark.integration

#: Every type the line select writes (the bench's among them), floats with the values whose text differs
#: between PostgreSQL and Python, or that JSON has no token for.
TYPES = Table("Every Type", (
    Column("id", "bigint", nullable=False),
    Column("small", "smallint"),
    Column("int", "integer"),
    Column("amount", "decimal", precision=38, scale=10),
    Column("money", "decimal", precision=18, scale=4),
    Column("ratio", "float"),
    Column("single", "real"),
    Column("name", "text"),
    Column("code", "text", length=20),
    Column("blob", "binary"),
    Column("day", "date"),
    Column("stamp", "timestamp"),
    Column("stamp tz", "timestamptz"),
    Column("flag", "boolean"),
    Column("guid", "uuid"),
), ("id",))

FLOATS = [0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, 2.2250738585072014e-308, 2.225073858507201e-308,
          1e300, -1e300, 0.1, 2.938840473755711e16, 1 / 3, 1.7976931348623157e308, 123456789.0, 1e16, 1e-5]
TEXTS = ["plain", "", "null", "tab\tnew\nline\rcr", "back\\slash \\\\ \\N \\.", "\\.", 'quote " and \\"',
         "ctrl \x01\x1f\x7f", "ünïcødé 😀 𠜎 👩‍👩‍👧‍👦", "comma, [bracket] {brace}", "\u2028\u2029", " ", "'single'"]


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0]) if math.isfinite(value) else value


def type_rows() -> list[list[Any]]:
    rows: list[list[Any]] = []
    for i in range(max(len(FLOATS), len(TEXTS)) + 6):
        value = FLOATS[i % len(FLOATS)]
        rows.append([
            i + 1, i - 7, i * 1_000_003 - 2_000_000_000, f"{i}{'9' * 26}.{i % 10}123456789", f"-{i}.{i % 10}000",
            value, _float32(value if abs(value) < 1e38 or not math.isfinite(value) else 1.5),
            TEXTS[i % len(TEXTS)], f"C{i:04d}", "AAEC/w==" if i % 3 else "3q2+7w==",
            f"20{i % 90:02d}-0{i % 9 + 1}-1{i % 9}", f"2024-02-29T23:59:{i % 60:02d}.{i:06d}",
            f"2024-12-31T22:00:{i % 60:02d}.{i:06d}+00:00", i % 2 == 0, f"00000000-0000-4000-8000-{i:012d}"])
    rows.append([len(rows) + 1, *([None] * (len(TYPES.columns) - 1))])  # NULL in every column
    return rows


def created(database: ScratchDatabase, table: Table = TYPES, rows: list[list[Any]] | None = None
            ) -> PostgresDatabase:
    db = open_database(database.endpoint, None)
    assert isinstance(db, PostgresDatabase)
    with db.transaction():
        db.execute(db.create_table_sql(table))
        db.insert_rows(table, table.column_names, type_rows() if rows is None else rows)
    return db


def odbc_lines(db: PostgresDatabase, table: Table) -> list[bytes]:
    """The lines the ODBC path writes for every row, in key order (the backup's page read)."""
    return [join_line(row) for row in db.read_page(table, table.column_names, None, 10_000, lines=True)]


def copy_lines(db: PostgresDatabase, table: Table, after: list[Any] | None = None, offset: int = 0) -> list[bytes]:
    stream = db.stream_lines(table, after, offset)
    assert stream is not None, "no COPY path"
    return list(stream)


def test_copy_lines_are_the_odbc_lines_byte_for_byte_for_every_type(pg_database: ScratchDatabase) -> None:
    db = created(pg_database)
    try:
        table = db.table(TYPES.name)
        assert table is not None
        # -0.0 is stored as itself: the INSERT sent its text
        assert pg_database.sql('SELECT count(*) FROM "Every Type" WHERE text(ratio) = \'-0\'')[0][0] >= 1
        expected = odbc_lines(db, table)
        # the ODBC path's lines are the canonical encoding of the values read without the line select
        convert = row_converter(db.read_converters(table.columns, table.columns))
        assert expected == [encode_row(convert(r)) for r in db.read_page(table, table.column_names, None, 10_000)]
        lines = copy_lines(db, table)
        assert lines == expected
        assert any(b"NaN" in line and b"-Infinity" not in line for line in lines)
        assert any(b",-0.0," in line for line in lines)
        # resumed after a key: the rows after it, as they were
        key = [int(expected[9].split(b",", 1)[0][1:])]
        assert copy_lines(db, table, key) == expected[10:]
    finally:
        db.close()


def test_a_table_without_a_primary_key_streams_from_its_offset_in_the_odbc_order(
        pg_database: ScratchDatabase) -> None:
    bare = Table("no key", (Column("what", "text"), Column("n", "float")))
    rows = [["login", 1.5], ["login", 1.5], [None, None], ["x\\y", math.nan], ["a", -0.0]]
    db = created(pg_database, bare, rows)
    try:
        table = db.table(bare.name)
        assert table is not None
        expected = [join_line(r) for r in db.read_offset(table, table.column_names, 0, 100, lines=True)]
        assert copy_lines(db, table) == expected
        assert copy_lines(db, table, None, 2) == expected[2:]
    finally:
        db.close()


def test_chunks_cut_from_the_stream_are_the_page_reads_chunks() -> None:
    table = Table("t", (Column("id", "bigint", nullable=False), Column("x", "text")), ("id",))
    lines = [encode_row([i, "x" * i]) for i in range(1, 11)]
    cut = [(w.rows, key) for w, key in chunked_lines(iter(lines), table, 4, 1 << 20)]
    assert cut == [(4, [4]), (4, [8]), (2, [10])]
    # by bytes: the line that reaches the cap ends the chunk
    assert [w.rows for w, _ in chunked_lines(iter(lines), table, 100, len(lines[0]) + len(lines[1]) + 2)] \
        == [2, 2, 2, 2, 2]
    # an empty table still has its one (empty) chunk; a full last chunk has no empty one after it
    assert [(w.rows, key) for w, key in chunked_lines(iter([]), table, 4, 1 << 20)] == [(0, None)]
    assert [w.rows for w, _ in chunked_lines(iter(lines[:8]), table, 4, 1 << 20)] == [4, 4]


def test_copy_reads_in_the_snapshot_of_the_backup(pg_database: ScratchDatabase) -> None:
    db = created(pg_database)
    try:
        table = db.table(TYPES.name)
        assert table is not None
        with db.snapshot():
            before = db.count(table.name)
            pg_database.sql('INSERT INTO "Every Type" (id) VALUES (100000)')  # committed after the snapshot
            assert len(copy_lines(db, table)) == before
        assert len(copy_lines(db, table)) == before + 1
    finally:
        db.close()


def test_a_restore_through_copy_round_trips_every_type_exactly(
        postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = postgres.create_database(), postgres.create_database()
    created(source).close()
    backup = {"kind": "folder", "path": str(tmp_path / "backup")}
    _, out = run_step(Backup("backup", Backup.Params.model_validate(
        {"database": source.endpoint, "to": backup, "chunk_rows": 7})), MemoryContext())
    assert out["chunks"] > 2

    def refused(*args: Any) -> None:
        raise AssertionError("a restore into PostgreSQL loads through COPY, not the INSERT path")

    monkeypatch.setattr(PostgresDatabase, "insert_lines", refused)
    run_step(Restore("restore", Restore.Params.model_validate({"backup": backup, "database": target.endpoint})),
             MemoryContext())
    # read back through psycopg, which never wrote them; floats as text, which tells -0 and NaN apart exactly
    columns = ", ".join(f'text("{c.name}")' if c.type in ("float", "real") else f'"{c.name}"' for c in TYPES.columns)
    query = f'SELECT {columns} FROM "Every Type" ORDER BY id'
    assert target.sql(query) == source.sql(query)
    specials = "SELECT count(DISTINCT text(ratio)) FROM \"Every Type\" WHERE text(ratio) IN ('-0', 'NaN', '-Infinity')"
    assert target.sql(specials) == [(3,)]
    # the primary key was added after the load
    assert target.sql("SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conrelid = "
                      "'\"Every Type\"'::regclass") == [(1,)]


def test_the_python_decoder_and_the_fast_one_give_the_same_rows(pg_database: ScratchDatabase,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from migrator.providers.database import pgcopy

    db = created(pg_database)
    try:
        table = db.table(TYPES.name)
        assert table is not None
        lines = odbc_lines(db, table)
        fast = [list(pgcopy.row_reader(table, table.column_names)(line)) for line in lines]
        monkeypatch.setattr(pgcopy, "FAST_DECODE", False)
        slow = [list(pgcopy.row_reader(table, table.column_names)(line)) for line in lines]
        assert repr(fast) == repr(slow)  # repr: NaN equals itself there
        assert FAST_DECODE  # the dependency is installed where these tests run
    finally:
        db.close()


def test_a_copy_load_commits_nothing_once_the_fence_moved_on(pg_database: ScratchDatabase) -> None:
    db = created(pg_database)
    successor = open_database(pg_database.endpoint, None)
    try:
        table = db.table(TYPES.name)
        assert table is not None
        lines = odbc_lines(db, table)
        pg_database.sql('DELETE FROM "Every Type"')
        db.ensure_marker_table()
        db.claim_marker_fence(1)
        successor.claim_marker_fence(2)  # a later lock generation took over
        with pytest.raises(LockLost), db.chunk_transaction() as load:
            load.insert_lines(table, table.column_names, lines)
            load.mark_chunk("tables/0000-x/000000.jsonl.gz", "0" * 64)
            assert pg_database.sql('SELECT count(*) FROM "Every Type"') == [(0,)]  # not committed yet
            if not load.check_marker_fence(1):
                raise LockLost("fence moved on")
        assert pg_database.sql('SELECT count(*) FROM "Every Type"') == [(0,)]
        assert db.marker_chunks() == set()
        # the generation holding the fence commits the same load
        with successor.chunk_transaction() as load:
            load.insert_lines(table, table.column_names, lines)
            load.mark_chunk("tables/0000-x/000000.jsonl.gz", "0" * 64)
            assert load.check_marker_fence(2)
        assert pg_database.sql('SELECT count(*) FROM "Every Type"') == [(len(lines),)]
    finally:
        db.close()
        successor.close()


def test_a_failed_copy_load_names_the_table_and_no_row_value(pg_database: ScratchDatabase) -> None:
    db = created(pg_database)
    try:
        table = db.table(TYPES.name)
        assert table is not None
        secret = "jan.secret@contoso.example"
        bad = encode_row([1, None, None, None, None, None, None, secret, None, None, "not a date", None, None,
                          None, None])
        with pytest.raises(MigratorError) as failed, db.chunk_transaction() as load:
            load.insert_lines(table, table.column_names, [bad])
        assert "Every Type" in str(failed.value) and secret not in str(failed.value)
        assert "not a date" not in str(failed.value)
    finally:
        db.close()


def test_the_copy_connection_is_derived_from_the_odbc_string() -> None:
    info = conninfo("Driver={PostgreSQL Unicode};Servername=db.example;Port=6432;Database=app;Username=me;"
                    "Password={p;w}}x};SSLmode=require;pqopt={sslrootcert=/etc/ca.pem target_session_attrs=any}")
    assert info is not None
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(info)
    assert {k: params[k] for k in ("host", "port", "dbname", "user", "password", "sslmode", "sslrootcert")} == {
        "host": "db.example", "port": "6432", "dbname": "app", "user": "me", "password": "p;w}x",
        "sslmode": "require", "sslrootcert": "/etc/ca.pem"}
    assert "TimeZone=UTC" in params["options"]
    assert conninfo("DSN=production") is None  # only the ODBC manager knows where that is
    with pytest.raises(InputError) as bad:
        conninfo("Server=h;Pwd=hunter2;pqopt={=broken 'x}")
    assert "hunter2" not in str(bad.value)


def test_a_copy_connection_error_never_shows_the_password(pg_database: ScratchDatabase) -> None:
    from migrator.providers.database.pgcopy import CopySession

    info = conninfo(pg_database.odbc.replace(pg_database.name, "no_such_database") + ";Pwd=hunter2")
    assert info is not None
    with pytest.raises(MigratorError) as failed:
        _ = CopySession(info, label="the target").conn
    assert "hunter2" not in str(failed.value) and "hunter2" not in repr(failed.value)
    assert "the target" in str(failed.value)


def test_whole_table_line_reads_go_through_copy_but_see_the_sessions_own_writes(
        pg_database: ScratchDatabase) -> None:
    from migrator.providers.database.base import LineReader

    db = created(pg_database)
    try:
        table = db.table(TYPES.name)
        assert table is not None
        expected = sorted(odbc_lines(db, table))
        assert sorted(LineReader(db, table).all()) == expected
        with db.transaction():  # a write of this session, not committed: COPY's session could not see it
            db.execute('INSERT INTO "Every Type" (id) VALUES (100000)')
            assert len(list(LineReader(db, table).all())) == len(expected) + 1
        with db.snapshot():
            assert sorted(LineReader(db, table).all()) == sorted(odbc_lines(db, table))
    finally:
        db.close()


def test_a_stream_closed_early_cancels_its_copy_and_the_session_reads_again(pg_database: ScratchDatabase) -> None:
    db = created(pg_database)
    try:
        table = db.table(TYPES.name)
        assert table is not None
        with db.snapshot():
            stream = db.stream_lines(table, None, 0)
            assert stream is not None
            next(iter(stream))
            stream.close()  # type: ignore[attr-defined]
            assert len(copy_lines(db, table)) == len(type_rows())
    finally:
        db.close()
