"""SQL Server and Azure SQL through the Microsoft ODBC Driver 18 (T-SQL).

No SQL Server runs on the machines this project is tested on: the T-SQL this module generates is covered by
unit tests (tests/unit/test_sqlserver_*.py), and nothing here has run against a real server yet.

What SQLAlchemy Core does here: ``CREATE TABLE`` and every column type are SQLAlchemy objects compiled by its
mssql dialect (which SQLAlchemy's own CI runs against SQL Server), with ``autoincrement=False`` so that only a
column the source numbers becomes ``IDENTITY``. What it does not, and why: the keyset predicate stays the
expanded ``(a > ?) OR (a = ? AND b > ?)``, because SQLAlchemy compiles ``tuple_() > tuple_()`` for mssql as a
row-value comparison T-SQL does not have; the catalog stays four queries of our own rather than reflection,
because its inspector knows no ``hierarchyid``/``geography``/``geometry`` (reflected as NullType, the type lost),
nor temporal tables, and asks per table where these ask per schema.

Identifiers are bracket-quoted (``]`` doubled), string literals are N'…' with ``'`` doubled. Values are sent as
text and converted by the server (``CAST(? AS decimal(38,10))``) except binary, sent as VARBINARY. datetimeoffset
is read through ``CONVERT(nvarchar(40), …, 127)`` because pyodbc has no type for it.

Read-only switch: ``ALTER DATABASE … SET READ_ONLY WITH ROLLBACK AFTER n SECONDS`` (the statement needs the
database to itself: without a termination clause it waits for every other session's transaction, for ever; with
it, open transactions get ``n`` seconds (default 30, ``database.read_only``'s ``grace_seconds``) and are then
rolled back; sessions stay). Off is the same statement with ``READ_WRITE``, symmetric. Whether it is on is read
from ``DATABASEPROPERTYEX(DB_NAME(), 'Updateability')``; the plan counts the sessions the switch would cut
(``sys.dm_exec_sessions`` of this database, this one excepted). On Azure SQL Database the same form is used:
``ALTER DATABASE`` there acts on the current logical database (named, as here, by ``DB_NAME()``) and accepts
``SET READ_ONLY`` with the termination clause; what it cannot do is ``SINGLE_USER``, which this dialect never asks.

Identity columns (``sys.columns.is_identity``, recorded in the portable schema): a SQL Server target creates
them ``IDENTITY(1,1)``; rows are loaded with ``SET IDENTITY_INSERT … ON`` for one table at a time (SQL Server
allows one per session), with explicit column lists (:func:`identity_insert_batch`), and after the load the seed
is reseeded to the largest key (:func:`reseed_sql`), then the next value the table will give is proved above it
(:func:`next_identity_sql`; :meth:`SqlServerDatabase.finish_load`). A target table made beforehand is asked for
its identity column (``sys.identity_columns``), so a backup from another engine loads into it the same way.
An identity column outside the primary key is never updated (SQL Server refuses it).

Collations: a case-insensitive target (``…_CI_…``, the Azure SQL default ``SQL_Latin1_General_CP1_CI_AS``)
holds two keys that differ only in case as one; :func:`colliding_keys` finds them before a load, named by table
and the SHA-256 of the key, never its value (``database.restore``'s plan and preflight, ``target_collation``).

Types, what is copied, recreated or refused:

- ``datetime2``, ``datetimeoffset``, ``time`` with 7 fractional digits (the default: 100 ns) are read as text
  (``CAST(… AS nvarchar(34))``; pyodbc's datetime stops at microseconds), kept with 7 digits in the portable
  form and its fingerprints, declared with their precision and written through ``CAST(? AS DATETIME2(7))``.
  A target that keeps fewer digits (PostgreSQL: 6) is refused naming table and column.
- ``rowversion`` (``timestamp``): not copied; a SQL Server target recreates the column and generates its own
  values, so every row's version differs from the source's: the product's optimistic concurrency sees every
  row as changed once (an edit begun before the cutover and saved after it is refused and redone, never
  silently lost). Reported by ``database.backup``'s plan and output (``not_copied``); another target has no
  such column (the restore's plan says so).
- Computed columns: not copied; a SQL Server target recreates them from the catalog's definition
  (``AS (…) [PERSISTED]``), another has no such column (said in the plan).
- ``hierarchyid``, ``geography``, ``geometry`` (their binary form, ``CAST(… AS varbinary(max))`` and back) and
  ``xml`` (its text): carried byte for byte to a SQL Server target, refused naming table and column otherwise.
  ``image``, ``text``, ``ntext`` are read as ``varbinary(max)``/``nvarchar(max)`` values and carried to any
  target (created there as ``VARBINARY(MAX)``/``NVARCHAR(MAX)``: the deprecated types are not recreated).
- ``sql_variant`` is refused (each value has its own base type, which no portable form keeps), naming the column.
- System-versioned temporal tables (and their history tables) are refused naming the table: the period columns
  cannot be written. Turn ``SYSTEM_VERSIONING`` off for the migration, or leave the table out.
- Sequences and column defaults are not copied: a restore that creates the tables creates them without
  defaults, and sequences are not created; a target schema made beforehand by the product's own DDL
  (``schema_mode: existing``) keeps both (a sequence then needs ``ALTER SEQUENCE … RESTART`` past the loaded
  values, which is the product's migration script's business, not this dialect's).

:func:`managed_instance_restore_sql` writes the ``CREATE CREDENTIAL`` + ``RESTORE DATABASE … FROM URL`` batch
that restores native .bak files from blob storage on an Azure SQL Managed Instance.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import pyodbc
import sqlalchemy as sa
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import mssql
from sqlalchemy.dialects.mssql import pyodbc as mssql_pyodbc
from sqlalchemy.schema import CreateTable

from migrator.errors import InputError, PermanentError
from migrator.providers.database.base import (
    MARKER_TABLE,
    ChangedKeys,
    Column,
    GeneratedColumn,
    Table,
    UnsupportedType,
    assemble_tables,
    converter,
)
from migrator.providers.database.odbc import OdbcDatabase, odbc_error
from migrator.providers.database.schema import case_insensitive
from migrator.providers.database.schema import colliding_keys as colliding_keys  # the collation decisions

_TYPES = {
    "tinyint": "smallint", "smallint": "smallint", "int": "integer", "bigint": "bigint", "decimal": "decimal",
    "numeric": "decimal", "money": "decimal", "smallmoney": "decimal", "real": "real", "float": "float",
    "nvarchar": "text", "varchar": "text", "nchar": "text", "char": "text", "ntext": "text", "text": "text",
    "varbinary": "binary", "binary": "binary", "image": "binary", "date": "date", "time": "time",
    "datetime": "timestamp", "datetime2": "timestamp", "smalldatetime": "timestamp",
    "datetimeoffset": "timestamptz", "bit": "boolean", "uniqueidentifier": "uuid",
    # SQL Server's own types, carried as they are to a SQL Server target only (Database.cannot_hold)
    "hierarchyid": "native", "geography": "native", "geometry": "native", "xml": "native",
}
#: Catalog types whose columns are not copied: the engine writes them (GeneratedColumn). INFORMATION_SCHEMA
#: reports ``rowversion`` as ``timestamp``.
_ROW_VERSION_TYPES = frozenset({"timestamp", "rowversion"})
#: The native types read and written through their binary form (the others, ``xml``, through text).
_BINARY_NATIVE = frozenset({"hierarchyid", "geography", "geometry"})
#: Fractional-second digits of ``time``, ``datetime2``, ``datetimeoffset`` (``DATETIME_PRECISION``) that need
#: more than a Python datetime's microseconds: read as text (:meth:`SqlServerDatabase.select_expr`).
_FINE_DIGITS = 7


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
    max_fraction_digits = 7
    native_types = frozenset({"hierarchyid", "geography", "geometry", "xml"})
    recreates_generated = True

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

    def create_table_sql(self, table: Table) -> str:
        return create_table_sql(self.schema, table)

    def marker(self, column: Column) -> str:
        if column.type in ("binary", "text"):
            return "?"
        if column.type == "native" and column.native.lower() in _BINARY_NATIVE:
            return f"CAST(CAST(? AS VARBINARY(MAX)) AS {column.native.upper()})"
        return f"CAST(? AS {sqlserver_column_ddl(replace(column, nullable=True, identity=False))})"

    def binds_binary(self, column: Column) -> bool:
        return column.type == "binary" or (column.type == "native" and column.native.lower() in _BINARY_NATIVE)

    def select_expr(self, column: Column) -> str:
        name = self.quote(column.name)
        if column.type in ("time", "timestamp", "timestamptz") and column.fraction_digits >= _FINE_DIGITS:
            # pyodbc gives microseconds; the text form keeps every digit (yyyy-MM-dd HH:mm:ss.nnnnnnn [+hh:mm])
            return f"CAST({name} AS nvarchar(34))"
        if column.type == "timestamptz":
            return f"CONVERT(nvarchar(40), {name}, 127)"
        if column.type == "native":
            return f"CAST({name} AS {'VARBINARY(MAX)' if column.native.lower() in _BINARY_NATIVE else 'NVARCHAR(MAX)'})"
        return name

    def limit_query(self, select: str, rest: str, order: str, *, limit: int, offset: int = 0) -> str:
        if offset:
            return (f"SELECT {select} {rest} ORDER BY {order} "
                    f"OFFSET {int(offset)} ROWS FETCH NEXT {int(limit)} ROWS ONLY")
        return f"SELECT TOP ({int(limit)}) {select} {rest} ORDER BY {order}"

    def param_value(self, column: Column, value: Any) -> Any:
        if value is None or column.type == "text":
            return value
        if self.binds_binary(column):
            return base64.b64decode(value)
        if column.type == "native":  # xml, as its text
            return value
        if column.type == "boolean":
            return "1" if value else "0"
        if column.type in ("float", "real"):
            return repr(float(value))
        return str(value)

    # -- catalog -----------------------------------------------------------------------------------------

    def tables(self) -> list[Table]:
        temporal = {name for (name,) in self.query(TEMPORAL_TABLES_SQL, [self.schema])}
        columns: dict[str, list[Column]] = {}
        generated: dict[str, list[GeneratedColumn]] = {}
        for (table, name, data_type, nullable, precision, scale, length, fraction, is_identity, is_computed,
             definition, persisted) in self.query(CATALOG_COLUMNS_SQL, [self.schema]):
            if table == MARKER_TABLE:
                continue
            if table in temporal:
                raise UnsupportedType(
                    f"table {table} is a system-versioned temporal table (or its history table): its period "
                    "columns cannot be written and its history belongs to the engine",
                    hint="turn SYSTEM_VERSIONING off at the source for the migration (and on again on the "
                         "target), or leave the table out with `tables:`")
            if is_computed:
                generated.setdefault(table, []).append(
                    GeneratedColumn(name, "computed", str(definition or ""), bool(persisted)))
                continue
            if str(data_type).lower() in _ROW_VERSION_TYPES:
                generated.setdefault(table, []).append(GeneratedColumn(name, "rowversion"))
                continue
            columns.setdefault(table, []).append(sqlserver_column(
                f"{table}.{name}", name, data_type, nullable == "YES", precision, scale, length,
                fraction=fraction, identity=bool(is_identity)))
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
        return [replace(t, generated=tuple(generated.get(t.name, ()))) for t in assemble_tables(columns, keys, fks)]

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
        return str(self.scalar(UPDATEABILITY_SQL)) == "READ_ONLY"

    def set_read_only(self, on: bool, *, grace_seconds: int | None = None) -> None:
        self.execute(read_only_sql(self.database, on, grace_seconds=grace_seconds))

    def sessions_cut(self) -> int | None:
        return int(self.scalar(OTHER_SESSIONS_SQL))

    def key_folding(self, declared: str | None = None) -> bool:
        return case_insensitive(declared or str(self.scalar(COLLATION_SQL) or ""))

    # -- change tracking -------------------------------------------------------------------------------

    def change_version(self) -> int | None:
        version = self.scalar(CHANGE_VERSION_SQL)
        return None if version is None else int(version)

    def changed_keys(self, table: Table, since: int) -> ChangedKeys:
        minimum = self.scalar(min_valid_version_sql(self.schema, table.name))
        if minimum is None:
            return ChangedKeys(None, f"change tracking is not enabled on table {table.name}")
        if int(since) < int(minimum):
            return ChangedKeys(None, f"table {table.name}: the presync's change-tracking version {int(since)} is "
                                     f"below CHANGE_TRACKING_MIN_VALID_VERSION {int(minimum)} (the retention "
                                     "period passed, or the table was truncated)")
        keys = [table.column(n) for n in table.primary_key]
        convert = [converter(c) for c in keys]
        found: dict[tuple[Any, ...], None] = {}
        operations: dict[str, int] = {}
        for row in self.query(changes_sql(self.schema, table, since), batch=5000):
            operation = str(row[1])
            operations[operation] = operations.get(operation, 0) + 1
            found[tuple(None if v is None else f(v) for f, v in zip(convert, row[2:], strict=True))] = None
        return ChangedKeys([list(k) for k in found], f"change tracking since version {int(since)}", operations)

    # -- identity columns --------------------------------------------------------------------------------

    def identity_column(self, table: Table) -> str | None:
        """The table's identity column: the one the portable table says, else the one this database's table
        has (a target schema made beforehand), looked up once per table."""
        if table.identity is not None:
            return table.identity.name
        known: dict[str, str | None] = self.__dict__.setdefault("_identities", {})
        if table.name not in known:
            ref = quote_literal(self.table_ref(table.name))
            known[table.name] = self.scalar(f"SELECT name FROM sys.identity_columns WHERE object_id = OBJECT_ID({ref})")
        return known[table.name]

    def insert_rows(self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        identity = self.identity_column(table)
        if identity is None or identity not in columns:
            super().insert_rows(table, columns, rows)
            return
        on, _, off = identity_insert_batch(self.schema, table, columns, self.insert_sql(table, columns))
        self.execute(on)
        try:
            super().insert_rows(table, columns, rows)
        finally:
            self.execute(off)

    def update_sql(self, table: Table) -> tuple[str, list[str]] | None:
        # An identity column cannot be updated: it is the key it is matched by, or kept as it is.
        identity = self.identity_column(table)
        if identity is None or identity in table.primary_key:
            return super().update_sql(table)
        return super().update_sql(replace(table, columns=tuple(c for c in table.columns if c.name != identity)))

    def finish_load(self, table: Table) -> None:
        identity = self.identity_column(table)
        if identity is None:
            return
        largest = self.scalar(f"SELECT MAX({self.quote(identity)}) FROM {self.table_ref(table.name)}")
        if largest is None:
            return  # no row: the seed stays as created
        self.execute(reseed_sql(self.schema, table.name, int(largest)))
        proof = next(iter(self.query(next_identity_sql(self.schema, table.name, identity))), None)
        if proof is None or proof[0] is None or int(proof[0]) <= int(largest):
            raise PermanentError(f"table {table.name} on {self.label}: after reseeding, the identity column "
                                 f"{identity} would give {proof[0] if proof else None} next, not above the "
                                 f"largest loaded key", hint="check the column's increment (IDENT_INCR)")

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


#: Seconds open transactions get before ``SET READ_ONLY`` (or ``READ_WRITE``) rolls them back.
DEFAULT_GRACE_SECONDS = 30
UPDATEABILITY_SQL = "SELECT CAST(DATABASEPROPERTYEX(DB_NAME(), 'Updateability') AS nvarchar(20))"
OTHER_SESSIONS_SQL = ("SELECT COUNT(*) FROM sys.dm_exec_sessions WHERE database_id = DB_ID() "
                      "AND session_id <> @@SPID AND is_user_process = 1")
COLLATION_SQL = "SELECT CAST(DATABASEPROPERTYEX(DB_NAME(), 'Collation') AS nvarchar(128))"
#: Every column of the schema's base tables with what the portable schema records of it.
CATALOG_COLUMNS_SQL = (
    "SELECT c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, c.IS_NULLABLE, c.NUMERIC_PRECISION, c.NUMERIC_SCALE, "
    "c.CHARACTER_MAXIMUM_LENGTH, c.DATETIME_PRECISION, sc.is_identity, sc.is_computed, cc.definition, "
    "cc.is_persisted FROM INFORMATION_SCHEMA.COLUMNS c "
    "JOIN INFORMATION_SCHEMA.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME "
    "JOIN sys.columns sc ON sc.object_id = OBJECT_ID(QUOTENAME(c.TABLE_SCHEMA) + '.' + QUOTENAME(c.TABLE_NAME)) "
    "AND sc.name = c.COLUMN_NAME "
    "LEFT JOIN sys.computed_columns cc ON cc.object_id = sc.object_id AND cc.column_id = sc.column_id "
    "WHERE c.TABLE_SCHEMA = ? AND t.TABLE_TYPE = 'BASE TABLE' ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION")
CHANGE_VERSION_SQL = "SELECT CHANGE_TRACKING_CURRENT_VERSION()"


def min_valid_version_sql(schema: str, table: str) -> str:
    """The oldest version ``CHANGETABLE(CHANGES …)`` still answers for the table (NULL: not tracked)."""
    name = quote_literal(f"{quote_identifier(schema)}.{quote_identifier(table)}")
    return f"SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID({name}))"


def changes_sql(schema: str, table: Table, since: int) -> str:
    """Every row changed in ``table`` after version ``since``: its last change's version and operation (I, U,
    D), then its primary key columns. One row per key, whatever happened to it in between."""
    keys = ", ".join(f"[CT].{quote_identifier(k)}" for k in table.primary_key)
    return (f"SELECT [CT].[SYS_CHANGE_VERSION], [CT].[SYS_CHANGE_OPERATION], {keys} "
            f"FROM CHANGETABLE(CHANGES {quote_identifier(schema)}.{quote_identifier(table.name)}, {int(since)}) "
            f"AS [CT] ORDER BY [CT].[SYS_CHANGE_VERSION]")


#: System-versioned temporal tables and their history tables (refused: see the module docstring).
TEMPORAL_TABLES_SQL = "SELECT name FROM sys.tables WHERE SCHEMA_NAME(schema_id) = ? AND temporal_type <> 0"


def read_only_sql(database: str, on: bool, *, grace_seconds: int | None = None) -> str:
    """``ALTER DATABASE … SET READ_ONLY|READ_WRITE WITH ROLLBACK AFTER n SECONDS`` (``0``: ``IMMEDIATE``)."""
    state = "READ_ONLY" if on else "READ_WRITE"
    seconds = DEFAULT_GRACE_SECONDS if grace_seconds is None else int(grace_seconds)
    if seconds < 0:
        raise InputError("grace_seconds must be 0 or more")
    clause = "ROLLBACK IMMEDIATE" if seconds == 0 else f"ROLLBACK AFTER {seconds} SECONDS"
    return f"ALTER DATABASE {quote_identifier(database)} SET {state} WITH {clause}"


def identity_insert_batch(schema: str, table: Table, columns: Sequence[str], insert: str) -> tuple[str, ...]:
    """An insert into a table with an identity column: ``IDENTITY_INSERT`` on for this one table (SQL Server
    allows one per session), the insert with its explicit column list, then off again."""
    ref = f"{quote_identifier(schema)}.{quote_identifier(table.name)}"
    if not insert.startswith(f"INSERT INTO {ref} ("):
        raise ValueError("an identity insert needs an explicit column list")
    return (f"SET IDENTITY_INSERT {ref} ON", insert, f"SET IDENTITY_INSERT {ref} OFF")


def reseed_sql(schema: str, table: str, value: int) -> str:
    """``DBCC CHECKIDENT`` reseeding the table's identity to ``value`` (the largest key loaded)."""
    name = f"{quote_identifier(schema)}.{quote_identifier(table)}"
    return f"DBCC CHECKIDENT ({quote_literal(name)}, RESEED, {int(value)})"


def next_identity_sql(schema: str, table: str, column: str) -> str:
    """One row: the value the table's identity gives next, and the largest key it holds (proof: next > max)."""
    name = quote_literal(f"{quote_identifier(schema)}.{quote_identifier(table)}")
    return (f"SELECT IDENT_CURRENT({name}) + IDENT_INCR({name}), MAX({quote_identifier(column)}) "
            f"FROM {quote_identifier(schema)}.{quote_identifier(table)}")


def sqlserver_column(where: str, name: str, data_type: str, nullable: bool, precision: Any, scale: Any,
                     length: Any, *, fraction: Any = None, identity: bool = False) -> Column:
    """A catalog row as a logical column. ``fraction``: ``DATETIME_PRECISION`` (fractional-second digits of
    ``time``, ``datetime2``, ``datetimeoffset``; 7 unless declared smaller, kept as the portable precision)."""
    native = str(data_type).lower()
    kind = _TYPES.get(native)
    if kind is None:
        raise UnsupportedType(f"column {where} has type {data_type}, which has no portable form",
                              hint="supported: " + ", ".join(sorted(_TYPES)))
    if kind == "decimal":
        return Column(name, kind, nullable, int(precision), int(scale or 0), native=data_type, identity=identity)
    if kind == "text":
        bounded = length is not None and int(length) > 0  # -1 is (MAX)
        return Column(name, kind, nullable, length=int(length) if bounded else None, native=data_type)
    if kind in ("time", "timestamp", "timestamptz") and native in ("time", "datetime2", "datetimeoffset") \
            and fraction is not None and int(fraction) > 6:
        return Column(name, kind, nullable, precision=int(fraction), native=data_type)
    return Column(name, kind, nullable, native=data_type, identity=identity)


class _NativeType(sqltypes.UserDefinedType[Any]):
    """A SQL Server type SQLAlchemy has no class for (``hierarchyid``, ``geography``, ``geometry``)."""

    cache_ok = True

    def __init__(self, name: str) -> None:
        self.name = name

    def get_col_spec(self, **kw: Any) -> str:
        return self.name


def sqlserver_type(column: Column) -> sqltypes.TypeEngine[Any]:
    """The SQLAlchemy type a logical column is declared with on SQL Server (compiled by its mssql dialect)."""
    kind = column.type
    if kind == "decimal":
        return sqltypes.DECIMAL(min(column.precision or 38, 38), column.scale if column.scale is not None else 10)
    if kind == "text":
        bounded = column.length is not None and column.length <= 4000
        return sqltypes.NVARCHAR(column.length if bounded else None)  # None: NVARCHAR(max)
    if kind in ("time", "timestamp", "timestamptz"):
        digits = min(column.fraction_digits, 7)
        if kind == "time":
            return mssql.TIME(precision=digits)  # type: ignore[no-untyped-call]
        if kind == "timestamp":
            return mssql.DATETIME2(precision=digits)  # type: ignore[no-untyped-call]
        return mssql.DATETIMEOFFSET(precision=digits)  # type: ignore[no-untyped-call]
    if kind == "native":
        return mssql.XML() if column.native.lower() == "xml" else _NativeType(column.native.upper())
    simple: dict[str, sqltypes.TypeEngine[Any]] = {
        "smallint": sqltypes.SMALLINT(), "integer": sqltypes.INTEGER(), "bigint": sqltypes.BIGINT(),
        "real": mssql.REAL(), "float": sqltypes.FLOAT(),  # type: ignore[no-untyped-call]
        "binary": mssql.VARBINARY("max"), "date": sqltypes.DATE(),  # type: ignore[no-untyped-call]
        "boolean": mssql.BIT(), "uuid": mssql.UNIQUEIDENTIFIER(),
    }
    return simple[kind]


#: SQLAlchemy's SQL Server dialect (pyodbc flavour): compiles DDL and types, never connects.
_MSSQL = mssql_pyodbc.dialect()  # type: ignore[no-untyped-call]


def sqlserver_column_ddl(column: Column) -> str:
    """A column's declaration after its name: the type, ``IDENTITY(1,1)`` where it has one, ``NOT NULL``."""
    native = str(sqlserver_type(column).compile(dialect=_MSSQL))
    if column.identity:
        native += " IDENTITY(1,1)"  # reseeded past the loaded keys after the load (finish_load)
    return native if column.nullable else f"{native} NOT NULL"


def create_table_sql(schema: str, table: Table) -> str:
    """``CREATE TABLE`` built as a SQLAlchemy table and compiled by its mssql dialect: every name bracket-quoted
    as it needs, ``IDENTITY`` only where the portable schema says so (never SQLAlchemy's guess for an integer
    key), generated columns recreated (``ROWVERSION``; ``AS (definition) [PERSISTED]`` from the source's
    catalog)."""
    for name in (schema, table.name, *table.column_names, *(g.name for g in table.generated)):
        quote_identifier(name)  # what SQL Server cannot hold is refused, as everywhere in this dialect
    metadata = sa.MetaData()
    columns: list[sa.Column[Any]] = []
    for c in table.columns:
        # autoincrement: SQLAlchemy would make a lone integer primary key IDENTITY by itself
        counted: dict[str, Any] = {"autoincrement": False} if not c.identity else {}
        extra: list[Any] = [sa.Identity(start=1, increment=1)] if c.identity else []
        columns.append(sa.Column(c.name, sqlserver_type(c), *extra, nullable=c.nullable,
                                 primary_key=c.name in table.primary_key, quote=True, **counted))
    for g in table.generated:
        if g.kind == "rowversion":
            rowversion = mssql.ROWVERSION()  # type: ignore[no-untyped-call]
            columns.append(sa.Column(g.name, rowversion, nullable=False, autoincrement=False, quote=True))
        else:
            columns.append(sa.Column(g.name, sqltypes.NullType(), sa.Computed(sa.text(str(g.definition)),
                                                                             persisted=g.persisted or None),
                                     autoincrement=False, quote=True))
    created = sa.Table(table.name, metadata, *columns, schema=schema, quote=True, quote_schema=True)
    return str(CreateTable(created).compile(dialect=_MSSQL)).strip()


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
