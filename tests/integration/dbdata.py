"""The round-trip data set of the database tests: every logical type at its edges, awkward names, NULLs.

Rows are given in portable form (what backups store), so a test can compare any engine's content with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def populate(db: Database) -> None:
    """Creates the three tables in ``db`` and inserts the data set through its dialect."""
    for table in TABLES:
        with db.transaction():
            db.execute(db.create_table_sql(table))
            db.insert_rows(table, table.column_names, ROWS[table.name]())
    if db.dialect != "sqlite":  # sqlite declared it in CREATE TABLE
        with db.transaction():
            db.execute(db.foreign_key_sql(LINES, LINES.foreign_keys[0]))


def populated_source(dialect: str, postgres: PostgresServer, tmp_path: Path, sqlite_name: str = "source.sqlite"
                     ) -> dict[str, Any]:
    """A fresh source database (a scratch PostgreSQL database, or a SQLite file) holding the data set."""
    if dialect == "postgresql":
        endpoint = postgres.create_database().endpoint
        db = open_database(endpoint, None)
    else:
        endpoint = {"dialect": "sqlite", "connection": str(tmp_path / sqlite_name)}
        db = open_database(endpoint, None, must_exist=False)
    try:
        populate(db)
    finally:
        db.close()
    return endpoint
