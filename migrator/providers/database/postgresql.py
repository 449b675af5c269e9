"""PostgreSQL through unixODBC and psqlODBC (the "PostgreSQL Unicode" driver; the ANSI one breaks on unicode).

Driver facts this dialect works around: psqlODBC returns booleans as the string ``'1'`` unless the connection
string says ``BoolsAsChar=0`` (added when missing), ``timestamptz`` as naive datetimes in the session time zone
(set to UTC on connect), and UUIDs upper-case (portable values are lower-case). Parameters are sent as text
and cast by the server (``CAST(? AS numeric(38,10))``), which keeps every digit and every microsecond.
Result sets are read through a server-side cursor (``UseDeclareFetch=1``) so memory does not grow with a table.

Reads let the server write the portable form of decimals, dates, timestamps, UUIDs and binaries (text in the
exact shape :func:`~.base.to_portable` gives), so neither the driver nor Python converts those values; backups
and fingerprints go further and have the server write each row's whole encoded line (``line_select``), floats
excepted (its shortest digits are not always Python's). Inserts send a batch of backup lines as one ``jsonb``
array parameter that the server unpacks and casts.

Backup reads, whole-table line reads and restore loads go through ``COPY`` instead, on a psycopg session beside
this one (:mod:`.pgcopy`): the same lines, in this session's snapshot; a restore's chunk is copied, marked and
fenced in one transaction of that session.

The read-only switch is ``ALTER DATABASE … SET default_transaction_read_only = on`` followed by ending the
database's other sessions, so every session from then on starts read-only. It is a default, not a lock: a
session may still ``SET default_transaction_read_only = off`` itself (the application does not); the write
probe checks what a new session gets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pyodbc

from migrator.errors import PermanentError
from migrator.providers.database.base import (
    MARKER_TABLE,
    ChangedKeys,
    ChunkLoad,
    Column,
    Converter,
    Fingerprint,
    Table,
    UnsupportedType,
    assemble_tables,
    recursive_rows_sql,
)
from migrator.providers.database.odbc import OdbcDatabase, odbc_error, parse_odbc
from migrator.providers.database.pgcopy import CopySession, conninfo
from migrator.providers.database.pgfloat import float_json_sql

_TYPES = {
    "smallint": "smallint", "integer": "integer", "bigint": "bigint", "numeric": "decimal", "real": "real",
    "double precision": "float", "text": "text", "character varying": "text", "character": "text",
    "bytea": "binary", "date": "date", "time without time zone": "time", "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz", "boolean": "boolean", "uuid": "uuid",
}
#: Logical types an identity (or serial) column can have.
_COUNTED = frozenset({"smallint", "integer", "bigint"})

_DDL = {
    "smallint": "smallint", "integer": "integer", "bigint": "bigint", "real": "real", "float": "double precision",
    "binary": "bytea", "date": "date", "time": "time", "timestamp": "timestamp", "timestamptz": "timestamptz",
    "boolean": "boolean", "uuid": "uuid",
}


#: How a column is read so the server writes its portable form (see to_portable); "{}" is the quoted column.
_PORTABLE_SELECT = {
    "date": "CAST({} AS text)",
    "timestamp": "to_char({}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')",
    # The session time zone is UTC (on_connect), so to_char writes UTC.
    "timestamptz": "to_char({}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')",
    "uuid": "CAST({} AS text)",
    # encode() breaks base64 into lines of 76 characters; the portable form has none.
    "binary": "replace(encode({}, 'base64'), chr(10), '')",
    "decimal": "CAST({} AS text)",
}
_QUOTED = "'\"' || {} || '\"'"
#: How a column becomes the JSON of its portable value inside a line (see line_select); "{}" is the quoted
#: column. Only characters JSON never escapes can occur inside the quoted ones; text goes through to_json,
#: which escapes exactly what Python's json does.
_LINE_VALUE = {
    "smallint": "CAST({} AS text)", "integer": "CAST({} AS text)", "bigint": "CAST({} AS text)",
    "boolean": "CASE WHEN {0} THEN 'true' WHEN NOT {0} THEN 'false' END",
    "text": "CAST(to_json({}) AS text)",
    **{kind: _QUOTED.format(template) for kind, template in _PORTABLE_SELECT.items()},
}

#: Types whose values come out of the driver already portable (natively, or by _PORTABLE_SELECT).
_AS_READ = frozenset({"smallint", "integer", "bigint", "text", "float", "real", "date", "timestamp", "timestamptz",
                      "uuid", "binary"})

# A bare NaN/Infinity token, as Python's json writes non-finite floats, or a negative zero, which jsonb would
# turn into 0 (inside a string either only costs the fast path).
_NON_FINITE = re.compile(rb"[\[,](?:-?(?:NaN|Infinity)|-0\.0)[\],]")


def _may_hold_non_finite(payload: bytes) -> bool:
    # Substring search is several times faster than the expression, which then only runs when it may match.
    return b"NaN" in payload or b"Infinity" in payload or b"-0.0" in payload


def _literal(value: str) -> str:
    """A string literal whatever standard_conforming_strings says (an escape string: backslashes doubled too)."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def connection_options(text: str) -> str:
    """The connection string with the options this dialect relies on added when the user did not set them."""
    lowered = text.lower().replace(" ", "")
    extra = []
    for key, value in (("boolsaschar", "0"), ("usedeclarefetch", "1"), ("fetch", "2000")):
        if f"{key}=" not in lowered:
            extra.append(f"{key}={value}")
    if not extra:
        return text
    return text.rstrip().rstrip(";") + ";" + ";".join(extra)


class PostgresDatabase(OdbcDatabase):
    dialect = "postgresql"

    def __init__(self, connection_string: str, *, label: str, schema: str = "public") -> None:
        self.schema = schema
        # COPY's session (backup reads, restore loads), from the same connection string; None: ODBC only.
        info = conninfo(connection_string)
        self.copy_session = CopySession(info, label=label) if info is not None else None
        #: Inside snapshot(): the ODBC transaction's snapshot, exported for COPY reads to share.
        self._snapshot: str | None = None
        connection_string = connection_options(connection_string)
        #: Whether booleans come as Python bools (BoolsAsChar=0, unless the connection string says otherwise).
        self.native_booleans = parse_odbc(connection_string).get("boolsaschar") == "0"
        super().__init__(connection_string, label=label)

    #: The server's version number (server_version_num), once asked.
    _server_version: int | None = None

    #: Loads are bound by the server's work on each batch: two sessions use two of its cores.
    load_workers = 2

    def on_connect(self) -> None:
        self.execute("SET TIME ZONE 'UTC'")
        self.execute("SET DateStyle = 'ISO, YMD'")
        # Shortest round-trip digits for floats (what pgfloat builds Python's text from), whatever the
        # database's default; and no JIT: line expressions are long, and compiling them costs seconds for a
        # query whose every row takes microseconds.
        self.execute("SET extra_float_digits = 3")
        self.execute("SET jit = off")
        self.database = str(self.scalar("SELECT current_database()"))

    # -- SQL text ----------------------------------------------------------------------------------------

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def table_ref(self, name: str) -> str:
        return f"{self.quote(self.schema)}.{self.quote(name)}"

    def column_ddl(self, column: Column) -> str:
        if column.type == "decimal":
            native = (f"numeric({column.precision},{column.scale or 0})" if column.precision is not None
                      else "numeric")
        elif column.type == "text":
            native = f"varchar({column.length})" if column.length is not None else "text"
        else:
            native = _DDL[column.type]
        return native if column.nullable else f"{native} NOT NULL"

    def column_definition(self, column: Column) -> str:
        if column.identity and column.type in _COUNTED:
            # BY DEFAULT, not ALWAYS: the restore loads the source's numbers as they are (an ALWAYS column would
            # need OVERRIDING SYSTEM VALUE on every insert, and COPY cannot say it); finish_load moves it past.
            return f"{super().column_definition(column)} GENERATED BY DEFAULT AS IDENTITY"
        return super().column_definition(column)

    def marker(self, column: Column) -> str:
        if column.type == "binary":
            return "decode(?, 'base64')"
        if column.type == "text":
            return "?"
        return f"CAST(? AS {self.column_ddl(replace(column, nullable=True))})"

    def select_expr(self, column: Column) -> str:
        template = _PORTABLE_SELECT.get(column.type)
        return template.format(self.quote(column.name)) if template else self.quote(column.name)

    def line_select(self, table: Table, columns: Sequence[str]) -> str | None:
        # Floats are fetched as numbers between the text pieces when rows are read through ODBC anyway: Python
        # writes a float's text several times faster than the server writes Python's outside pgfloat's short
        # range (see whole_line, which COPY reads use: there the server's work runs beside this process's).
        return self._line_sql(table, columns, floats_in_text=False)

    def whole_line(self, table: Table, columns: Sequence[str]) -> str | None:
        """An expression the server writes each row's whole encoded line with, floats included (as Python's
        json writes them: :func:`~.pgfloat.float_json_sql`), or None where it cannot for some column type: what
        the fingerprint and the range digest hash without a row leaving the server."""
        if any(table.column(n).type in ("float", "real") for n in columns) and not self._shortest_floats():
            return None
        return self._line_sql(table, columns, floats_in_text=True)

    def _shortest_floats(self) -> bool:
        """Whether the server writes a float's shortest round-trip digits (PostgreSQL 12 and later), which
        pgfloat builds Python's text from."""
        if self._server_version is None:
            self._server_version = int(str(self.scalar("SHOW server_version_num")))
        return self._server_version >= 120000

    def _line_sql(self, table: Table, columns: Sequence[str], *, floats_in_text: bool) -> str | None:
        pieces: list[str] = []
        current = ["'['"]
        for i, name in enumerate(columns):
            column = table.column(name)
            if i:
                current.append("','")
            if column.type in ("float", "real") and floats_in_text:
                # A real's portable value is what the drivers give for it: its shortest text read as a double
                # (0.1, not the widened 0.10000000149011612).
                value = self.quote(column.name)
                value = value if column.type == "float" else f"CAST(CAST({value} AS text) AS float8)"
                current.append(f"coalesce({float_json_sql(value)}, 'null')")
                continue
            if column.type in ("float", "real"):
                pieces.append(" || ".join(current))
                pieces.append(self.quote(column.name))
                current = []
                continue
            if column.type == "decimal" and column.scale is None:
                return None  # the portable form drops trailing zeros
            template = _LINE_VALUE.get(column.type)
            if template is None:
                return None
            current.append(f"coalesce({template.format(self.quote(column.name))}, 'null')")
        current.append("']'")
        pieces.append(" || ".join(current))
        return ", ".join(pieces)

    def change_token(self, table: str) -> str | None:
        # Every insert or update writes a row version whose xmin is the writing transaction's id, newer than any
        # before it (within the hours a cutover is watched, far from wrap-around); a delete lowers the count. So
        # count, sum and maximum of xmin change with every write, and reading them scans no column data.
        rows, total, newest = next(iter(self.query(
            f"SELECT count(*), coalesce(sum(xmin::text::bigint), 0), coalesce(max(xmin::text::bigint), 0) "
            f"FROM {self.table_ref(table)}", [])))
        return f"{int(rows)}:{int(total)}:{int(newest)}"

    def fingerprint_sql(self, table: Table, columns: Sequence[str]) -> str | None:
        # md5() of the whole line, floats included, in the database's UTF-8, is row_hash of the very bytes
        # migrator would hash.
        line = self.whole_line(table, columns)
        if line is None:
            return None
        # OFFSET 0 keeps the subquery: pulled up, its MD5 (and the line) would be computed once per half.
        halves = "sum(CAST(h AS bit(64))::bigint), sum(CAST(h << 64 AS bit(64))::bigint)"
        return (f"SELECT count(*), {halves} FROM (SELECT CAST('x' || md5({line}) AS bit(128)) AS h "
                f"FROM {self.table_ref(table.name)} OFFSET 0) AS rows")

    def range_digest_sql(self, table: Table, where: str) -> str | None:
        # The lines joined in key order, each ended by a newline (lines_text), hashed as UTF-8 whatever the
        # database's encoding; the range is a presync chunk's, bounded in bytes, so the text fits in memory.
        line = self.whole_line(table, table.column_names)
        if line is None:
            return None
        text = f"coalesce(string_agg({line}, chr(10) ORDER BY {self.column_list(table.primary_key)}) || chr(10), '')"
        return f"SELECT count(*), md5(convert_to({text}, 'UTF8')) FROM {self.table_ref(table.name)}{where}"

    def range_digests_sql(self, table: Table) -> str | None:
        # A range with no row gives count 0 and the MD5 of no text.
        ranges = self._ranges_join(table, "LEFT JOIN")
        if ranges is None:
            return None
        joined, order = ranges
        text = f"coalesce(string_agg(r.l, chr(10) ORDER BY {order}) || chr(10), '')"
        return f"SELECT b.n, count(r.l), md5(convert_to({text}, 'UTF8')) FROM {joined} GROUP BY b.n ORDER BY b.n"

    def read_ranges_sql(self, table: Table) -> str | None:
        ranges = self._ranges_join(table, "JOIN")
        if ranges is None:
            return None
        joined, order = ranges
        return f"SELECT r.l FROM {joined} ORDER BY b.n, {order}"

    def _ranges_join(self, table: Table, join: str, value: str | None = None) -> tuple[str, str] | None:
        """The ranges of a JSON list of ``[low key, high key]`` pairs (the query's one parameter) numbered
        ``b.n``, each joined with its rows ``r`` (``r.l``: ``value``, by default the whole line; ``r.k0`` ...: the
        key), an index range scan each, the keys cast as a parameter of their column is; and the rows' key order.
        None where the server does not write the table's lines, or a key is a float (NaN and infinities are no
        JSON)."""
        line = value or self.whole_line(table, table.column_names)
        keys = [table.column(n) for n in table.primary_key]
        if line is None or not keys or any(c.type in ("float", "real") for c in keys):
            return None

        def bound(side: int) -> str:
            return ", ".join(self.marker(c).replace("?", f"(b.v->{side}->>{i})") for i, c in enumerate(keys))

        columns = self.column_list(table.primary_key)
        named = ", ".join(f"{self.quote(c.name)} AS k{i}" for i, c in enumerate(keys))
        # OFFSET 0 keeps the subquery a subquery: pulled up, the planner joins every range with one scan of the
        # whole table (ranges x rows comparisons, seconds for a 20,000-row table cut in 16-row pieces) instead of
        # an index range scan per range.
        rows = (f"SELECT {line} AS l, {named} FROM {self.table_ref(table.name)} "
                f"WHERE ({columns}) > ({bound(0)}) AND ({columns}) <= ({bound(1)}) OFFSET 0")
        ranges = "jsonb_array_elements(CAST(? AS jsonb)) WITH ORDINALITY AS b(v, n)"
        return f"{ranges} {join} LATERAL ({rows}) AS r ON true", ", ".join(f"r.k{i}" for i in range(len(keys)))

    def change_version(self) -> int | None:
        # The snapshot's horizon: every transaction before it had ended when the snapshot was taken, so a row
        # version written by one of them (xmin older than it) that is still visible is as the snapshot saw it.
        return int(str(self.scalar("SELECT txid_snapshot_xmin(txid_current_snapshot())")))

    def changed_keys(self, table: Table, since: int) -> ChangedKeys:
        return ChangedKeys(None, "PostgreSQL names no deleted key; its row versions tell which key ranges changed")

    def range_versions(self, table: Table, low: Sequence[Any] | None, bounds: Sequence[Sequence[Any]],
                       since: int) -> list[tuple[int, int]] | None:
        # A row written after the horizon (an insert or an update: either writes a new row version whose xmin is
        # its transaction) has an xmin no older than it — the horizon itself is the first transaction the
        # snapshot may not have seen — by age() (32-bit transaction ids compare by distance);
        # reading xmin and the key reads no column value.
        horizon = f"CAST('{int(since) % (1 << 32)}' AS xid)"
        # The horizon behind the server's transaction counter (64 bits) and within a billion transactions: the
        # same server, and ids age() still tells apart; else NULL (cannot say).
        written = (f"CASE WHEN age({horizon}) BETWEEN 0 AND 1000000000 "
                   f"AND txid_snapshot_xmax(txid_current_snapshot()) >= {int(since)} "
                   f"THEN age(xmin) <= age({horizon}) END")
        ranges = self._ranges_join(table, "LEFT JOIN", written)
        if ranges is None or not bounds:
            return None
        found: list[tuple[int, int]] = []
        pairs = [[a, b] for a, b in zip([low, *bounds[:-1]], bounds, strict=True)]
        if low is None:  # the first range has no lower bound: on its own (an index scan from the first key)
            where, params = self.range_where(table, None, bounds[0])
            count, young, unknown = next(iter(self.query(
                f"SELECT count(*), count(*) FILTER (WHERE {written}), count(*) FILTER (WHERE ({written}) IS NULL) "
                f"FROM {self.table_ref(table.name)}{where}", params)))
            if unknown:
                return None
            found, pairs = [(int(count), int(young))], pairs[1:]
        if pairs:
            joined, _ = ranges
            rows = {int(n): (int(count), int(young), int(unknown)) for n, count, young, unknown in self.query(
                f"SELECT b.n, count(r.l), count(*) FILTER (WHERE r.l), count(*) FILTER (WHERE r.l IS NULL AND "
                f"r.k0 IS NOT NULL) FROM {joined} GROUP BY b.n ORDER BY b.n", [json.dumps(pairs, ensure_ascii=False)])}
            if any(rows[i + 1][2] for i in range(len(pairs))):
                return None
            found.extend(rows[i + 1][:2] for i in range(len(pairs)))
        return found

    def read_converters(self, read: Sequence[Column], portable: Sequence[Column]) -> list[Converter | None]:
        converters = super().read_converters(read, portable)
        for i, (r, p) in enumerate(zip(read, portable, strict=True)):
            if r.type == p.type and (r.type in _AS_READ or (r.type == "decimal" and r.scale is not None
                                                             and r.scale == p.scale)
                                     or (r.type == "boolean" and self.native_booleans)):
                converters[i] = None
        return converters

    def limit_query(self, select: str, rest: str, order: str, *, limit: int, offset: int = 0) -> str:
        tail = f" OFFSET {int(offset)}" if offset else ""
        return f"SELECT {select} {rest} ORDER BY {order} LIMIT {int(limit)}{tail}"

    def param_value(self, column: Column, value: Any) -> Any:
        if value is None or column.type in ("text", "binary"):
            return value
        if column.type == "boolean":
            return "true" if value else "false"
        if column.type in ("float", "real"):
            return repr(float(value))
        return str(value)

    def insert_lines(self, table: Table, columns: Sequence[str], lines: Sequence[bytes]) -> None:
        if not self._insert_json(table, columns, b"[" + b",".join(lines) + b"]"):
            super().insert_lines(table, columns, lines)

    def _insert_json(self, table: Table, columns: Sequence[str], payload: bytes) -> bool:
        # The bulk path: one JSON array parameter per batch, unpacked and cast by the server. psqlODBC runs a
        # parameter array row by row; this is one round trip, and no value is touched in Python. jsonb, not
        # json: ->> on json parses the element again for every column.
        cols = [table.column(n) for n in columns]
        if any(c.type in ("float", "real") for c in cols) and _may_hold_non_finite(payload) \
                and _NON_FINITE.search(payload):
            return False  # not JSON: PostgreSQL's parser refuses them
        exprs = []
        for i, col in enumerate(cols):
            value = f"r->>{i}"
            if col.type == "binary":
                exprs.append(f"decode({value}, 'base64')")
            elif col.type == "text":
                exprs.append(value)
            else:
                exprs.append(f"CAST({value} AS {self.column_ddl(replace(col, nullable=True))})")
        sql = (f"INSERT INTO {self.table_ref(table.name)} ({self.column_list(columns)}) "
               f"SELECT {', '.join(exprs)} FROM jsonb_array_elements(CAST(convert_from(?, 'UTF8') AS jsonb)) AS r")
        # Sent as bytes: the driver passes them through, where text would be converted to UTF-16 and back.
        self.execute(sql, [payload])
        return True

    # -- fencing -----------------------------------------------------------------------------------------

    def fence_sessions(self, label: str, generation: int) -> None:
        # application_name carries the label and generation; a generation's sessions end older ones, whose
        # runner lost the run's lock (a paused process keeps its transaction, and its locks, open otherwise).
        mine = f"{label}:{generation}"[:63]
        self.execute(f"SET application_name = '{mine}'")
        if self.copy_session is not None:
            self.copy_session.tag(mine)
        for (name,) in self.query("SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND application_name LIKE ? AND pid <> pg_backend_pid()", [f"{label}:%"]):
            older = str(name).rsplit(":", 1)[-1]
            if older.isdigit() and int(older) < generation:
                self.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ? "
                             "AND datname = current_database() AND pid <> pg_backend_pid()", [name])

    def generated_rows_sql(self, rows: int, width: int) -> str | None:
        return recursive_rows_sql(rows, width)

    # -- catalog -----------------------------------------------------------------------------------------

    def tables(self) -> list[Table]:
        columns: dict[str, list[Column]] = {}
        rows = self.query(
            "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable, c.numeric_precision, "
            "c.numeric_scale, c.character_maximum_length, "
            "c.is_identity = 'YES' OR coalesce(c.column_default, '') LIKE 'nextval(%' "
            "FROM information_schema.columns c "
            "JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
            "WHERE c.table_schema = ? AND t.table_type = 'BASE TABLE' ORDER BY c.table_name, c.ordinal_position",
            [self.schema])
        for table, name, data_type, nullable, precision, scale, length, numbered in rows:
            if table == MARKER_TABLE:
                continue
            kind = _TYPES.get(data_type)
            if kind is None:
                raise UnsupportedType(f"column {table}.{name} has type {data_type}, which has no portable form",
                                      hint="supported: " + ", ".join(sorted(_TYPES)))
            columns.setdefault(table, []).append(Column(
                name, kind, nullable == "YES",
                precision=int(precision) if kind == "decimal" and precision is not None else None,
                scale=int(scale) if kind == "decimal" and scale is not None else None,
                length=int(length) if kind == "text" and length is not None else None,
                native=data_type, identity=bool(numbered) and kind in _COUNTED))
        keys: dict[str, tuple[str, ...]] = {}
        fks: dict[tuple[str, str], tuple[list[str], str, list[str]]] = {}
        rows = self.query(
            "SELECT con.conname, con.contype, cl.relname, a.attname, rcl.relname, ra.attname "
            "FROM pg_constraint con JOIN pg_class cl ON cl.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = cl.relnamespace "
            "CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum "
            "LEFT JOIN pg_class rcl ON rcl.oid = con.confrelid "
            "LEFT JOIN pg_attribute ra ON ra.attrelid = con.confrelid AND ra.attnum = con.confkey[k.ord] "
            "WHERE n.nspname = ? AND con.contype IN ('p', 'f') ORDER BY cl.relname, con.conname, k.ord",
            [self.schema])
        for conname, contype, table, column, ref_table, ref_column in rows:
            if contype == "p":
                keys[table] = (*keys.get(table, ()), column)
            else:
                cols, _, refs = fks.setdefault((table, conname), ([], ref_table, []))
                cols.append(column)
                refs.append(ref_column)
        return assemble_tables(columns, keys, fks)

    def finish_load(self, table: Table) -> None:
        # An identity or serial column numbers new rows from its sequence, which loading explicit values does not
        # move: set it to the largest key loaded, then prove the next number is above it (read, not drawn).
        for column in table.columns:
            if not column.identity:
                continue
            ref = f"{self.quote(self.schema)}.{self.quote(table.name)}"
            sequence = self.scalar("SELECT pg_get_serial_sequence(?, ?)", [ref, column.name])
            if sequence is None:
                continue  # made without one here (a target schema made beforehand): nothing numbers its rows
            largest = self.scalar(f"SELECT max({self.quote(column.name)}) FROM {self.table_ref(table.name)}")
            if largest is None:
                continue  # no row: the sequence starts as created
            with self.transaction():
                self.scalar("SELECT setval(CAST(? AS regclass), ?)", [sequence, int(largest)])
            following = self.scalar("SELECT CASE WHEN is_called THEN last_value + s.seqincrement ELSE last_value "
                                    f"END FROM {sequence}, pg_sequence s WHERE s.seqrelid = CAST(? AS regclass)",
                                    [sequence])
            if following is None or int(following) <= int(largest):
                raise PermanentError(f"table {table.name} on {self.label}: after moving its sequence, the identity "
                                     f"column {column.name} would give {following} next, not above the largest "
                                     "loaded key", hint="check the sequence's increment")

    def table_exists(self, name: str) -> bool:
        return bool(self.scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? "
                                "AND table_name = ?", [self.schema, name]))

    def count(self, table: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {self.table_ref(table)}"))

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self.transaction():
            if self.copy_session is None:
                self.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield
                return
            # Exported for COPY's session to read in (the same rows the counts here see), in the transaction's
            # first statement: psqlODBC runs every later one in a subtransaction, which cannot export it.
            self._snapshot = self._first_statement_value(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT pg_export_snapshot()")
            try:
                yield
            finally:
                self._snapshot = None

    def _first_statement_value(self, sql: str) -> str:
        """The value the second statement of ``sql`` (two statements, the first giving no rows) returns."""
        try:
            cursor = self.conn.cursor()
            try:
                cursor.execute(sql)
                cursor.nextset()
                row = cursor.fetchone()
            finally:
                cursor.close()
        except pyodbc.Error as exc:
            raise odbc_error(exc, f"query on {self.label} failed") from None
        return str(row[0]) if row else ""

    # -- COPY (backup reads, restore loads) --------------------------------------------------------------

    def close(self) -> None:
        if self.copy_session is not None:
            self.copy_session.close()
        super().close()

    def stream_lines(self, table: Table, after: Sequence[Any] | None, offset: int) -> Iterator[bytes] | None:
        # The server writes whole lines, floats included, where it can: a backup's reader is bound by this
        # process, and the float text costs the server little (pgfloat's short way, for most values).
        select = self.whole_line(table, table.column_names) or self.line_select(table, table.column_names)
        if select is None or self.copy_session is None:
            return None
        sql = f"SELECT {select} FROM {self.table_ref(table.name)}"
        if table.primary_key:
            if after is not None:
                # COPY takes no parameters: the key as literals, each in its marker's cast.
                literals = [self.marker(c).replace("?", _literal(self.param_value(c, v)))
                            for c, v in zip([table.column(n) for n in table.primary_key], after, strict=True)]
                sql += f" WHERE ({self.column_list(table.primary_key)}) > ({', '.join(literals)})"
            sql += f" ORDER BY {self.column_list(table.primary_key)}"
        else:
            sql += " ORDER BY " + ", ".join(self.quote(c.name) for c in table.columns)
            sql += f" OFFSET {int(offset)}" if offset else ""
        return self.copy_session.lines(sql, snapshot=self._snapshot)

    def read_all(self, table: Table, columns: Sequence[str], *, lines: bool = False) -> Iterator[Sequence[Any]]:
        # Whole-table line reads (fingerprints the server cannot compute) through COPY too — but not inside a
        # write transaction of this session, whose uncommitted rows COPY's session cannot see.
        select = self.line_select(table, columns) if lines and self.copy_session is not None else None
        if select is None or self.copy_session is None or (self._in_transaction and self._snapshot is None):
            return super().read_all(table, columns, lines=lines)
        stream = self.copy_session.lines(f"SELECT {select} FROM {self.table_ref(table.name)}", snapshot=self._snapshot)
        return ((line.decode("utf-8"),) for line in stream)  # one text piece: join_line's whole line

    def server_fingerprint(self, table: Table, columns: Sequence[str]) -> Fingerprint | None:
        # On COPY's session, where the server may spread the work over its parallel workers (a cursor's query,
        # as psqlODBC runs every one, never is): 1.75 s against 0.85 s for 200,000 rows on two cores. Not
        # inside a write transaction of this session, whose uncommitted rows that session cannot see.
        query = self.fingerprint_sql(table, columns)
        if query is None:
            return None
        if self.copy_session is None or (self._in_transaction and self._snapshot is None):
            rows, high, low = next(iter(self.query(query, [])))
        else:
            rows, high, low = self.copy_session.one_row(query, snapshot=self._snapshot)
        return Fingerprint.from_half_sums(rows, high, low)

    @contextmanager
    def chunk_transaction(self) -> Iterator[ChunkLoad]:
        if self.copy_session is None:
            with self.transaction():
                yield self
            return
        # On COPY's session: the rows, the chunk's marker and the fence check in one transaction there.
        with self.copy_session.load(self.schema) as load:
            yield load

    # -- read-only switch --------------------------------------------------------------------------------

    def read_only(self) -> bool:
        settings = self.scalar(
            "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s JOIN pg_database d "
            "ON d.oid = s.setdatabase WHERE d.datname = current_database() AND s.setrole = 0")
        return "default_transaction_read_only=on" in str(settings or "")

    def set_read_only(self, on: bool, *, grace_seconds: int | None = None) -> None:
        # Our own session may have started read-only: lift that for it alone before altering the database.
        self.execute("SET SESSION default_transaction_read_only = off")
        if on:
            self.execute(f"ALTER DATABASE {self.quote(self.database)} SET default_transaction_read_only = on")
            # Sessions already open keep their defaults: end them, so nobody writes with the old one.
            self.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        else:
            self.execute(f"ALTER DATABASE {self.quote(self.database)} RESET default_transaction_read_only")

    def write_probe(self) -> str | None:
        # A new session, since ours has lifted the default for itself; nothing is left behind (rolled back).
        try:
            probe = pyodbc.connect(self.connection_string, autocommit=False, timeout=15)
        except pyodbc.Error as exc:
            raise odbc_error(exc, f"write probe cannot connect to {self.label}", connecting=True) from None
        try:
            cursor = probe.cursor()
            cursor.execute("CREATE TEMP TABLE _migrator_write_probe (x integer)")
            probe.rollback()
            return None
        except pyodbc.Error as exc:
            if str(exc.args[0]) == "25006":
                return str(odbc_error(exc, "write probe").message)
            raise odbc_error(exc, f"write probe on {self.label} failed") from None
        finally:
            probe.close()
