"""PostgreSQL's ``COPY`` through psycopg: the bulk paths of the PostgreSQL dialect, beside its ODBC session.

A backup reads each table as one ``COPY (SELECT <line> …) TO STDOUT`` (text format) whose rows are the very
lines the ODBC path writes (:meth:`~.postgresql.PostgresDatabase.whole_line`: the server writes every value,
floats as Python's ``repr`` does; on a server before PostgreSQL 12, :meth:`~.postgresql.PostgresDatabase.line_select`
leaves the floats to :func:`copy_line`), in the snapshot of the
dialect's ODBC transaction (``pg_export_snapshot``), so the lines and the counts read over ODBC agree. Text
format, not binary: the server's work on each line is the same, and a text row needs no parsing in Python
(JSON escapes every character text ``COPY`` would, but the backslash, which it doubles).

A restore loads each batch with ``COPY … FROM STDIN`` (text format; psycopg writes each row in C), inside the
transaction that also marks the chunk and checks the restore's fence (:class:`CopyLoad`): the rows commit only
together with the fence check, exactly as on the ODBC path. The session carries the fence's
``application_name`` too, so a successor ends it with the ODBC one.

The session's connection parameters are derived from the dialect's ODBC connection string in one place
(:func:`conninfo`); it holds the password, so it is kept in memory only and never in a message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Optional

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

try:
    import msgspec

    FAST_DECODE = True
except ImportError:  # pragma: no cover
    FAST_DECODE = False

from migrator.errors import InputError, PermanentError, ProviderError
from migrator.providers.database.odbc import driver_error, parse_odbc
from migrator.providers.database.schema import MARKER_FENCE, MARKER_TABLE, Table

#: psqlODBC's keys (and their aliases) for what libpq calls host, port, dbname, user, password and sslmode.
_LIBPQ_KEYS = {
    "servername": "host", "server": "host", "host": "host", "port": "port", "database": "dbname", "db": "dbname",
    "uid": "user", "username": "user", "user": "user", "pwd": "password", "password": "password",
    "sslmode": "sslmode",
}
#: What every session needs to read and write the values the ODBC session does: UTC, so ``to_char`` writes the
#: portable timestamptz; ISO dates; floats with every digit (shortest exact on PostgreSQL 12+).
_SESSION = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c extra_float_digits=3 -c jit=off"


def conninfo(odbc: str, *, timeout: int = 15) -> str | None:
    """libpq connection parameters for the database an ODBC connection string (psqlODBC's keys) names, or None
    where they cannot be derived from it (a ``DSN=`` without a server: the ODBC paths are used then).

    ``pqopt={…}``, psqlODBC's libpq options, is passed on. The result holds the password: never show it.
    """
    pairs = parse_odbc(odbc)
    params: dict[str, Any] = {}
    for key, value in pairs.items():
        target = _LIBPQ_KEYS.get(key)
        if target is not None and value and target not in params:
            params[target] = value
    if "host" not in params:
        return None
    if pairs.get("pqopt"):
        try:
            params.update(conninfo_to_dict(pairs["pqopt"]))
        except psycopg.ProgrammingError:
            raise InputError("the pqopt of the PostgreSQL connection string is not a list of libpq options",
                             hint="write it as pqopt={key=value key=value}") from None
    params.update(connect_timeout=timeout, client_encoding="UTF8", options=_SESSION)
    return make_conninfo(**params)


def pg_error(exc: psycopg.Error, what: str, *, connecting: bool = False) -> ProviderError | InputError:
    """A migrator error for a psycopg error (row values withheld, as for ODBC's): a lost connection, which
    libpq reports without a SQLSTATE, is transient."""
    state = exc.sqlstate or ("08006" if isinstance(exc, psycopg.OperationalError) else "")
    return driver_error(state, str(exc).strip(), what, connecting=connecting)


#: The floats whose text differs between text COPY and Python's json, for the values JSON has no number for.
_SPECIAL = {b"\\N": b"null", b"NaN": b"NaN", b"Infinity": b"Infinity", b"-Infinity": b"-Infinity"}


def _float_json(text: bytes) -> bytes:
    """A float as PostgreSQL writes it in text COPY (every digit), as Python's json writes it (its ``repr``)."""
    special = _SPECIAL.get(text)
    return special if special is not None else b"%r" % float(text)


def copy_line(data: bytes) -> bytes:
    """The encoded portable line of one row of ``COPY (SELECT <line_select> …) TO STDOUT``, its newline cut.

    The columns are text pieces with floats between them (``text``, ``float``, ``text`` ...), as
    :func:`~.portable.join_line` takes them. Text COPY escapes backslashes, tabs, newlines and other control
    characters; JSON text holds none of those raw but the backslash, so undoing the doubled backslash is all
    (a NULL float, ``\\N``, has a single one).
    """
    if b"\\" in data:
        data = data.replace(b"\\\\", b"\\")
    if b"\t" not in data:
        return data
    fields = data.split(b"\t")
    fields[1::2] = map(_float_json, fields[1::2])
    return b"".join(fields)


#: The Python type ``COPY`` is given for a portable value of each logical type (else its text): what JSON holds,
#: but binaries, which the portable form has as base64 and COPY takes as bytes.
_DECODED: dict[str, type] = {"smallint": int, "integer": int, "bigint": int, "float": float, "real": float,
                             "boolean": bool, "binary": bytes}


def row_reader(table: Table, columns: Sequence[str]) -> Callable[[bytes], Sequence[Any]]:
    """The values :meth:`~psycopg.Copy.write_row` takes for a portable line: the JSON values as they are (the
    server casts their text form to the column's type in COPY), binaries decoded from base64.

    msgspec decodes a line into exactly those types several times faster than ``json`` (base64 included);
    a line it refuses (NaN and Infinity are not JSON, an integer beyond 64 bits) goes through ``json``.
    """
    kinds = [_DECODED.get(table.column(name).type, str) for name in columns]
    binary = [i for i, kind in enumerate(kinds) if kind is bytes]
    loads, decode = json.loads, base64.b64decode

    def slow(line: bytes) -> list[Any]:
        row: list[Any] = loads(line)
        for i in binary:
            if row[i] is not None:
                row[i] = decode(row[i], validate=True)
        return row

    if not FAST_DECODE:  # a dependency; kept working without it
        return slow
    decoder = msgspec.json.Decoder(tuple.__class_getitem__(tuple(Optional[k] for k in kinds)))  # noqa: UP045
    fast, refused = decoder.decode, msgspec.DecodeError

    def read(line: bytes) -> Sequence[Any]:
        try:
            return fast(line)  # type: ignore[no-any-return]
        except refused:
            return slow(line)

    return read


def _share(conn: psycopg.Connection[Any], snapshot: str | None) -> None:
    """Makes the transaction just begun on ``conn`` read the exported ``snapshot`` (nothing where None)."""
    if snapshot is not None:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))


class CopySession:
    """One psycopg connection beside a dialect's ODBC one, opened on first use; ``describe`` names it."""

    def __init__(self, info: str, *, label: str) -> None:
        self._info = info  # revealed: kept in memory only
        self.label = label
        self._conn: psycopg.Connection[Any] | None = None
        #: The fence's application_name (label:generation) this session carries, once the restore set one.
        self.application_name: str | None = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self._info, autocommit=True)
            except psycopg.Error as exc:
                raise pg_error(exc, f"cannot connect to {self.label} for COPY", connecting=True) from None
            if self.application_name is not None:
                self.tag(self.application_name)
        return self._conn

    def tag(self, application_name: str) -> None:
        """Sets the session's application_name (the restore's fence: a successor ends older generations)."""
        self.application_name = application_name
        if self._conn is not None and not self._conn.closed:
            with self.errors("tagging the COPY session"):
                self._conn.execute("SELECT set_config('application_name', %s, false)", [application_name])

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise pg_error(exc, f"{what} on {self.label} failed") from None

    def close(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def lines(self, select: str, *, snapshot: str | None = None) -> Iterator[bytes]:
        """The encoded lines of ``COPY (<select>) TO STDOUT``, read as they arrive (one transaction, in the
        exported ``snapshot`` where given). Closing the iterator early cancels the COPY."""
        conn = self.conn
        with self.errors("reading with COPY"), conn.transaction():
            _share(conn, snapshot)
            with conn.cursor() as cursor, cursor.copy(f"COPY ({select}) TO STDOUT") as copy:
                for data in copy:
                    yield copy_line(bytes(data[:-1]))

    def one_row(self, select: str, *, snapshot: str | None = None) -> tuple[Any, ...]:
        """The one row ``select`` gives (an aggregate: a fingerprint), in the exported ``snapshot`` where given.

        Plain protocol, no cursor: psqlODBC reads every result through ``DECLARE … CURSOR``
        (``UseDeclareFetch``), and PostgreSQL never runs a cursor's query in parallel, where this one may.
        """
        conn = self.conn
        with self.errors("a query"), conn.transaction():
            _share(conn, snapshot)
            row = conn.execute(select).fetchone()
        if row is None:
            raise PermanentError(f"a query on {self.label} gave no row")
        return tuple(row)

    @contextmanager
    def load(self, schema: str) -> Iterator[CopyLoad]:
        """One transaction of the load (a chunk): commits when the block ends without an error."""
        conn = self.conn
        with self.errors("loading with COPY"), conn.transaction():
            yield CopyLoad(self, schema)


class CopyLoad:
    """What a restore does inside one chunk's transaction (:meth:`~.base.Database.chunk_transaction`), on the
    COPY session: the rows by ``COPY … FROM STDIN``, then the chunk's marker and the fence check."""

    def __init__(self, session: CopySession, schema: str) -> None:
        self.session, self.schema = session, schema

    def describe(self) -> str:
        return self.session.label

    def _table(self, name: str) -> sql.Composable:
        return sql.Identifier(self.schema, name)

    def insert_lines(self, table: Table, columns: Sequence[str], lines: Sequence[bytes]) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            self._table(table.name), sql.SQL(", ").join(sql.Identifier(n) for n in columns))
        read = row_reader(table, columns)
        conn = self.session.conn
        try:
            with conn.cursor() as cursor, cursor.copy(statement) as copy:
                for line in lines:
                    copy.write_row(read(line))
        except psycopg.Error as exc:
            raise pg_error(exc, f"writing table {table.name} on {self.session.label} failed") from None
        except (ValueError, TypeError) as exc:
            # A value psycopg cannot write (a line of the wrong shape): named by table, never by value.
            raise PermanentError(f"table {table.name}: a backup line cannot be loaded ({type(exc).__name__})") \
                from None

    def mark_chunk(self, chunk: str, sha256: str) -> None:
        with self.session.errors("marking a chunk"):
            self.session.conn.execute(sql.SQL("INSERT INTO {} ({}, {}) VALUES (%s, %s)").format(
                self._table(MARKER_TABLE), sql.Identifier("chunk"), sql.Identifier("sha256")), [chunk, sha256])

    def check_marker_fence(self, generation: int) -> bool:
        chunk, mark = sql.Identifier("chunk"), sql.Identifier("sha256")
        with self.session.errors("checking the restore's fence"):
            cursor = self.session.conn.execute(
                sql.SQL("UPDATE {} SET {} = {} WHERE {} = %s AND {} = %s").format(
                    self._table(MARKER_TABLE), mark, mark, chunk, mark), [MARKER_FENCE, str(generation)])
            return bool(cursor.rowcount)
