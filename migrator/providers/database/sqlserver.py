"""SQL Server and Azure SQL through the Microsoft ODBC Driver 18 (T-SQL).

No SQL Server runs on the machines this project is tested on: the T-SQL this module generates is covered by
unit tests (tests/unit/test_sqlserver_*.py), and nothing here has run against a real server yet.

Identifiers are bracket-quoted (``]`` doubled), string literals are N'…' with ``'`` doubled. Values are sent as
text and converted by the server (``CAST(? AS decimal(38,10))``) except binary, sent as VARBINARY. datetimeoffset
is read through ``CONVERT(nvarchar(40), …, 127)`` because pyodbc has no type for it.

Read-only switch: ``ALTER DATABASE … SET READ_ONLY WITH ROLLBACK IMMEDIATE`` (open transactions are rolled back,
sessions stay); off is ``SET READ_WRITE``.

:func:`managed_instance_restore_sql` writes the ``CREATE CREDENTIAL`` + ``RESTORE DATABASE … FROM URL`` batch
that restores native .bak files from blob storage on an Azure SQL Managed Instance.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import pyodbc

from migrator.errors import InputError
from migrator.providers.database.base import MARKER_TABLE, Column, Table, UnsupportedType, assemble_tables
from migrator.providers.database.odbc import OdbcDatabase, odbc_error

_TYPES = {
    "tinyint": "smallint", "smallint": "smallint", "int": "integer", "bigint": "bigint", "decimal": "decimal",
    "numeric": "decimal", "money": "decimal", "smallmoney": "decimal", "real": "real", "float": "float",
    "nvarchar": "text", "varchar": "text", "nchar": "text", "char": "text", "ntext": "text", "text": "text",
    "varbinary": "binary", "binary": "binary", "image": "binary", "date": "date", "time": "time",
    "datetime": "timestamp", "datetime2": "timestamp", "smalldatetime": "timestamp",
    "datetimeoffset": "timestamptz", "bit": "boolean", "uniqueidentifier": "uuid",
}
_DDL = {
    "smallint": "SMALLINT", "integer": "INT", "bigint": "BIGINT", "real": "REAL", "float": "FLOAT",
    "binary": "VARBINARY(MAX)", "date": "DATE", "time": "TIME(6)", "timestamp": "DATETIME2(6)",
    "timestamptz": "DATETIMEOFFSET(6)", "boolean": "BIT", "uuid": "UNIQUEIDENTIFIER",
}


def quote_identifier(name: str) -> str:
    """``[name]`` with ``]`` doubled; refuses names SQL Server cannot hold (over 128 characters, NUL)."""
    if not name or len(name) > 128 or "\x00" in name:
        raise InputError(f"{name[:40]!r} is not a valid SQL Server identifier (1-128 characters, no NUL)")
    return "[" + name.replace("]", "]]") + "]"


def quote_literal(text: str) -> str:
    """``N'text'`` with ``'`` doubled."""
    if "\x00" in text:
        raise InputError("a T-SQL string literal cannot contain NUL")
    return "N'" + text.replace("'", "''") + "'"


class SqlServerDatabase(OdbcDatabase):
    dialect = "sqlserver"
    row_values = False  # T-SQL has no (a, b) > (x, y)

    def __init__(self, connection_string: str, *, label: str, schema: str = "dbo") -> None:
        self.schema = schema
        super().__init__(connection_string, label=label)

    def on_connect(self) -> None:
        self.database = str(self.scalar("SELECT DB_NAME()"))

    # -- SQL text ----------------------------------------------------------------------------------------

    def quote(self, name: str) -> str:
        return quote_identifier(name)

    def table_ref(self, name: str) -> str:
        return f"{self.quote(self.schema)}.{self.quote(name)}"

    def column_ddl(self, column: Column) -> str:
        return sqlserver_column_ddl(column)

    def marker(self, column: Column) -> str:
        if column.type in ("binary", "text"):
            return "?"
        return f"CAST(? AS {sqlserver_column_ddl(replace(column, nullable=True))})"

    def binds_binary(self, column: Column) -> bool:
        return column.type == "binary"

    def select_expr(self, column: Column) -> str:
        if column.type == "timestamptz":
            return f"CONVERT(nvarchar(40), {self.quote(column.name)}, 127)"
        return self.quote(column.name)

    def limit_query(self, select: str, rest: str, order: str, *, limit: int, offset: int = 0) -> str:
        if offset:
            return (f"SELECT {select} {rest} ORDER BY {order} "
                    f"OFFSET {int(offset)} ROWS FETCH NEXT {int(limit)} ROWS ONLY")
        return f"SELECT TOP ({int(limit)}) {select} {rest} ORDER BY {order}"

    def param_value(self, column: Column, value: Any) -> Any:
        if value is None or column.type == "text":
            return value
        if column.type == "binary":
            import base64

            return base64.b64decode(value)
        if column.type == "boolean":
            return "1" if value else "0"
        if column.type in ("float", "real"):
            return repr(float(value))
        return str(value)

    # -- catalog -----------------------------------------------------------------------------------------

    def tables(self) -> list[Table]:
        columns: dict[str, list[Column]] = {}
        for table, name, data_type, nullable, precision, scale, length in self.query(
                "SELECT c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, c.IS_NULLABLE, c.NUMERIC_PRECISION, "
                "c.NUMERIC_SCALE, c.CHARACTER_MAXIMUM_LENGTH FROM INFORMATION_SCHEMA.COLUMNS c "
                "JOIN INFORMATION_SCHEMA.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME "
                "WHERE c.TABLE_SCHEMA = ? AND t.TABLE_TYPE = 'BASE TABLE' "
                "ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION", [self.schema]):
            if table == MARKER_TABLE:
                continue
            columns.setdefault(table, []).append(sqlserver_column(f"{table}.{name}", name, data_type,
                                                                  nullable == "YES", precision, scale, length))
        keys: dict[str, tuple[str, ...]] = {}
        for table, column in self.query(
                "SELECT t.name, c.name FROM sys.indexes i JOIN sys.tables t ON t.object_id = i.object_id "
                "JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id "
                "JOIN sys.columns c ON c.object_id = ic.object_id AND c.column_id = ic.column_id "
                "WHERE i.is_primary_key = 1 AND SCHEMA_NAME(t.schema_id) = ? ORDER BY t.name, ic.key_ordinal",
                [self.schema]):
            keys[table] = (*keys.get(table, ()), column)
        fks: dict[tuple[str, str], tuple[list[str], str, list[str]]] = {}
        for fk, table, column, ref_table, ref_column in self.query(
                "SELECT f.name, OBJECT_NAME(f.parent_object_id), pc.name, OBJECT_NAME(f.referenced_object_id), "
                "rc.name FROM sys.foreign_keys f "
                "JOIN sys.foreign_key_columns fc ON fc.constraint_object_id = f.object_id "
                "JOIN sys.columns pc ON pc.object_id = fc.parent_object_id AND pc.column_id = fc.parent_column_id "
                "JOIN sys.columns rc ON rc.object_id = fc.referenced_object_id "
                "AND rc.column_id = fc.referenced_column_id "
                "WHERE SCHEMA_NAME(f.schema_id) = ? ORDER BY f.name, fc.constraint_column_id", [self.schema]):
            cols, _, refs = fks.setdefault((table, fk), ([], ref_table, []))
            cols.append(column)
            refs.append(ref_column)
        return assemble_tables(columns, keys, fks)

    def table_exists(self, name: str) -> bool:
        return bool(self.scalar("SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = ? "
                                "AND TABLE_NAME = ?", [self.schema, name]))

    def count(self, table: str) -> int:
        return int(self.scalar(f"SELECT COUNT_BIG(*) FROM {self.table_ref(table)}"))

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        # SNAPSHOT isolation only where the database allows it; otherwise the read-only switch keeps reads
        # consistent (a backup runs after database.read_only).
        allowed = self.scalar("SELECT snapshot_isolation_state FROM sys.databases WHERE database_id = DB_ID()")
        with self.transaction():
            if allowed == 1:
                self.execute("SET TRANSACTION ISOLATION LEVEL SNAPSHOT")
            yield

    # -- read-only switch --------------------------------------------------------------------------------

    def read_only(self) -> bool:
        return bool(self.scalar("SELECT is_read_only FROM sys.databases WHERE database_id = DB_ID()"))

    def set_read_only(self, on: bool) -> None:
        self.execute(read_only_sql(self.database, on))

    def write_probe(self) -> str | None:
        try:
            cursor = self.conn.cursor()
            cursor.execute(WRITE_PROBE_SQL)
            cursor.close()
            return None
        except pyodbc.Error as exc:
            error = odbc_error(exc, "write probe")
            if "read-only" in error.message or "READ_ONLY" in error.message:
                return error.message
            raise odbc_error(exc, f"write probe on {self.label} failed") from None


WRITE_PROBE_SQL = ("BEGIN TRANSACTION; CREATE TABLE [dbo].[_migrator_write_probe] ([x] INT); "
                   "ROLLBACK TRANSACTION;")


def read_only_sql(database: str, on: bool) -> str:
    state = "READ_ONLY" if on else "READ_WRITE"
    return f"ALTER DATABASE {quote_identifier(database)} SET {state} WITH ROLLBACK IMMEDIATE"


def sqlserver_column(where: str, name: str, data_type: str, nullable: bool, precision: Any, scale: Any,
                     length: Any) -> Column:
    kind = _TYPES.get(str(data_type).lower())
    if kind is None:
        raise UnsupportedType(f"column {where} has type {data_type}, which has no portable form",
                              hint="supported: " + ", ".join(sorted(_TYPES)))
    if kind == "decimal":
        return Column(name, kind, nullable, int(precision), int(scale or 0), native=data_type)
    if kind == "text":
        bounded = length is not None and int(length) > 0  # -1 is (MAX)
        return Column(name, kind, nullable, length=int(length) if bounded else None, native=data_type)
    return Column(name, kind, nullable, native=data_type)


def sqlserver_column_ddl(column: Column) -> str:
    if column.type == "decimal":
        precision = min(column.precision or 38, 38)
        native = f"DECIMAL({precision},{column.scale if column.scale is not None else 10})"
    elif column.type == "text":
        native = f"NVARCHAR({column.length})" if column.length is not None and column.length <= 4000 \
            else "NVARCHAR(MAX)"
    else:
        native = _DDL[column.type]
    return native if column.nullable else f"{native} NOT NULL"


# -- Managed Instance: native backups from blob storage -----------------------------------------------------

_SAS_FIELDS = re.compile(r"(^|&)(sv|sig|se|sp)=")


@dataclass(frozen=True)
class RestoreBatch:
    """T-SQL statements to run in order. ``statements`` holds the SAS: run them, never log them; log ``redacted``."""

    statements: tuple[str, ...]
    redacted: tuple[str, ...]


def managed_instance_restore_sql(database: str, container_url: str, sas_token: str,
                                 backup_files: Sequence[str]) -> RestoreBatch:
    """``CREATE CREDENTIAL`` for the container's SAS, then ``RESTORE DATABASE … FROM URL`` of every stripe.

    The credential is named after the container URL (how the instance finds it for each backup URL) and
    replaced if it exists. ``sas_token`` is the query string of a SAS with read and list rights on the
    container, with or without its leading ``?``.
    """
    url = container_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment or parts.path.count("/") != 1:
        raise InputError(f"container URL {url!r} must be https://<account>.blob.core.windows.net/<container>, "
                         "without a query string")
    token = sas_token.strip().lstrip("?")
    if not token or not _SAS_FIELDS.search(token) or "sig=" not in token:
        raise InputError("the SAS token does not look like a shared access signature (no sv=/sig= fields)",
                         hint="give the query string of a container SAS with read and list permissions")
    if not backup_files:
        raise InputError("no backup files to restore from")
    urls = []
    for name in backup_files:
        if not name or name.startswith("/") or "?" in name or "#" in name or ".." in name.split("/"):
            raise InputError(f"backup file name {name!r} is not a plain blob name")
        urls.append(f"{url}/{name}")
    credential = quote_identifier(url)
    drop = (f"IF EXISTS (SELECT 1 FROM sys.credentials WHERE name = {quote_literal(url)}) "
            f"DROP CREDENTIAL {credential};")

    def create(secret: str) -> str:
        return (f"CREATE CREDENTIAL {credential} WITH IDENTITY = N'SHARED ACCESS SIGNATURE', "
                f"SECRET = {quote_literal(secret)};")

    restore = (f"RESTORE DATABASE {quote_identifier(database)} FROM "
               + ", ".join(f"URL = {quote_literal(u)}" for u in urls) + ";")
    return RestoreBatch((drop, create(token), restore), (drop, create("***"), restore))
