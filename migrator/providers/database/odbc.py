"""What the pyodbc dialects (PostgreSQL, SQL Server) share: connecting, error translation, the bulk insert path.

Inserts go through pyodbc's ``fast_executemany`` (parameter arrays) with every parameter bound by the column's
logical type (``setinputsizes``), never guessed from the first row: a NULL in row one would otherwise bind a
column too narrow for the rows after it. Values longer than :data:`FAST_VALUE_LIMIT` characters go through
the ordinary (row by row) path, since a parameter array reserves the longest value's width for every row.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import pyodbc

from migrator.errors import InputError, PermanentError, ProviderError, TransientError
from migrator.providers.database.base import Column, Database, Table
from migrator.providers.database.scrub import withhold_values

FAST_VALUE_LIMIT = 4000
#: Rows per parameter array: bounds the driver-side buffer (rows x widest value).
FAST_BATCH = 1000

_AUTH = re.compile(r"password authentication failed|role .* does not exist|login failed|no pg_hba\.conf entry|"
                   r"authentication|permission denied|not authorized", re.I)
_MISSING = re.compile(r"database .* does not exist|cannot open database|unknown database", re.I)
_CONNECT = re.compile(r"connection refused|could not connect|timeout|timed out|server closed the connection|"
                      r"connection .* (lost|broken|reset)|terminating connection|no connection|"
                      r"communication link failure|TCP Provider", re.I)
#: The table a data-changing statement writes to ("public"."people", [dbo].[people], people): for messages.
_WRITES_TO = re.compile(r'^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|MERGE\s+INTO|TRUNCATE\s+TABLE)\s+'
                        r'((?:(?:"(?:[^"]|"")*"|\[[^\]]*\]|\w+)\s*\.\s*)*)("(?:[^"]|"")*"|\[[^\]]*\]|\w+)', re.I)
_TRANSIENT_STATES = {"40001", "40P01", "57P01", "57P02", "57P03", "HYT00", "HYT01", "08S01", "08006", "08003"}


_PAIR = re.compile(r"\s*([^=;{}]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|(?!\{)[^;]*)\s*(?:;|$)")


def parse_odbc(text: str) -> dict[str, str]:
    """``key=value;`` pairs of an ODBC connection string (keys lower-cased, braces removed).

    Raises :class:`InputError` for text that is not such a list; the message never repeats the text itself
    (it may hold a password).
    """
    pairs: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if not match or match.end() == pos:
            raise InputError(f"malformed ODBC connection string (at character {pos + 1})",
                             hint="write it as Key=Value;Key=Value, with {braces} around values containing ;")
        value = match.group(2).strip()
        if value.startswith("{") and value.endswith("}"):
            value = value[1:-1].replace("}}", "}")
        pairs[match.group(1).strip().lower()] = value
        pos = match.end()
    return pairs



def odbc_error(exc: pyodbc.Error, what: str, *, connecting: bool = False) -> ProviderError | InputError:
    """A migrator error for a pyodbc error; ``what`` says what we were doing (never a credential)."""
    state = str(exc.args[0]) if exc.args else ""
    text = str(exc.args[1] if len(exc.args) > 1 else exc).strip()
    text = re.sub(r"\s*\(\d+\)\s*\(SQL\w+\)\s*$", "", text)
    return driver_error(state, text, what, connecting=connecting)


def driver_error(state: str, text: str, what: str, *, connecting: bool = False) -> ProviderError | InputError:
    """A migrator error for a driver's SQLSTATE and message (pyodbc's, or psycopg's for PostgreSQL's COPY)."""
    # The engine quotes row values (personal data) in detail lines and conversion errors: never carry them on.
    text = withhold_values(text, state)
    message = f"{what}: {text}"
    if state in ("IM002", "IM003") or "can't open lib" in text.lower():
        return InputError(message, hint="check the Driver= (or DSN=) of the connection string and that the "
                                       "ODBC driver is installed (odbcinst -q -d)")
    if state.startswith("28") or _AUTH.search(text):
        return InputError(message, hint="check the user and password of the connection string")
    if connecting and _MISSING.search(text):
        return InputError(message, hint="check the Database= of the connection string")
    if state in _TRANSIENT_STATES or ((connecting or state.startswith("08")) and _CONNECT.search(text)):
        return TransientError(message)
    if connecting and state.startswith("08"):
        return InputError(message, hint="check the Server=, Port= and Database= of the connection string")
    return PermanentError(message)


def written_table(sql: str) -> str | None:
    """The (unquoted) name of the table an INSERT, UPDATE, DELETE, MERGE or TRUNCATE statement writes to."""
    match = _WRITES_TO.match(sql)
    if match is None:
        return None
    name = match.group(2)
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name[1:-1] if name.startswith("[") else name


class OdbcDatabase(Database):
    """A :class:`Database` on a pyodbc connection (autocommit outside :meth:`transaction`)."""

    def __init__(self, connection_string: str, *, label: str, timeout: int = 15) -> None:
        self.label = label
        self.connection_string = connection_string  # revealed: kept in memory only, for a second session
        try:
            self.conn = pyodbc.connect(connection_string, autocommit=True, timeout=timeout)
        except pyodbc.Error as exc:
            raise odbc_error(exc, f"cannot connect to {label}", connecting=True) from None
        self._in_transaction = False
        self.on_connect()

    def on_connect(self) -> None:
        """Session settings every connection of the dialect needs."""

    def describe(self) -> str:
        return self.label

    def close(self) -> None:
        with suppress(pyodbc.Error):
            self.conn.close()

    # -- statements --------------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = (), *, batch: int = 1000) -> Iterator[Sequence[Any]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, *params) if params else cursor.execute(sql)
            while rows := cursor.fetchmany(batch):
                yield from rows
        except pyodbc.Error as exc:
            raise odbc_error(exc, f"query on {self.label} failed") from None
        finally:
            # Also when the reader stops early: a server-side cursor must not stay open in the transaction.
            with suppress(pyodbc.Error):
                cursor.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            cursor = self.conn.cursor()
            cursor.execute(sql, *params) if params else cursor.execute(sql)
            count = cursor.rowcount
            cursor.close()
            return int(count)
        except pyodbc.Error as exc:
            raise odbc_error(exc, self._statement_failed(sql)) from None

    def _statement_failed(self, sql: str) -> str:
        table = written_table(sql)
        return f"writing table {table} on {self.label} failed" if table else f"statement on {self.label} failed"

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        for row in self.query(sql, params):
            return row[0]
        return None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._in_transaction:
            yield
            return
        self.conn.autocommit = False
        self._in_transaction = True
        try:
            yield
            self.conn.commit()
        except BaseException:
            with suppress(pyodbc.Error):
                self.conn.rollback()
            raise
        finally:
            self._in_transaction = False
            with suppress(pyodbc.Error):
                self.conn.autocommit = True

    # -- bulk insert -------------------------------------------------------------------------------------

    def binds_binary(self, column: Column) -> bool:
        """Whether ``param_value`` gives bytes for this column (else text, or None)."""
        return False

    def insert_sql(self, table: Table, columns: Sequence[str]) -> str:
        markers = ", ".join(self.marker(table.column(n)) for n in columns)
        return f"INSERT INTO {self.table_ref(table.name)} ({self.column_list(columns)}) VALUES ({markers})"

    def insert_rows(self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cols = [table.column(n) for n in columns]
        params = [[self.param_value(c, v) for c, v in zip(cols, row, strict=True)] for row in rows]
        try:
            self._bulk(self.insert_sql(table, columns), cols, params)
        except pyodbc.Error as exc:
            raise odbc_error(exc, f"insert into {table.name} on {self.label} failed") from None

    def execute_many(self, sql: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._bulk(sql, columns, rows)
        except pyodbc.Error as exc:
            raise odbc_error(exc, self._statement_failed(sql)) from None

    def _bulk(self, sql: str, cols: Sequence[Column], rows: Sequence[Sequence[Any]]) -> None:
        """``sql`` once per row of parameters: parameter arrays (fast_executemany) for rows of short values,
        one execution each for rows with a value too long for them."""
        binary = [self.binds_binary(c) for c in cols]
        fast: list[Sequence[Any]] = []
        slow: list[Sequence[Any]] = []
        for params in rows:
            long = any(isinstance(v, (str, bytes)) and len(v) > FAST_VALUE_LIMIT for v in params)
            (slow if long else fast).append(params)
        cursor = self.conn.cursor()
        for start in range(0, len(fast), FAST_BATCH):
            batch = fast[start:start + FAST_BATCH]
            cursor.fast_executemany = True
            cursor.setinputsizes(self._sizes(batch, binary))
            cursor.executemany(sql, batch)
        if slow:
            cursor.close()
            cursor = self.conn.cursor()  # a fresh cursor: no parameter arrays, no fixed sizes
            for params in slow:
                cursor.execute(sql, *params)
        cursor.close()

    @staticmethod
    def _sizes(batch: Sequence[Sequence[Any]], binary: Sequence[bool]) -> list[tuple[int, int, int]]:
        sizes = []
        for i, is_binary in enumerate(binary):
            width = 1
            for row in batch:
                value = row[i]
                if value is not None:
                    # SQL_WVARCHAR sizes count UTF-16 code units: characters outside the BMP take two.
                    n = len(value) if is_binary or value.isascii() else len(value.encode("utf-16-le")) // 2
                    width = max(width, n)
            sizes.append((pyodbc.SQL_VARBINARY if is_binary else pyodbc.SQL_WVARCHAR, width, 0))
        return sizes
