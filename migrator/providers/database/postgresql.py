"""PostgreSQL through unixODBC and psqlODBC (the "PostgreSQL Unicode" driver; the ANSI one breaks on unicode).

Driver facts this dialect works around: psqlODBC returns booleans as the string ``'1'`` unless the connection
string says ``BoolsAsChar=0`` (added when missing), ``timestamptz`` as naive datetimes in the session time zone
(set to UTC on connect), and UUIDs upper-case (portable values are lower-case). Parameters are sent as text
and cast by the server (``CAST(? AS numeric(38,10))``), which keeps every digit and every microsecond.
Result sets are read through a server-side cursor (``UseDeclareFetch=1``) so memory does not grow with a table.

Reads let the server write the portable form of decimals, dates, timestamps, UUIDs and binaries (text in the
exact shape :func:`~.base.to_portable` gives), so neither the driver nor Python converts those values; backups
and fingerprints go further and have the server write each row's whole encoded line (``line_select``), floats
excepted (its shortest digits are not always Python's). Loads send a batch of backup lines as one ``jsonb``
array parameter that the server unpacks and casts.

The read-only switch is ``ALTER DATABASE … SET default_transaction_read_only = on`` followed by ending the
database's other sessions, so every session from then on starts read-only. It is a default, not a lock: a
session may still ``SET default_transaction_read_only = off`` itself (the application does not); the write
probe checks what a new session gets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pyodbc

from migrator.errors import PermanentError
from migrator.providers.database.base import (
    MARKER_TABLE,
    Column,
    Converter,
    Table,
    UnsupportedType,
    assemble_tables,
    recursive_rows_sql,
)
from migrator.providers.database.odbc import OdbcDatabase, odbc_error, parse_odbc

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
        connection_string = connection_options(connection_string)
        #: Whether booleans come as Python bools (BoolsAsChar=0, unless the connection string says otherwise).
        self.native_booleans = parse_odbc(connection_string).get("boolsaschar") == "0"
        super().__init__(connection_string, label=label)

    #: Loads are bound by the server's work on each batch: two sessions use two of its cores.
    load_workers = 2

    def on_connect(self) -> None:
        self.execute("SET TIME ZONE 'UTC'")
        self.execute("SET DateStyle = 'ISO, YMD'")
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
        # Floats are fetched as numbers between the text pieces: PostgreSQL's shortest digits are not always
        # Python's (2.9388404737557112e+16 against 2.938840473755711e+16).
        pieces: list[str] = []
        current = ["'['"]
        for i, name in enumerate(columns):
            column = table.column(name)
            if i:
                current.append("','")
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
        # Only when the server writes each whole line (no float between text pieces): md5() of that text, in
        # the database's UTF-8, is row_hash of the very bytes migrator would hash.
        line = self.line_select(table, columns)
        if line is None or any(table.column(n).type in ("float", "real") for n in columns):
            return None
        halves = ", ".join(f"sum(('x' || substr(h, {start}, 16))::bit(64)::bigint)" for start in (1, 17))
        return f"SELECT count(*), {halves} FROM (SELECT md5({line}) AS h FROM {self.table_ref(table.name)}) AS rows"

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
            self.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

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
