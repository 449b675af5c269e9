"""SQLite files through Python's own ``sqlite3`` module, not ODBC.

The SQLite ODBC driver is not exact (DECIMAL comes back as lossy strings, NUMERIC as float, datetimes as
strings) and crashes the process with ``fast_executemany``; ``sqlite3`` returns exactly what the file holds.

Types: SQLite keeps the declared type name; it is mapped by keyword (``INTEGER`` → bigint, since SQLite
integers are 64-bit; ``INT`` → integer; ``DECIMAL(p,s)``/``NUMERIC(p,s)`` → decimal ...). A column declared
DECIMAL has NUMERIC affinity, so SQLite itself keeps only about 15 significant digits of what was written;
migrator reads what is stored, exactly. Tables migrator creates declare decimals ``DECIMAL_TEXT(p,s)``: TEXT
affinity, so every digit survives.

Read-only switch: SQLite has no database-level switch and file permissions do not stop root. migrator adds
``BEFORE INSERT/UPDATE/DELETE`` triggers named ``_migrator_ro_*`` to every table that abort the statement
("read-only: migration in progress"); they bind every writer, whoever it runs as, and survive restarts.
They do not stop schema changes (DDL). Switching off drops them.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from migrator.errors import InputError, PermanentError, TransientError
from migrator.providers.database.base import (
    INTEGER_TYPES,
    MARKER_TABLE,
    TEMPORAL_TYPES,
    Column,
    Database,
    ForeignKey,
    Table,
    recursive_rows_sql,
)
from migrator.providers.database.scrub import withhold_values

#: Logical types whose portable value SQLite's ``json_array`` writes exactly as the backup's line does, and the
#: ``typeof`` a value must have for it (see :meth:`SqliteDatabase.range_digest`).
_JSON_AS_LINE = {"smallint": "integer", "integer": "integer", "bigint": "integer", "text": "text"}

#: The digest of a range holding a row SQLite's ``json_array`` does not write as its portable line (a value of
#: another type than its column's): equal to no chunk's, so the range is read.
NO_DIGEST = (-1, "")

READ_ONLY_MESSAGE = "read-only: migration in progress"
_TRIGGER_PREFIX = "_migrator_ro_"
#: sqlite3's message for a text value that is not UTF-8 (it goes on to quote the value, which is never kept).
_UNDECODABLE = re.compile(r"Could not decode to UTF-8 column '(.*?)' with text")
#: Key types whose values identify a row without being personal data; other keys are shown by rowid.
_SHOWN_KEY_TYPES = INTEGER_TYPES | {"uuid", "date", "time", "timestamp", "timestamptz", "boolean"}
_LEGACY_TEXT_HINT = ("legacy text that is not UTF-8 is refused, not guessed at (README, Databases): convert the "
                     "value at the source to UTF-8 (or store it as a BLOB column) and run the step again")
_DECIMAL = re.compile(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")
_LENGTH = re.compile(r"\(\s*(\d+)\s*\)")
# Order matters: the first keyword found in the declared type wins ("TIMESTAMPTZ" before "TIMESTAMP" ...).
_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("BIGINT", "bigint"), ("SMALLINT", "smallint"), ("TINYINT", "smallint"), ("INTEGER", "bigint"),
    ("INT", "integer"), ("DECIMAL", "decimal"), ("NUMERIC", "decimal"), ("FLOAT4", "real"), ("DOUBLE", "float"),
    ("FLOAT", "float"), ("REAL", "float"), ("BOOL", "boolean"), ("UUID", "uuid"), ("UNIQUEIDENTIFIER", "uuid"),
    ("TIMESTAMPTZ", "timestamptz"), ("WITH TIME ZONE", "timestamptz"), ("DATETIMEOFFSET", "timestamptz"),
    ("TIMESTAMP", "timestamp"), ("DATETIME", "timestamp"), ("DATE", "date"), ("TIME", "time"),
    ("CHAR", "text"), ("CLOB", "text"), ("TEXT", "text"), ("BLOB", "binary"), ("BINARY", "binary"),
)
_DDL = {
    "smallint": "SMALLINT", "integer": "INT", "bigint": "BIGINT", "real": "FLOAT4", "float": "DOUBLE",
    "binary": "BLOB", "date": "DATE", "time": "TIME", "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMPTZ",
    "boolean": "BOOLEAN", "uuid": "UUID",
}


def affinity(declared: str) -> str:
    """SQLite's affinity of a column declared ``declared`` (its rules, in their order: sqlite.org/datatype3.html,
    "Determination Of Column Affinity")."""
    upper = declared.upper()
    if "INT" in upper:
        return "INTEGER"
    if any(k in upper for k in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in upper or not upper.strip():
        return "BLOB"
    if any(k in upper for k in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def logical_type(declared: str, where: str) -> Column:
    upper = declared.upper()
    for keyword, kind in _KEYWORDS:
        if keyword in upper:
            if kind == "decimal":
                m = _DECIMAL.search(upper)
                if m:
                    return Column(where, kind, precision=int(m.group(1)), scale=int(m.group(2) or 0),
                                  native=declared)
            if kind == "text":
                m = _LENGTH.search(upper)
                return Column(where, kind, length=int(m.group(1)) if m else None, native=declared)
            if kind in TEMPORAL_TYPES:  # TIMESTAMP(7): values kept as text with that many fractional digits
                m = _LENGTH.search(upper)
                return Column(where, kind, precision=int(m.group(1)) if m else None, native=declared)
            return Column(where, kind, native=declared)
    raise InputError(f"column {where} has declared type {declared or '(none)'!r}, which has no portable form",
                     hint="declare it with a type name such as INTEGER, TEXT, BLOB, REAL, DECIMAL(p,s), TIMESTAMP")


class UndecodableText(PermanentError):
    """A text value in a SQLite file that is not valid UTF-8: refused, naming table, column and key."""

    def __init__(self, message: str, *, column: str) -> None:
        super().__init__(message, hint=_LEGACY_TEXT_HINT)
        self.column = column


class SqliteDatabase(Database):
    dialect = "sqlite"
    keys_after_load = False  # SQLite declares keys only in CREATE TABLE
    max_fraction_digits = 9  # temporal values are text: every digit written is kept

    def __init__(self, path: str, *, must_exist: bool = True) -> None:
        self.path = Path(path).expanduser()
        if must_exist and not self.path.is_file():
            raise InputError(f"SQLite database {self.path} does not exist", hint="check the connection path")
        if not self.path.parent.is_dir():
            raise InputError(f"folder of SQLite database {self.path} does not exist")
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            self.conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise InputError(f"cannot open SQLite database {self.path}: {exc}") from None
        self._in_transaction = False
        self._rowids: dict[str, str] = {}  # per table: its rowid alias column, "" for none (_rowid_alias)

    def describe(self) -> str:
        return f"sqlite database {self.path}"

    def close(self) -> None:
        self.conn.close()

    def _error(self, exc: sqlite3.Error, what: str) -> Exception:
        undecodable = _UNDECODABLE.search(str(exc))
        if undecodable is not None:
            column = undecodable.group(1)
            return UndecodableText(f"{what} on {self.describe()}: column {column} holds text that is not valid "
                                   "UTF-8", column=column)
        text = f"{what} on {self.describe()}: {withhold_values(str(exc))}"
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return TransientError(text)
        return PermanentError(text)

    def _rows_of(self, table: Table, rows: Iterator[Sequence[Any]]) -> Iterator[Sequence[Any]]:
        """``rows`` read from ``table``; text that is not UTF-8 fails naming the table, column and row key."""
        try:
            yield from rows
        except UndecodableText as exc:
            raise self._undecodable(table, exc.column) from None

    def _undecodable(self, table: Table, column: str) -> UndecodableText:
        """Finds the first row of ``table`` whose ``column`` (else any text column) is not UTF-8."""
        names = [column] if column in table.column_names else [c.name for c in table.columns if c.type == "text"]
        keys = list(table.primary_key)
        if not keys or any(table.column(k).type not in _SHOWN_KEY_TYPES for k in keys):
            keys = ["rowid"]
        saved = self.conn.text_factory
        self.conn.text_factory = bytes
        try:
            for name in names:
                bad, first = 0, ""
                for *key, value in self.conn.execute(
                        f"SELECT {self.column_list(keys)}, {self.quote(name)} FROM {self.table_ref(table.name)} "
                        f"WHERE typeof({self.quote(name)}) = 'text'"):
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        bad += 1
                        first = first or ", ".join(
                            f"{k}={v.decode('utf-8', 'replace') if isinstance(v, bytes) else v}"
                            for k, v in zip(keys, key, strict=True))
                if bad:
                    return UndecodableText(
                        f"table {table.name}, column {name}, row {first}: text that is not valid UTF-8 in "
                        f"{self.describe()} ({bad} row{'s' if bad != 1 else ''} of the column in all)", column=name)
        except sqlite3.Error:
            pass  # no rowid (WITHOUT ROWID) or the file went away: say what is known
        finally:
            self.conn.text_factory = saved
        return UndecodableText(f"table {table.name}, column {column}: text that is not valid UTF-8 in "
                               f"{self.describe()}", column=column)

    def read_page(self, table: Table, columns: Sequence[str], after: Sequence[Any] | None,
                  limit: int, *, lines: bool = False) -> Iterator[Sequence[Any]]:
        return self._rows_of(table, super().read_page(table, columns, after, limit, lines=lines))

    def read_offset(self, table: Table, columns: Sequence[str], offset: int,
                    limit: int, *, lines: bool = False) -> Iterator[Sequence[Any]]:
        return self._rows_of(table, super().read_offset(table, columns, offset, limit, lines=lines))

    def read_all(self, table: Table, columns: Sequence[str], *, lines: bool = False) -> Iterator[Sequence[Any]]:
        return self._rows_of(table, super().read_all(table, columns, lines=lines))

    # -- SQL text ----------------------------------------------------------------------------------------

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def column_ddl(self, column: Column) -> str:
        if column.type == "decimal":
            native = (f"DECIMAL_TEXT({column.precision},{column.scale or 0})" if column.precision is not None
                      else "DECIMAL_TEXT")
        elif column.type == "text":
            native = f"VARCHAR({column.length})" if column.length is not None else "TEXT"
        elif column.type in TEMPORAL_TYPES and column.precision is not None:
            native = f"{_DDL[column.type]}({column.precision})"
        else:
            native = _DDL[column.type]
        return native if column.nullable else f"{native} NOT NULL"

    def limit_query(self, select: str, rest: str, order: str, *, limit: int, offset: int = 0) -> str:
        tail = f" OFFSET {int(offset)}" if offset else ""
        return f"SELECT {select} {rest} ORDER BY {order} LIMIT {int(limit)}{tail}"

    def param_value(self, column: Column, value: Any) -> Any:
        if value is None:
            return None
        if column.type == "binary":
            return base64.b64decode(value)
        if column.type == "boolean":
            return 1 if value else 0
        return value

    # -- statements --------------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = (), *, batch: int = 1000) -> Iterator[Sequence[Any]]:
        try:
            cursor = self.conn.execute(sql, list(params))
            while rows := cursor.fetchmany(batch):
                yield from rows
        except sqlite3.Error as exc:
            raise self._error(exc, "query") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return self.conn.execute(sql, list(params)).rowcount
        except sqlite3.Error as exc:
            raise self._error(exc, "statement") from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._in_transaction:
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        finally:
            self._in_transaction = False

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        # A read transaction: every read inside sees the same committed state.
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def snapshot_twin(self) -> SqliteDatabase | None:
        """A second connection to the same file, inside a read transaction that reads the very state this
        connection's :meth:`snapshot` reads — so that two threads can read it at once — or None where that cannot
        be told: outside a snapshot, or in WAL mode. The caller closes it.

        How it is the same state: in a rollback-journal mode a reader's shared lock keeps every writer from
        committing (a commit needs the exclusive lock). This connection takes its shared lock now (a read inside
        its transaction) and holds it to the end of the snapshot, so nothing is committed between this read and
        the twin's first one. In WAL mode writers commit beside readers, so no twin is made."""
        if not self.conn.in_transaction:
            return None
        try:
            mode = str(self.conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode == "wal":
                return None
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the shared lock, held from here
            twin = SqliteDatabase(str(self.path))
        except sqlite3.Error:
            return None
        try:
            twin.conn.execute("BEGIN")
            twin.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            twin.close()
            return None
        return twin

    def execute_many(self, sql: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> None:
        try:
            self.conn.executemany(sql, [list(params) for params in rows])
        except sqlite3.Error as exc:
            raise self._error(exc, "statement") from None

    def insert_rows(self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cols = [table.column(n) for n in columns]
        sql = (f"INSERT INTO {self.table_ref(table.name)} ({self.column_list(columns)}) "
               f"VALUES ({', '.join('?' for _ in columns)})")
        try:
            self.conn.executemany(sql, ([self.param_value(c, v) for c, v in zip(cols, row, strict=True)]
                                        for row in rows))
        except sqlite3.Error as exc:
            raise self._error(exc, f"insert into {table.name}") from None

    def generated_rows_sql(self, rows: int, width: int) -> str | None:
        return recursive_rows_sql(rows, width)

    # -- catalog -----------------------------------------------------------------------------------------

    def _table_names(self) -> list[str]:
        return [r[0] for r in self.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "AND name <> ? ORDER BY name", [MARKER_TABLE])]

    def tables(self) -> list[Table]:
        result = []
        for name in self._table_names():
            columns, keyed = [], []
            for _, col, declared, notnull, _, pk in self.query("SELECT * FROM pragma_table_info(?)", [name]):
                base = logical_type(declared or "", f"{name}.{col}")
                columns.append(Column(col, base.type, not notnull and not pk, base.precision, base.scale,
                                      base.length, declared))
                if pk:
                    keyed.append((pk, col))
            fks: dict[int, tuple[list[str], str, list[str]]] = {}
            for fk_id, _, ref, src, dst, *_ in self.query("SELECT * FROM pragma_foreign_key_list(?)", [name]):
                cols, _, refs = fks.setdefault(fk_id, ([], ref, []))
                cols.append(src)
                refs.append(dst)
            foreign = tuple(ForeignKey(f"fk_{name}_{i}", tuple(c), ref, tuple(r))
                            for i, (c, ref, r) in sorted(fks.items()))
            result.append(Table(name, tuple(columns), tuple(c for _, c in sorted(keyed)), foreign))
        return result

    # -- range digests (the window's database.sync) ------------------------------------------------------

    def _rowid_alias(self, table: Table) -> str | None:
        """The column of ``table`` that is SQLite's rowid (an ``INTEGER PRIMARY KEY`` of a rowid table, which
        always holds an integer), or None. Any other primary key has an index of origin ``pk``."""
        if len(table.primary_key) != 1 or table.column(table.primary_key[0]).type not in INTEGER_TYPES:
            return None
        cached = self._rowids.get(table.name)
        if cached is None:
            indexed = any(r[3] == "pk" for r in self.query("SELECT * FROM pragma_index_list(?)", [table.name]))
            cached = self._rowids[table.name] = "" if indexed else table.primary_key[0]
        return cached or None

    def _line_sql(self, table: Table) -> tuple[str, str] | None:
        """Each row's line as SQLite's ``json_array`` writes it, and a condition true where that is the portable
        line: every value an integer of an integer column or text of a text column, or null. None where a
        column's type has another portable form (or the table has no primary key).

        Only the values that could be of another type are tested (``typeof`` on every value costs as much as
        writing the line): a column of TEXT affinity holds text, null or a BLOB, and ``json_array`` refuses a
        BLOB (the query fails and the caller reads the range); the rowid holds an integer; a NOT NULL column
        holds no null."""
        columns = [table.column(n) for n in table.column_names]
        if not columns or not table.primary_key or any(c.type not in _JSON_AS_LINE for c in columns):
            return None
        rowid = self._rowid_alias(table)
        checks = []
        for column in columns:
            want = _JSON_AS_LINE[column.type]
            if (want == "text" and column.native and affinity(column.native) == "TEXT") or column.name == rowid:
                continue
            q = self.quote(column.name)
            checks.append(f"typeof({q}) IN ('{want}', 'null')" if column.nullable else f"typeof({q}) = '{want}'")
        quoted = ", ".join(self.quote(c.name) for c in columns)
        return f"json_array({quoted})", " AND ".join(checks) or "1"

    def _digest_select(self, table: Table) -> str | None:
        """``SELECT`` of each row's line as SQLite's ``json_array`` writes it, whether that is the portable line
        (:meth:`_line_sql`), and the row's key; None where a column's type has another portable form."""
        found = self._line_sql(table)
        if found is None:
            return None
        line, exact = found
        return f"SELECT {line}, {exact}, {self.column_list(table.primary_key)} FROM {self.table_ref(table.name)}"

    def _digests(self, table: Table, low: Sequence[Any] | None, bounds: Sequence[Sequence[Any]],
                 cut: Callable[[Sequence[Any], int], bool]) -> list[tuple[int, str]] | None:
        """Row count and text MD5 of each range ``(low, bounds[0]]``, ``(bounds[0], bounds[1]]`` ... from one read
        of ``(low, bounds[-1]]`` in key order, ``cut(key, n)`` telling a row beyond the ``n``-th bound. A range
        holding a row whose line SQLite does not write as the portable line gets :data:`NO_DIGEST`: it is read."""
        select = self._digest_select(table)
        if select is None:
            return None
        where, params = self.range_where(table, low, bounds[-1])
        result: list[tuple[int, str]] = []
        digest, count, exact, at = hashlib.md5(usedforsecurity=False), 0, True, 0
        try:
            cursor = self.conn.execute(f"{select}{where} ORDER BY {self.column_list(table.primary_key)}", params)
            while batch := cursor.fetchmany(5000):
                start = 0
                for i, row in enumerate(batch):  # cut where a row lies beyond the current bound
                    while cut(row[2:], at):
                        part = batch[start:i]
                        digest.update("".join(r[0] + "\n" for r in part).encode("utf-8"))
                        count, exact = count + len(part), exact and all(r[1] for r in part)
                        result.append((count, digest.hexdigest()) if exact else NO_DIGEST)
                        digest, count, exact, at, start = hashlib.md5(usedforsecurity=False), 0, True, at + 1, i
                part = batch[start:]
                digest.update("".join(r[0] + "\n" for r in part).encode("utf-8"))
                count, exact = count + len(part), exact and all(r[1] for r in part)
        except (sqlite3.Error, TypeError):
            return None  # legacy text, a key of another type than its column's: the caller reads the range
        while len(result) < len(bounds):
            result.append((count, digest.hexdigest()) if exact else NO_DIGEST)
            digest, count, exact = hashlib.md5(usedforsecurity=False), 0, True
        return result

    def range_text(self, table: Table, low: Sequence[Any] | None, high: Sequence[Any] | None
                   ) -> tuple[int, bytes] | None:
        """The row count and the text of the rows with a primary key in ``(low, high]`` (None: unbounded), each
        row's line as SQLite's ``json_array`` writes it, ended by a newline, in key order: one value built by
        SQLite (``group_concat``), so no row becomes a Python object. None where that is not every row's
        portable line (:meth:`_line_sql`: a column type or a value of another type; a BLOB).

        A line SQLite writes is exact JSON of the row's values, so one equal to a line of the backup is the
        same row; one that is not may still be the same row written with other escapes (the caller then reads
        that row, :meth:`read_keys`). Only the order of the lines is SQLite's to keep (an ordered subquery
        feeding ``group_concat``): text in another order only fails to hash as the chunk's."""
        found = self._line_sql(table)
        if found is None:
            return None
        line, exact = found
        where, params = self.range_where(table, low, high)
        # As a BLOB: the UTF-8 bytes as SQLite holds them, never decoded and encoded again here. Text that is not
        # UTF-8 (which no backup line is) then hashes as no chunk does, and its line is no presync line.
        sql = (f"SELECT count(*), min(e), CAST(group_concat(l, char(10)) AS BLOB) FROM (SELECT {line} AS l, "
               f"{exact} AS e FROM {self.table_ref(table.name)}{where} "
               f"ORDER BY {self.column_list(table.primary_key)})")
        try:
            rows, every, text = self.conn.execute(sql, params).fetchone()
        except sqlite3.Error:
            return None  # a BLOB value, text too long for one value: the caller reads the range
        if not rows:
            return 0, b""
        if not every:
            return None
        return int(rows), bytes(text) + b"\n"

    def range_digest(self, table: Table, low: Sequence[Any] | None, high: Sequence[Any] | None
                     ) -> tuple[int, str] | None:
        # In-process (nothing crosses a network), yet most of the cost of reading a range is building each
        # row's line in Python: SQLite writes it (json_array, in C) where its JSON is the portable line. Where it
        # is not byte for byte that line (another SQLite's escaping), the digest differs and the caller reads
        # the range: never a wrong "unchanged", as both are exact JSON of the same values.
        if high is None:
            return None
        found = self.range_text(table, low, high)
        if found is None:
            return None
        return found[0], hashlib.md5(found[1], usedforsecurity=False).hexdigest()

    def range_digests(self, table: Table, low: Sequence[Any] | None, bounds: Sequence[Sequence[Any]]
                      ) -> list[tuple[int, str]] | None:
        if not bounds:
            return None
        if any(table.column(k).type not in INTEGER_TYPES for k in table.primary_key):
            # Text keys order by the column's collation, which Python cannot follow: one range at a time.
            found = [self._digests(table, a, [b], lambda key, n: False)
                     for a, b in zip([low, *bounds[:-1]], bounds, strict=True)]
            return None if any(f is None for f in found) else [f[0] for f in found if f is not None]
        ends = [tuple(int(v) for v in b) for b in bounds]
        return self._digests(table, low, bounds, lambda key, n: tuple(key) > ends[n])

    def table_exists(self, name: str) -> bool:
        return any(True for _ in self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                            [name]))

    def count(self, table: str) -> int:
        return int(next(iter(self.query(f"SELECT count(*) FROM {self.table_ref(table)}")))[0])

    def foreign_key_sql(self, table: Table, fk: ForeignKey) -> str:
        raise NotImplementedError("SQLite declares foreign keys only in CREATE TABLE")

    def create_table_sql(self, table: Table) -> str:
        # SQLite cannot add a foreign key later, so they are declared here (checked only when enforced).
        sql = super().create_table_sql(table)
        extra = [f"FOREIGN KEY ({self.column_list(fk.columns)}) REFERENCES {self.quote(fk.ref_table)} "
                 f"({self.column_list(fk.ref_columns)})" for fk in table.foreign_keys]
        return sql[:-1] + "".join(", " + e for e in extra) + ")" if extra else sql

    # -- read-only switch --------------------------------------------------------------------------------

    def _triggers(self) -> set[str]:
        return {r[0] for r in self.query("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE ?",
                                         [_TRIGGER_PREFIX + "%"])}

    @staticmethod
    def _trigger_name(table: str, op: str) -> str:
        return f"{_TRIGGER_PREFIX}{hashlib.sha256(table.encode()).hexdigest()[:12]}_{op.lower()}"

    def read_only(self) -> bool:
        names = self._table_names()
        triggers = self._triggers()
        return bool(names) and all(self._trigger_name(t, op) in triggers for t in names
                                   for op in ("INSERT", "UPDATE", "DELETE"))

    def set_read_only(self, on: bool, *, grace_seconds: int | None = None) -> None:
        with self.transaction():
            if on:
                for table in self._table_names():
                    for op in ("INSERT", "UPDATE", "DELETE"):
                        self.execute(f"CREATE TRIGGER IF NOT EXISTS {self.quote(self._trigger_name(table, op))} "
                                     f"BEFORE {op} ON {self.quote(table)} "
                                     f"BEGIN SELECT RAISE(ABORT, '{READ_ONLY_MESSAGE}'); END")
            else:
                for name in self._triggers():
                    self.execute(f"DROP TRIGGER IF EXISTS {self.quote(name)}")

    def write_probe(self) -> str | None:
        names = self._table_names()
        if not names:
            return None
        try:
            self.conn.execute("SAVEPOINT migrator_probe")
            try:
                self.conn.execute(f"INSERT INTO {self.quote(names[0])} DEFAULT VALUES")
                return None
            finally:
                self.conn.execute("ROLLBACK TO migrator_probe")
                self.conn.execute("RELEASE migrator_probe")
        except sqlite3.Error as exc:
            if READ_ONLY_MESSAGE in str(exc):
                return str(exc)
            # Rejected for another reason (a NOT NULL column): the trigger did not fire, so writes are open.
            return None
