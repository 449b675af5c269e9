"""Portable values, fingerprints, connection strings, drift and foreign-key order: the engine-free core."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from migrator.errors import InputError
from migrator.providers.database import (
    Column,
    DatabaseEndpoint,
    Fingerprint,
    ForeignKey,
    Table,
    drift,
    encode_row,
    fk_order,
    parse_odbc,
    to_portable,
)
from migrator.providers.database.base import converter, row_converter
from migrator.providers.database.sqlite import logical_type

UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))

# The same value as different drivers return it must come out identical.
SAME_VALUE = [
    (Column("c", "decimal", precision=38, scale=10), [Decimal("1.5"), "1.5", 1.5, "1.5000000000"], "1.5000000000"),
    (Column("c", "decimal", precision=38, scale=10),
     [Decimal("1234567890123456789012345678.1234567891")], "1234567890123456789012345678.1234567891"),
    (Column("c", "decimal"), [Decimal("2.500"), "2.5"], "2.5"),
    (Column("c", "boolean"), [True, 1, "1", "true", "t"], True),
    (Column("c", "uuid"), [uuid.UUID(int=10), "00000000-0000-0000-0000-00000000000A"],
     "00000000-0000-0000-0000-00000000000a"),
    (Column("c", "timestamptz"), [dt.datetime(2024, 1, 1, 14, 0, tzinfo=PLUS2), dt.datetime(2024, 1, 1, 12, 0),
                                  "2024-01-01 12:00:00+00:00", "2024-01-01T14:00:00+02:00"],
     "2024-01-01T12:00:00.000000+00:00"),
    (Column("c", "timestamp"), [dt.datetime(2024, 1, 1, 12, 0, 0, 5), "2024-01-01 12:00:00.000005"],
     "2024-01-01T12:00:00.000005"),
    (Column("c", "time"), [dt.time(9, 5), "09:05:00", "09:05"], "09:05:00.000000"),
    (Column("c", "date"), [dt.date(2024, 2, 29), "2024-02-29", dt.datetime(2024, 2, 29, 23, 0)], "2024-02-29"),
    (Column("c", "binary"), [b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")], "AP8="),
    (Column("c", "bigint"), [9223372036854775807, "9223372036854775807"], 9223372036854775807),
    (Column("c", "float"), [0.1, "0.1"], 0.1),
]


@pytest.mark.parametrize(("column", "values", "portable"), SAME_VALUE, ids=[c[0].type for c in SAME_VALUE])
def test_every_driver_form_of_a_value_has_one_portable_form(column: Column, values: list[Any],
                                                            portable: Any) -> None:
    assert [to_portable(column, v) for v in values] == [portable] * len(values)
    assert [converter(column)(v) for v in values] == [portable] * len(values)


def test_fingerprint_ignores_row_order_but_not_duplicates() -> None:
    rows = [encode_row([1, "a"]), encode_row([2, "b"]), encode_row([2, "b"])]
    forward, backward, fewer = Fingerprint(), Fingerprint(), Fingerprint()
    for line in rows:
        forward.add_line(line)
    for line in reversed(rows):
        backward.add_line(line)
    for line in rows[:2]:
        fewer.add_line(line)
    assert forward.as_dict() == backward.as_dict()
    assert forward.checksum != fewer.checksum
    twice_b = Fingerprint()
    for line in [encode_row([1, "a"])]:
        twice_b.add_line(line)
    assert twice_b.checksum != forward.checksum  # duplicates do not cancel out (a sum, not XOR)


def test_fingerprints_merge_to_the_whole() -> None:
    whole, first, second = Fingerprint(), Fingerprint(), Fingerprint()
    for i in range(10):
        line = encode_row([i, f"row {i} 😀"])
        whole.add_line(line)
        (first if i < 4 else second).add_line(line)
    first.merge(second)
    assert first.as_dict() == whole.as_dict()
    assert Fingerprint.from_dict(whole.as_dict()).as_dict() == whole.as_dict()


@pytest.mark.parametrize(("text", "pairs"), [
    ("Driver={PostgreSQL Unicode};Server=db;Pwd={a;b}}c}", {"driver": "PostgreSQL Unicode", "server": "db",
                                                           "pwd": "a;b}c"}),
    ("DSN=ws365; UID = me ;", {"dsn": "ws365", "uid": "me"}),
])
def test_odbc_connection_strings_parse_with_braced_values(text: str, pairs: dict[str, str]) -> None:
    assert parse_odbc(text) == pairs


@pytest.mark.parametrize("text", ["Driver={PostgreSQL Unicode;Server=db", "just words", "=x"])
def test_malformed_odbc_strings_fail_without_echoing_the_text(text: str) -> None:
    with pytest.raises(InputError, match="malformed") as raised:
        parse_odbc(text + ";Pwd=hunter22")
    assert "hunter22" not in str(raised.value)


def test_endpoint_describe_never_shows_the_credentials() -> None:
    endpoint = DatabaseEndpoint.model_validate({"dialect": "sqlserver", "connection":
        "Driver={ODBC Driver 18 for SQL Server};Server=sql1;Database=ws;Uid=sa;Pwd=${env:SQL_PWD}"})
    assert endpoint.describe() == "sqlserver database ws on sql1"
    assert endpoint.schema == "dbo"


def test_drift_reports_missing_narrower_and_required_columns() -> None:
    backup = Table("t", (Column("id", "integer"), Column("amount", "decimal", precision=38, scale=10),
                         Column("name", "text"), Column("gone", "date")))
    target = Table("t", (Column("id", "bigint"), Column("amount", "decimal", precision=18, scale=2),
                         Column("name", "text", length=50), Column("extra", "text", nullable=False)))
    found = drift(backup, target)
    assert found.blocking
    assert found.missing_columns == ["gone"]
    assert [i.split(":")[0] for i in found.incompatible] == ["amount", "name"]
    assert found.extra_required == ["extra"]
    assert not drift(backup, backup).blocking


def test_foreign_key_order_loads_parents_first() -> None:
    def table(name: str, *refs: str) -> Table:
        return Table(name, (Column("id", "integer"),), ("id",),
                     tuple(ForeignKey(f"fk_{name}_{r}", ("id",), r, ("id",)) for r in refs))
    tables = [table("lines", "orders", "products"), table("orders", "customers"), table("customers"),
              table("products"), table("tree", "tree")]
    order = [t.name for t in fk_order(tables)]
    assert sorted(order) == sorted(t.name for t in tables)
    for child, parent in [("lines", "orders"), ("lines", "products"), ("orders", "customers")]:
        assert order.index(parent) < order.index(child), order


@pytest.mark.parametrize(("declared", "kind"), [
    ("INTEGER", "bigint"), ("INT", "integer"), ("SMALLINT", "smallint"), ("DECIMAL(38,10)", "decimal"),
    ("DECIMAL_TEXT(12,3)", "decimal"), ("REAL", "float"), ("FLOAT4", "real"), ("VARCHAR(20)", "text"),
    ("BLOB", "binary"), ("TIMESTAMPTZ", "timestamptz"), ("TIMESTAMP WITH TIME ZONE", "timestamptz"),
    ("DATETIME", "timestamp"), ("TIMESTAMP", "timestamp"), ("DATE", "date"), ("TIME", "time"),
    ("BOOLEAN", "boolean"), ("UUID", "uuid"),
])
def test_sqlite_declared_types_map_to_logical_types(declared: str, kind: str) -> None:
    assert logical_type(declared, "t.c").type == kind


def test_sqlite_column_without_a_type_is_refused_by_name() -> None:
    with pytest.raises(InputError, match=r"column t\.c"):
        logical_type("", "t.c")


ENCODER_EDGES = [
    [1, -9223372036854775808, 10**30, True, False, None],
    [0.1, -0.0, 5e-324, 1e16, 1e15, -1.7976931348623157e308, float("nan"), float("inf"), float("-inf")],
    ["plain", "emoji 👩‍👩‍👧‍👦 𠜎", "\x00\x01\x1f\x7f \u2028 \t\n\r\b\f", 'quote " backslash \\ slash /', ""],
    [],
]


@pytest.mark.parametrize("values", ENCODER_EDGES, ids=["ints", "floats", "strings", "empty"])
def test_encoded_rows_are_the_bytes_json_dumps_gives(values: list[Any]) -> None:
    expected = json.dumps(values, ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode("utf-8")
    assert encode_row(values) == expected


def test_row_converter_leaves_values_as_read_where_no_converter_is_given() -> None:
    as_read = object()  # not a portable value: proves the column was not touched
    convert = row_converter([None, converter(Column("c", "uuid")), None])
    assert convert((as_read, uuid.UUID(int=10), None)) == [as_read, "00000000-0000-0000-0000-00000000000a", None]
    assert row_converter([None, None])((as_read, 2)) == [as_read, 2]
    with pytest.raises(ValueError, match="2 values for 3 columns"):
        convert((1, 2))


def test_fingerprint_of_many_lines_at_once_equals_line_by_line() -> None:
    lines = [encode_row([i, f"row {i}"]) for i in range(50)] * 2
    one_by_one, at_once = Fingerprint(), Fingerprint()
    for line in lines:
        one_by_one.add_line(line)
    at_once.add_lines(lines)
    assert at_once.as_dict() == one_by_one.as_dict()
