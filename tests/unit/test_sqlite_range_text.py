"""A SQLite source writes a key range's lines itself (``SqliteDatabase.range_text``: ``json_array`` in
``group_concat``), and ``database.sync`` compares that text with the presync chunk's: the text must be the
portable lines byte for byte where it is given, and not be given where a value's line would differ.

Everything here is in process (SQLite files only): the lines are checked against ``LineReader``, which writes
them as a backup does.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from migrator.providers.database import Table
from migrator.providers.database.backup import ChunkInfo, lines_text
from migrator.providers.database.base import LineReader
from migrator.providers.database.sqlite import SqliteDatabase, affinity
from migrator.steps.database.sync import KeyRange, RangeTexts, changed_rows, written_text

ODD = ["Zoë \"quoted\" \\ back", "tab\tnew\nline\r\x01\x1f\x7f", "😀 𝄞 \u2028", None, "", "a\x00b", "</script>"]


def _people(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, team INTEGER NOT NULL, rank INT, "
                   "name VARCHAR(100), note TEXT)")
        db.executemany("INSERT INTO people VALUES (?, ?, ?, ?, ?)",
                       [(i, i % 7, None if i % 3 else i, f"name {i}", ODD[i % len(ODD)]) for i in range(1, 101)])
        db.execute("UPDATE people SET note = 42 WHERE id = 50")  # TEXT affinity: kept as the text 42
        db.execute("CREATE TABLE tags (code VARCHAR(20) PRIMARY KEY, label TEXT)")
        db.executemany("INSERT INTO tags VALUES (?, ?)", [(f"t{i:03d}", ODD[i % len(ODD)]) for i in range(40)])


@pytest.fixture
def source(tmp_path: Path) -> Any:
    path = tmp_path / "source.sqlite"
    _people(path)
    db = SqliteDatabase(str(path))
    try:
        yield db
    finally:
        db.close()


def _table(db: SqliteDatabase, name: str) -> Table:
    return next(t for t in db.tables() if t.name == name)


@pytest.mark.parametrize(("name", "low", "high"), [
    ("people", None, None), ("people", None, [10]), ("people", [10], [77]), ("people", [77], None),
    ("people", [100], None), ("tags", None, ["t015"]), ("tags", ["t015"], ["t039"]), ("tags", ["t039"], None),
])
def test_the_text_sqlite_writes_is_the_portable_lines_of_the_range(
        source: SqliteDatabase, name: str, low: list[Any] | None, high: list[Any] | None) -> None:
    table = _table(source, name)
    expected = LineReader(source, table).range(low, high)
    found = source.range_text(table, low, high)
    assert found == (len(expected), lines_text(expected))
    digest = source.range_digest(table, low, high) if high is not None else None
    if high is not None:
        assert digest == (len(expected), hashlib.md5(lines_text(expected)).hexdigest())


@pytest.mark.parametrize("change", [
    "UPDATE people SET team = 2.5 WHERE id = 40",   # a real in an INTEGER column: json_array writes 2.5
    "UPDATE people SET rank = 'x7' WHERE id = 40",  # text in a nullable INT column
    "UPDATE people SET team = x'00' WHERE id = 40",  # a BLOB: json_array refuses it
    "UPDATE people SET note = x'41' WHERE id = 40",  # a BLOB in a TEXT column
])
def test_a_range_holding_a_value_of_another_type_is_not_written_by_sqlite(source: SqliteDatabase,
                                                                           change: str) -> None:
    table = _table(source, "people")
    source.execute(change)
    assert source.range_text(table, [30], [50]) is None
    assert source.range_digest(table, [30], [50]) is None
    assert source.range_text(table, [50], [60]) is not None  # the other ranges still are


def test_only_the_values_that_can_hold_another_type_are_tested(source: SqliteDatabase) -> None:
    line_sql = source._line_sql(_table(source, "people"))
    assert line_sql is not None
    _, exact = line_sql
    # id is the rowid (always an integer); name and note have TEXT affinity (text, null or a refused BLOB).
    assert exact == "typeof(\"team\") = 'integer' AND typeof(\"rank\") IN ('integer', 'null')"
    assert [affinity(d) for d in ("VARCHAR(10)", "INTEGER", "CHARINT", "BLOB", "", "DOUBLE", "DECIMAL(5,2)")] \
        == ["TEXT", "INTEGER", "INTEGER", "BLOB", "BLOB", "REAL", "NUMERIC"]


def test_a_primary_key_that_is_not_the_rowid_is_tested(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE w (id INTEGER PRIMARY KEY, v TEXT) WITHOUT ROWID")
        conn.execute("INSERT INTO w VALUES ('seven', 'text in an INTEGER key')")
    db = SqliteDatabase(str(path))
    try:
        table = _table(db, "w")
        line_sql = db._line_sql(table)
        assert line_sql is not None and "typeof(\"id\")" in line_sql[1]
        assert db.range_text(table, None, None) is None
    finally:
        db.close()


def _chunk(lines: list[bytes], high: list[Any]) -> ChunkInfo:
    text = lines_text(lines)
    return ChunkInfo(name="c", rows=len(lines), bytes=len(text), sha256="", fingerprint="0", last_key=high,
                     text_md5=hashlib.md5(text).hexdigest())


def test_changed_rows_reads_only_the_rows_whose_line_is_not_the_presyncs(source: SqliteDatabase) -> None:
    table = _table(source, "people")
    reader = LineReader(source, table)
    source.execute("DELETE FROM people WHERE id = 45")
    presync = reader.range([20], [60])
    source.execute("UPDATE people SET name = 'renamed' WHERE id = 33")
    source.execute("DELETE FROM people WHERE id = 41")
    source.execute("INSERT INTO people VALUES (45, 1, NULL, 'new', 'inserted')")
    reads: list[list[list[Any]]] = []
    keys = reader.keys

    def counted(wanted: Any) -> list[bytes]:
        reads.append(list(wanted))
        return keys(wanted)

    reader.keys = counted  # type: ignore[method-assign]
    written = source.range_text(table, [20], [60])
    assert written is not None
    found = changed_rows(reader, table, written[1], presync)
    assert found is not None
    lines, gone = found
    assert sorted(k[0] for k in reads[0]) == [33, 45]
    assert sorted(json.loads(line)[0] for line in lines) == [33, 45]
    assert sorted(json.loads(line)[0] for line in gone) == [33, 41]
    # unchanged: nothing read
    assert changed_rows(reader, table, lines_text(presync), presync) is None
    assert len(reads) == 1


def test_range_texts_asked_ahead_are_those_written_now(source: SqliteDatabase) -> None:
    people, tags = _table(source, "people"), _table(source, "tags")
    wanted = [(people, KeyRange(0, None, [30], None)), (people, KeyRange(1, [30], [70], None)),
              (people, KeyRange(2, [70], None, None)), (tags, KeyRange(0, None, ["t020"], None)),
              (tags, KeyRange(1, ["t020"], None, None))]
    with RangeTexts([source], wanted, ahead=2) as texts:
        assert texts.text(source, people, wanted[0][1]) == written_text(source, people, wanted[0][1])
        # range 1 of people skipped (done before a resume): dropped, and the next ones still come
        assert texts.text(source, people, wanted[2][1]) == written_text(source, people, wanted[2][1])
        assert texts.text(source, tags, wanted[4][1]) == written_text(source, tags, wanted[4][1])
        # asked again, out of the order: written then and there
        assert texts.text(source, tags, wanted[3][1]) == written_text(source, tags, wanted[3][1])
    chunk = _chunk(LineReader(source, people).range(None, [30]), [30])
    found = written_text(source, people, KeyRange(0, None, [30], chunk))
    assert found is not None and found.same_as(chunk) and found.presync is None


def test_a_range_that_differs_comes_with_its_presync_lines(source: SqliteDatabase) -> None:
    people = _table(source, "people")
    before = LineReader(source, people).range([30], [70])
    chunk = _chunk(before, [70])
    wanted = [(people, KeyRange(0, None, [30], _chunk(LineReader(source, people).range(None, [30]), [30]))),
              (people, KeyRange(1, [30], [70], chunk))]
    source.execute("UPDATE people SET name = 'renamed' WHERE id = 44")
    read: list[str] = []

    def presync(c: ChunkInfo) -> list[bytes]:
        read.append(c.name)
        return before

    with RangeTexts([source], wanted, presync=presync) as texts:
        first, second = (texts.text(source, t, kr) for t, kr in wanted)
    assert first is not None and first.same_as(wanted[0][1].chunk) and first.presync is None
    assert second is not None and not second.same_as(chunk) and second.presync == before
    assert read == ["c"]  # only the chunk of the range that differs was read


def test_legacy_text_is_never_a_presync_line_and_is_left_to_the_reader(source: SqliteDatabase) -> None:
    table = _table(source, "people")
    reader = LineReader(source, table)
    presync = reader.range([60], [70])
    source.execute("UPDATE people SET note = CAST(x'ff41' AS TEXT) WHERE id = 65")  # not UTF-8
    written = source.range_text(table, [60], [70])
    assert written is not None and written[1] != lines_text(presync)
    with pytest.raises(ValueError):  # its key cannot be told: the sync reads the range as values instead
        changed_rows(reader, table, written[1], presync)
