"""Change Tracking on a SQL Server source, against recorded result sets (tests/unit/fixtures/changetable.json):
a fake pyodbc connection answers the dialect's queries with them, so the dialect's own reading code runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from migrator.providers.database import Column, Table
from migrator.providers.database.sqlserver import (
    CHANGE_VERSION_SQL,
    SqlServerDatabase,
)

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "changetable.json").read_text())


class FakeCursor:
    """A pyodbc cursor that answers each statement with the recorded rows of the first matching prefix."""

    def __init__(self, connection: FakeConnection) -> None:
        self.connection, self.rows = connection, []

    def execute(self, sql: str, *params: Any) -> FakeCursor:
        self.connection.sent.append(sql)
        self.rows = list(next((rows for start, rows in self.connection.answers.items() if sql.startswith(start)),
                              []))
        return self

    def fetchmany(self, size: int) -> list[Sequence[Any]]:
        batch, self.rows = self.rows[:size], self.rows[size:]
        return batch

    def close(self) -> None:
        pass


class FakeConnection:
    def __init__(self, answers: dict[str, list[Sequence[Any]]]) -> None:
        self.answers, self.sent = answers, []

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)


def dialect(case: dict[str, Any]) -> tuple[SqlServerDatabase, Table, FakeConnection]:
    spec = case["table"]
    table = Table(spec["name"], tuple(Column(n, t, n not in spec["primary_key"]) for n, t in spec["columns"]),
                  tuple(spec["primary_key"]))
    conn = FakeConnection({"SELECT CHANGE_TRACKING_MIN_VALID_VERSION(": [(case["min_valid_version"],)],
                           "SELECT [CT].": [tuple(r) for r in case["rows"]],
                           CHANGE_VERSION_SQL: [(case["since"],)]})
    db = SqlServerDatabase.__new__(SqlServerDatabase)  # no server: the recorded connection instead
    db.schema, db.database, db.label, db.conn, db._in_transaction = "dbo", "ws", "sqlserver (recorded)", conn, False
    return db, table, conn


def test_changed_keys_are_read_from_changetable_since_the_recorded_version() -> None:
    db, table, conn = dialect(RECORDED["orders_since_1041"])
    changed = db.changed_keys(table, 1041)
    assert changed.keys == [[7, "eu"], [100, "eu"], [3, "us"], [101, "us"], [8, "eu"]]
    assert changed.operations == {"U": 2, "I": 2, "D": 1}
    assert conn.sent == [
        "SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(N'[dbo].[Order]'))",
        "SELECT [CT].[SYS_CHANGE_VERSION], [CT].[SYS_CHANGE_OPERATION], [CT].[Id], [CT].[Region] "
        "FROM CHANGETABLE(CHANGES [dbo].[Order], 1041) AS [CT] ORDER BY [CT].[SYS_CHANGE_VERSION]"]
    assert db.change_version() == 1041


@pytest.mark.parametrize(("case", "reason"), [
    ("orders_retention_passed", "version 1041 is below CHANGE_TRACKING_MIN_VALID_VERSION 2200"),
    ("orders_not_tracked", "change tracking is not enabled on table Order"),
])
def test_a_version_change_tracking_cannot_answer_for_falls_back_with_the_reason(case: str, reason: str) -> None:
    db, table, conn = dialect(RECORDED[case])
    changed = db.changed_keys(table, RECORDED[case]["since"])
    assert changed.keys is None and reason in changed.reason
    assert not any("CHANGETABLE" in sql for sql in conn.sent)  # never asked for changes it cannot give


def test_no_change_since_the_version_is_an_empty_list_not_a_fallback() -> None:
    db, table, _ = dialect(RECORDED["people_nothing_changed"])
    changed = db.changed_keys(table, 5)
    assert changed.keys == [] and changed.operations == {}


# The statements themselves are in the table of tests/unit/test_sqlserver_parsed.py (CHANGETABLE is beyond
# sqlglot's grammar: matched against its documented syntax there).
