"""The round-trip data set of the database tests: every logical type at its edges, awkward names, NULLs.

Rows are given in portable form (what backups store), so a test can compare any engine's content with them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from migrator.providers.database import Column, Database, ForeignKey, Table, open_database

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

BIG_TEXT = "Ωmega 😀 𝄞 " * 120_000  # over 1 MB, with 4-byte characters

ORDERS = Table(
    "Order",  # a reserved word, mixed case
    (
        Column("Id", "bigint", nullable=False),
        Column("Small", "smallint"),
        Column("int", "integer"),
        Column("Big", "bigint"),
        Column("Amount", "decimal", precision=38, scale=10),
        Column("Ratio", "float"),
        Column("Name Of Thing", "text"),
        Column("Code", "text", length=20),
        Column("Blob", "binary"),
        Column("Day", "date"),
        Column("At", "time"),
        Column("Stamp", "timestamp"),
        Column("StampTz", "timestamptz"),
        Column("select", "boolean"),
        Column("Guid", "uuid"),
    ),
    ("Id",),
)

LINES = Table(
    "line items",
    (
        Column("order", "bigint", nullable=False),
        Column("Line", "integer", nullable=False),
        Column("Qty", "decimal", precision=12, scale=3),
        Column("Note", "text"),
    ),
    ("order", "Line"),
    (ForeignKey("fk_lines_order", ("order",), "Order", ("Id",)),),
)

AUDIT = Table(  # no primary key, with identical rows
    "Audit Log",
    (Column("what", "text"), Column("n", "integer")),
)

TABLES = (ORDERS, LINES, AUDIT)


def _order(i: int) -> list[Any]:
    return [
        i, (i * 7) % 32767 - 16000, i * 1000 - 2_000_000_000, i * 10**15 - 9 * 10**18,
        f"{i}{'9' * 26}.{i % 10}123456789", i / 3.0, f"name {i} — ünïcødé 😀", f"C{i:04d}",
        None, f"20{i % 90:02d}-0{i % 9 + 1}-1{i % 9}", f"1{i % 10}:3{i % 6}:2{i % 10}.{i:06d}",
        f"2024-02-29T23:59:{i % 60:02d}.{i:06d}", f"2024-12-31T22:00:{i % 60:02d}.{i:06d}+00:00", i % 2 == 0,
        f"00000000-0000-4000-8000-{i:012d}",
    ]


def order_rows() -> list[list[Any]]:
    rows = [_order(i) for i in range(1, 23)]
    rows[0][8] = "AAEC/w=="  # binary 00 01 02 ff
    rows[1][6] = BIG_TEXT
    rows[2][4:6] = ["-9999999999999999999999999999.9999999999", -1.7976931348623157e308]
    rows[3][4:6] = ["0.0000000001", 5e-324]
    rows[4][1:4] = [-32768, -2147483648, -9223372036854775808]
    rows[5][1:4] = [32767, 2147483647, 9223372036854775807]
    rows[6][10:13] = ["00:00:00.000000", "0001-01-01T00:00:00.000000", "1970-01-01T00:00:00.000001+00:00"]
    rows[7][10:13] = ["23:59:59.999999", "9999-12-31T23:59:59.999999", "2038-01-19T03:14:08.000000+00:00"]
    rows[8][6] = "emoji 👩‍👩‍👧‍👦 and 𠜎 and plain \t tab 'quote' \"dq\" \\ backslash"
    rows[9][8] = "/" * 4 + "+" * 4 + "A" * 2_000_000 + "=="[:0]  # a 1.5 MB binary
    rows[10] = [rows[10][0], *([None] * (len(ORDERS.columns) - 1))]  # NULL in every column type
    return rows


def line_rows() -> list[list[Any]]:
    return [[o, line, f"{o}.{line:03d}", None if line == 2 else f"note {o}/{line}"]
            for o in range(1, 12) for line in range(1, 4)]


def audit_rows() -> list[list[Any]]:
    return [["login", 1], ["login", 1], ["login", 1], ["logout", 2], [None, None], [None, None], ["x", 3]]


ROWS = {"Order": order_rows, "line items": line_rows, "Audit Log": audit_rows}


#: An ODBC connection string to a SQL Server database the contract suite may empty and fill, e.g.
#: ``Driver={ODBC Driver 18 for SQL Server};Server=localhost;Database=contract;Uid=sa;Pwd=...``
#: (or ``Driver=FreeTDS;TDS_Version=7.4;...``).
SQLSERVER_ENV = "MIGRATOR_TEST_SQLSERVER"
#: The dialects the contract tests run against as the source: SQL Server only where a server is given.
DIALECTS = ["postgresql", "sqlite", pytest.param("sqlserver", marks=pytest.mark.skipif(
    not os.environ.get(SQLSERVER_ENV), reason=f"not run: no server ({SQLSERVER_ENV} is not set)"))]


def with_dialects(value: Any, dialects: Sequence[Any] = DIALECTS) -> list[Any]:
    """``(value, dialect)`` parameters, one per dialect of ``dialects``, each keeping its dialect's marks (the
    SQL Server one stays "not run: no server" without a server)."""
    params = []
    for dialect in dialects:
        name, marks = (dialect.values[0], dialect.marks) if hasattr(dialect, "values") else (dialect, ())
        params.append(pytest.param(value, name, marks=marks, id=f"{value}-{name}"))
    return params


def sqlserver_endpoint() -> dict[str, Any]:
    """The contract suite's SQL Server database (see :data:`SQLSERVER_ENV`)."""
    return {"dialect": "sqlserver", "connection": "${env:" + SQLSERVER_ENV + "}"}


def scratch_database(dialect: str, postgres: PostgresServer, tmp_path: Path, *, drop: Sequence[str] = ()
                     ) -> tuple[dict[str, Any], Callable[[str], None]]:
    """An empty database of ``dialect`` (on SQL Server: the given one, ``drop`` dropped first) and a function
    that runs one statement in it through migrator's own dialect, committed."""
    if dialect == "postgresql":
        endpoint = postgres.create_database().endpoint
    elif dialect == "sqlserver":
        endpoint = sqlserver_endpoint()
    else:
        endpoint = {"dialect": "sqlite", "connection": str(tmp_path / "scratch.sqlite")}

    def run(sql: str) -> None:
        db = open_database(endpoint, None, must_exist=False)
        try:
            with db.transaction():
                db.execute(sql)
        finally:
            db.close()

    db = open_database(endpoint, None, must_exist=False)
    try:
        for name in drop:
            if db.table_exists(name):
                db.drop_table(name)
    finally:
        db.close()
    return endpoint, run


def populate(db: Database) -> None:
    """Creates the three tables in ``db`` and inserts the data set through its dialect."""
    for table in TABLES:
        with db.transaction():
            db.execute(db.create_table_sql(table))
            db.insert_rows(table, table.column_names, ROWS[table.name]())
    if db.keys_after_load:  # sqlite declared it in CREATE TABLE
        db.add_foreign_key(LINES, LINES.foreign_keys[0])


def populated_source(dialect: str, postgres: PostgresServer, tmp_path: Path, sqlite_name: str = "source.sqlite"
                     ) -> dict[str, Any]:
    """A fresh source database (a scratch PostgreSQL database, or a SQLite file) holding the data set."""
    if dialect == "postgresql":
        endpoint = postgres.create_database().endpoint
        db = open_database(endpoint, None)
    elif dialect == "sqlserver":  # a database of its own on a real server (see DIALECTS): emptied first
        endpoint = sqlserver_endpoint()
        db = open_database(endpoint, None)
        for table in reversed(TABLES):
            if db.table_exists(table.name):
                db.drop_table(table.name)
    else:
        endpoint = {"dialect": "sqlite", "connection": str(tmp_path / sqlite_name)}
        db = open_database(endpoint, None, must_exist=False)
    try:
        populate(db)
    finally:
        db.close()
    return endpoint
