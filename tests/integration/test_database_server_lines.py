"""PostgreSQL writes every row's encoded line itself, floats included, so that it fingerprints a table and
digests a key range without a row leaving the server; database.sync then reads only the ranges that changed.

The float text is the hard part (``migrator.providers.database.pgfloat``): it must be byte for byte what
Python's ``json`` writes (``repr``), which backups store and every fingerprint and chunk digest hashes. It is
proved here on the special values and on many random doubles, through the dialect's own session.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from migrator.providers.database import Column, Database, Fingerprint, Table, encode_row, open_database
from migrator.providers.database.backup import lines_text
from migrator.providers.database.base import LineReader
from migrator.providers.database.pgfloat import float_json_sql
from migrator.providers.database.postgresql import PostgresDatabase
from migrator.providers.database.sqlite import SqliteDatabase
from migrator.steps.database import Backup, Restore, Sync, fingerprint
from migrator.testing import MemoryContext, run_step
from tests.integration.test_database_delta import changed_after_presync
from tests.support.postgres import PostgresServer, ScratchDatabase

pytestmark = pytest.mark.integration

SPECIAL = [
    0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, -5e-324, 1e-323, 2.2250738585072014e-308,
    2.225073858507201e-308, 1e300, -1e300, 1e-300, 0.1, -0.1, 0.30000000000000004, 2.938840473755711e16,
    1e23, 9.999999999999999e22, 1e22, 1e21, 1e17, 1e16, 1e15, 9999999999999998.0, 1234567890123456.7,
    123456789012345.67, 0.0001, 0.00001, 1.7976931348623157e308, -1.7976931348623157e308, 9007199254740993.0,
    2.0 ** 53, 2.0 ** 63, 1.0, -2.5, 3.0, 100.0, 0.5, 1 / 3,
]


#: The bit patterns of 1e-3 and 1e14 (a positive double's order is its bits'): the range pgfloat writes the short way.
_BITS_1E_3, _BITS_1E14 = (int.from_bytes(struct.pack(">d", v), "big") for v in (1e-3, 1e14))


def doubles(count: int, seed: int = 15) -> list[float]:
    """The special values, every power of two and of ten a double has, and ``count`` random doubles of
    several kinds: any bit pattern, integers above 2**53, subnormals, short decimals, any bit pattern between
    1e-3 and 1e14."""
    rng = random.Random(seed)
    values = list(SPECIAL)
    values += [2.0 ** e for e in range(-1074, 1024)] + [-(2.0 ** e) for e in range(-1074, 1024, 5)]
    values += [float(f"1e{e}") for e in range(-323, 309)]
    values += [float(f"{m}e{e}") for m in (2, 5, 9, 3.5) for e in range(-320, 300, 7)]
    for _ in range(count):
        values.append(struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0])
    for _ in range(count // 4):
        values.append(float(rng.randrange(2 ** 53, 2 ** 62)))
        values.append(struct.unpack(">d", rng.getrandbits(52).to_bytes(8, "big"))[0])  # subnormal
        values.append(round(rng.uniform(-1e6, 1e6), rng.randrange(0, 7)))
        values.append(rng.random() * 10.0 ** rng.randrange(-30, 30))
        values.append(struct.unpack(">d", rng.randrange(_BITS_1E_3, _BITS_1E14).to_bytes(8, "big"))[0])
    return values


def as_real(value: float) -> float | None:
    """The single-precision value nearest ``value``, as a double (None where a real cannot hold it)."""
    try:
        return float(struct.unpack(">f", struct.pack(">f", value))[0])
    except OverflowError:
        return None


def real_values(scratch: ScratchDatabase, sql: str) -> dict[int, float | None]:
    """The portable value of each real ``sql`` selects (key, real), as both PostgreSQL read paths give it: the
    server's shortest text of the single-precision value, read as a double (0.1, not 0.10000000149011612)."""
    with scratch.connect() as conn:
        conn.execute("SET extra_float_digits = 3")
        return {int(i): None if r is None else float(r) for i, r in conn.execute(sql).fetchall()}


def json_text(value: float) -> str:
    return encode_row([value]).decode()[1:-1]


def test_the_server_writes_every_double_as_python_json_does(postgres: PostgresServer) -> None:
    scratch = postgres.create_database()
    values = doubles(20_000)
    with scratch.connect() as conn:
        conn.execute("CREATE TABLE d (i integer PRIMARY KEY, x double precision, r real)")
        with conn.cursor() as cur, cur.copy("COPY d (i, x, r) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "float8", "float4"])
            for i, value in enumerate(values):
                copy.write_row((i, value, as_real(value)))
    table = Table("d", (Column("i", "integer", nullable=False), Column("x", "float"), Column("r", "real")), ("i",))
    db = open_database(scratch.endpoint, None)
    try:
        # Through the dialect's own session (its settings are part of what is proved) and its own line.
        assert isinstance(db, PostgresDatabase)
        line = db.whole_line(table, table.column_names)
        assert line is not None
        written = {int(i): text for i, text in db.query(f"SELECT i, {line} FROM d", [])}
        # the bare expression too, for a double
        bare = {int(i): text for i, text in db.query(f"SELECT i, {float_json_sql('x')} FROM d", [])}
    finally:
        db.close()
    reals = real_values(scratch, "SELECT i, CAST(r AS text) FROM d")
    assert len(written) == len(bare) == len(reals) == len(values)
    wrong = [(i, json_text(v), bare[i]) for i, v in enumerate(values) if bare[i] != json_text(v)]
    assert wrong == [], f"{len(wrong)} doubles written otherwise than Python does, e.g. {wrong[:5]}"
    wrong = [(i, written[i]) for i, v in enumerate(values)
             if written[i].encode() != encode_row([i, v, reals[i]])]
    assert wrong == [], f"{len(wrong)} lines written otherwise than Python does, e.g. {wrong[:5]}"


READINGS = Table("Readings", (
    Column("Id", "bigint", nullable=False), Column("x", "float"), Column("r", "real"), Column("Note", "text"),
), ("Id",))


def reading_rows(count: int = 300) -> list[list[Any]]:
    """Rows of READINGS, special values first (reals as inserted: see real_values for what they read as)."""
    values = doubles(count)[: count]
    rows: list[list[Any]] = []
    for i, value in enumerate(values, start=1):
        real = as_real(value)
        rows.append([i, value, real, f"reading {i} — ü 😀" if i % 3 else None])
    rows[5][1] = None
    return rows


def _expected(rows: Sequence[Sequence[Any]]) -> Fingerprint:
    result = Fingerprint()
    result.add_lines([encode_row(list(row)) for row in rows])
    return result


def _readings_db(postgres: PostgresServer) -> tuple[dict[str, Any], list[list[Any]]]:
    """A database holding READINGS; its rows in portable form."""
    scratch = postgres.create_database()
    endpoint = scratch.endpoint
    rows = reading_rows()
    db = open_database(endpoint, None)
    try:
        with db.transaction():
            db.execute(db.create_table_sql(READINGS))
            db.insert_rows(READINGS, READINGS.column_names, rows)
    finally:
        db.close()
    reals = real_values(scratch, 'SELECT "Id", CAST("r" AS text) FROM "Readings"')
    for row in rows:
        row[2] = reals[row[0]]
    return endpoint, rows


def test_the_server_fingerprints_a_table_with_floats_to_the_clients_value(postgres: PostgresServer) -> None:
    endpoint, rows = _readings_db(postgres)
    db = open_database(endpoint, None)
    try:
        computed = db.server_fingerprint(READINGS, READINGS.column_names)
        assert computed is not None, "the server should fingerprint a table with float and real columns"
        assert computed.as_dict() == _expected(rows).as_dict()
        assert fingerprint(db, READINGS).as_dict() == _expected(rows).as_dict()
        # every line the client reads hashes to the same value too (the lines are byte-identical)
        client = Fingerprint()
        client.add_lines(list(LineReader(db, READINGS).all()))
        assert client.as_dict() == computed.as_dict()
    finally:
        db.close()


def test_the_fingerprint_query_may_run_in_parallel(postgres: PostgresServer) -> None:
    """No subquery in the line (a correlated SubPlan makes the whole query parallel-restricted): with parallel
    plans made free, PostgreSQL plans the fingerprint of a table with floats under a Gather."""
    endpoint, _ = _readings_db(postgres)
    db = open_database(endpoint, None)
    try:
        assert isinstance(db, PostgresDatabase)
        query = db.fingerprint_sql(READINGS, READINGS.column_names)
        assert query is not None
        with db.transaction():
            for setting in ("parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"):
                db.execute(f"SET LOCAL {setting} = 0")
            plan = "\n".join(str(row[0]) for row in db.query(f"EXPLAIN {query}", []))
    finally:
        db.close()
    assert "SubPlan" not in plan, plan
    assert "Gather" in plan, plan


def test_the_range_digest_is_the_md5_of_the_ranges_text(postgres: PostgresServer) -> None:
    endpoint, _ = _readings_db(postgres)
    db = open_database(endpoint, None)
    try:
        bounds: list[list[Any] | None] = [None, [1], [7], [100], [299], [300], None]
        for low, high in itertools.pairwise(bounds):
            lines = LineReader(db, READINGS).range(low, high)
            digest = db.range_digest(READINGS, low, high)
            assert digest == (len(lines), hashlib.md5(lines_text(lines)).hexdigest()), (low, high)
        beyond = db.range_digest(READINGS, [300], None)
        assert beyond == (0, hashlib.md5(b"").hexdigest())
        # one value changed in the range changes its digest, and only its own
        before = [db.range_digest(READINGS, low, high) for low, high in (([1], [7]), ([7], [100]))]
        with db.transaction():
            db.execute(f"UPDATE {db.table_ref('Readings')} SET {db.quote('x')} = ? WHERE {db.quote('Id')} = ?",
                       [db.param_value(READINGS.column("x"), 1e23), 50])
        after = [db.range_digest(READINGS, low, high) for low, high in (([1], [7]), ([7], [100]))]
        assert after[0] == before[0] and after[1] != before[1]
    finally:
        db.close()


def test_row_versions_tell_the_rows_written_since_a_backup_and_refuse_a_horizon_they_cannot_place(
        postgres: PostgresServer) -> None:
    endpoint, _ = _readings_db(postgres)
    db = open_database(endpoint, None)
    try:
        with db.snapshot():  # as a backup records it
            since = db.change_version()
        assert since is not None
        assert db.range_versions(READINGS, None, [[100], [300]], since) == [(100, 0), (200, 0)]
        with db.transaction():
            db.execute(f"UPDATE {db.table_ref('Readings')} SET {db.quote('Note')} = ? WHERE {db.quote('Id')} = ?",
                       ["changed", 150])
            db.execute(f"DELETE FROM {db.table_ref('Readings')} WHERE {db.quote('Id')} = ?", [10])
            db.insert_rows(READINGS, READINGS.column_names, [[301, 1.5, None, None]])
        assert db.range_versions(READINGS, None, [[100], [300], [400]], since) == [(99, 0), (200, 1), (1, 1)]
        assert db.range_versions(READINGS, [100], [[300]], since) == [(200, 1)]
        # a horizon the server's counter has not reached (another server's): it cannot say
        assert db.range_versions(READINGS, None, [[100]], since + 10**7) is None
    finally:
        db.close()


PAIRS = Table("Pairs", (Column("Name", "text", nullable=False), Column("N", "integer", nullable=False),
                        Column("x", "float")), ("Name", "N"))


def test_the_digests_of_many_ranges_in_one_query_are_each_ranges_md5(postgres: PostgresServer) -> None:
    names = ["a", "O'Brien", 'say "hi"', "back\\slash", "ünï", "😀", "zz"]
    rows = [[name, n, n / 7] for name in names for n in range(5)]
    db = open_database(postgres.create_database().endpoint, None)
    try:
        with db.transaction():
            db.execute(db.create_table_sql(PAIRS))
            db.insert_rows(PAIRS, PAIRS.column_names, rows)
        keys = [[r[0], r[1]] for r in LineReader(db, PAIRS).range(None, None) for r in [json.loads(r)]]
        bounds = [keys[3], keys[4], keys[17], keys[-1], ["zzz", 0]]
        for low in (None, keys[1]):
            digests = db.range_digests(PAIRS, low, bounds)
            lows = [low, *bounds[:-1]]
            expected = []
            for a, b in zip(lows, bounds, strict=True):
                lines = LineReader(db, PAIRS).range(a, b)
                expected.append((len(lines), hashlib.md5(lines_text(lines)).hexdigest()))
            assert digests == expected, low
            assert [d[0] for d in expected] == ([4] if low is None else [2]) + [1, 13, 17, 0]
    finally:
        db.close()


@dataclass
class Reads:
    """The key ranges databases read rows of (the rows crossing the network), as (table, low, high), and how
    many rows they gave."""

    ranges: list[tuple[str, Any, Any]] = field(default_factory=list)
    rows: int = 0

    def of(self, table: str) -> list[tuple[Any, Any]]:
        return [(low, high) for name, low, high in self.ranges if name == table]


@pytest.fixture
def range_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    """Every range read through ``Database.read_range`` or ``Database.read_ranges``: the real methods, counted."""
    reads = Reads()
    one, many = Database.read_range, Database.read_ranges

    def read_range(self: Database, table: Table, columns: Sequence[str], low: Sequence[Any] | None,
                   high: Sequence[Any] | None, **kwargs: Any) -> Iterator[Sequence[Any]]:
        rows = list(one(self, table, columns, low, high, **kwargs))
        reads.ranges.append((table.name, low, high))
        reads.rows += len(rows)
        return iter(rows)

    def read_ranges(self: Database, table: Table, ranges: Sequence[tuple[Sequence[Any], Sequence[Any]]]
                    ) -> list[bytes] | None:
        lines = many(self, table, ranges)
        if lines is not None:
            reads.ranges.extend((table.name, low, high) for low, high in ranges)
            reads.rows += len(lines)
        return lines

    monkeypatch.setattr(Database, "read_range", read_range)
    monkeypatch.setattr(Database, "read_ranges", read_ranges)
    yield reads


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_sync_reads_only_the_ranges_that_changed(dialect: str, postgres: PostgresServer, tmp_path: Path,
                                                     range_reads: Reads) -> None:
    source, target, backup, expected, _ = changed_after_presync(postgres, tmp_path, dialect)
    range_reads.ranges.clear()  # the presync's reads
    range_reads.rows = 0

    _, out = run_step(Sync("db_sync", Sync.Params.model_validate(
        {"source": source, "database": target.endpoint, "backup": backup})), MemoryContext())

    assert out["mismatches"] == []
    lines_read = range_reads.of("line items")
    if dialect == "postgresql":
        # line items: 33 rows in chunks of 5 → 7 ranges + the one beyond; changed: 1 (deletes), 5 (update),
        # and the one beyond the last key (an insert), which is read whatever it holds. The server told the
        # other five unchanged by their row versions: none of their rows was read. Order (22 rows, 5 ranges +
        # 1) likewise: changed 0 (a delete), 1 (an update) and the one beyond (an insert), although the
        # server cannot write its lines (a time column): row versions need none.
        assert lines_read == [([2, 2], [4, 1]), ([9, 1], [10, 3]), ([11, 3], None)]
        assert range_reads.of("Order") == [(None, [5]), ([5], [10]), ([22], None)]
    else:  # SQLite tells nothing by itself: every range is read, as before
        assert len(lines_read) == 8
        assert len(range_reads.of("Order")) == 6
    assert out["rows_read"] == range_reads.rows + len(expected["Audit Log"])  # read whole


def presync(source: dict[str, Any], postgres: PostgresServer, tmp_path: Path
            ) -> tuple[ScratchDatabase, dict[str, Any]]:
    """The presync of ``source`` in chunks of 50 rows: backed up to a folder and restored into a new PostgreSQL
    database; that database and the backup."""
    target = postgres.create_database()
    backup = {"kind": "folder", "path": str(tmp_path / "backup")}
    run_step(Backup("presync", Backup.Params.model_validate(
        {"database": source, "to": backup, "chunk_rows": 50})), MemoryContext())
    run_step(Restore("presync_restore", Restore.Params.model_validate({"backup": backup, "database": target.endpoint})),
             MemoryContext())
    return target, backup


def test_a_sync_of_a_table_with_floats_reads_only_the_changed_range(
        postgres: PostgresServer, tmp_path: Path, range_reads: Reads) -> None:
    source, rows = _readings_db(postgres)
    target, backup = presync(source, postgres, tmp_path)
    db = open_database(source, None)
    try:
        with db.transaction():  # row 120 (range 2) gets a value whose PostgreSQL text is not Python's
            db.execute(f"UPDATE {db.table_ref('Readings')} SET {db.quote('x')} = ? WHERE {db.quote('Id')} = ?",
                       [db.param_value(READINGS.column("x"), 2.938840473755711e16), 120])
            # and row 3 (range 0, below the first key: the first sub-range has no lower bound)
            db.execute(f"UPDATE {db.table_ref('Readings')} SET {db.quote('Note')} = ? WHERE {db.quote('Id')} = ?",
                       ["changed", 3])
    finally:
        db.close()
    rows[119][1] = 2.938840473755711e16
    rows[2][3] = "changed"
    range_reads.ranges.clear()
    range_reads.rows = 0

    _, out = run_step(Sync("db_sync", Sync.Params.model_validate(
        {"source": source, "database": target.endpoint, "backup": backup})), MemoryContext())

    assert out["mismatches"] == [] and out["changed_ranges"] == 2 and out["rows_updated"] == 2
    # 300 rows in chunks of 50: six ranges and the one beyond. The source digested every range and the 16-row
    # sub-ranges of the changed ones: only the sub-ranges of row 3 (rows 1 to 16) and of row 120 (117 to 132)
    # and the range beyond the last key (empty) were read.
    assert range_reads.of("Readings") == [(None, [16]), ([116], [132]), ([300], None)]
    assert out["rows_read"] == range_reads.rows == 32
    assert out["tables"]["Readings"]["expected"] == _expected(rows).as_dict()
    dst = open_database(target.endpoint, None)
    try:
        assert fingerprint(dst, READINGS).as_dict() == _expected(rows).as_dict()
    finally:
        dst.close()


def _sqlite_people(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, team INTEGER NOT NULL, name VARCHAR(100), "
                   "note TEXT)")
        db.execute("CREATE TABLE tags (code VARCHAR(20) PRIMARY KEY, label TEXT)")
        odd = ["Zoë \"quoted\" \\ back", "tab\tnew\nline\r\x01\x1f\x7f", "😀 𝄞 \u2028", None, ""]
        db.executemany("INSERT INTO people VALUES (?, ?, ?, ?)",
                       [(i, i % 7, f"name {i}", odd[i % len(odd)]) for i in range(1, 201)])
        db.execute("UPDATE people SET note = 42 WHERE id = 77")  # SQLite keeps it as the text 42 (TEXT affinity)
        db.executemany("INSERT INTO tags VALUES (?, ?)", [(f"t{i:03d}", odd[i % len(odd)]) for i in range(60)])


def test_a_sqlite_source_writes_ranges_itself_and_the_sync_reads_only_the_changed_rows(
        postgres: PostgresServer, tmp_path: Path, range_reads: Reads, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    path = tmp_path / "source.sqlite"
    _sqlite_people(path)
    source = {"dialect": "sqlite", "connection": str(path)}
    target, backup = presync(source, postgres, tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE people SET note = 'changed \"again\"' WHERE id = 120")  # range 3 (101..150)
        db.execute("INSERT INTO people VALUES (201, 1, 'new', 'beyond the last key')")
        db.execute("UPDATE tags SET label = 'relabelled' WHERE code = 't010'")
    range_reads.ranges.clear()
    range_reads.rows = 0
    by_key: list[tuple[str, list[Any]]] = []
    read_keys = SqliteDatabase.read_keys

    def counted(self: SqliteDatabase, table: Table, columns: Sequence[str], keys: Sequence[Sequence[Any]],
                **kwargs: Any) -> Iterator[Sequence[Any]]:
        by_key.extend((table.name, list(k)) for k in keys)
        return read_keys(self, table, columns, keys, **kwargs)

    monkeypatch.setattr(SqliteDatabase, "read_keys", counted)

    _, out = run_step(Sync("db_sync", Sync.Params.model_validate(
        {"source": source, "database": target.endpoint, "backup": backup})), MemoryContext())

    assert out["mismatches"] == []
    # people: four ranges of 50 and the one beyond; tags (text keys): ranges of 50 and 10 and the one beyond.
    # SQLite wrote every range's lines itself: no range was read as values, only the rows whose line is not the
    # presync's, by key (row 120, the new row 201 beyond the last key, tag t010).
    assert range_reads.of("people") == range_reads.of("tags") == []
    assert sorted(by_key, key=repr) == [("people", [120]), ("people", [201]), ("tags", ["t010"])]
    assert out["rows_read"] == 3 and out["rows_updated"] == 2 and out["rows_inserted"] == 1
    assert [r[0] for r in target.sql("SELECT note FROM people WHERE id IN (77, 120, 201) ORDER BY id")] == \
        ["42", 'changed "again"', "beyond the last key"]
