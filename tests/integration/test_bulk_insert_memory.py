"""Peak memory of the pyodbc bulk insert with long values (``nvarchar(max)``/``varbinary(max)`` on SQL Server,
``text``/``bytea`` on PostgreSQL), measured on real PostgreSQL through the same ``OdbcDatabase.execute_many``
path the SQL Server dialect loads with.

A parameter array (``fast_executemany``) reserves the widest bound size for every row of a batch: one 256 KiB
value among 1,000 short rows would make the driver's array 1,000 x 256 Ki UTF-16 code units (512 MiB) for that
column. The provider sends values longer than ``FAST_VALUE_LIMIT`` row by row instead, and binds the arrays of
the short rows at their own widest value. Each case runs in a fresh Python process: the sizes bound for every
parameter array are recorded at the connection (the inserts themselves are real), and the process's peak RSS
(``ru_maxrss``) is read after the insert against its peak before. psqlODBC runs parameter arrays row by row, so
on PostgreSQL only the bound sizes show the control case's blow-up (with the limit lifted); a SQL Server driver
allocates what is bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

CHILD = r"""
import base64, json, resource, sys
from migrator.providers.database import open_database
from migrator.providers.database import odbc
from migrator.providers.database.schema import Column, Table

endpoint, lift_limit = json.loads(sys.argv[1]), sys.argv[2] == "1"
if lift_limit:
    odbc.FAST_VALUE_LIMIT = 1 << 30
table = Table("documents", (Column("id", "integer", nullable=False), Column("body", "text"),
                            Column("data", "binary")), primary_key=("id",))
def b64(data):
    return base64.b64encode(data).decode()
rows = [[i, "short text %d" % i, b64(b"\x00\x01" * 8)] for i in range(1000)]
rows[500] = [500, "\u03a9" * (256 * 1024), b64(b"\xff" * (192 * 1024))]  # one long value of each kind
db = open_database(endpoint, None)
with db.transaction():
    db.execute(db.create_table_sql(table))
arrays = []  # bytes each parameter array binds: rows x the widest size bound per column (2 bytes a code unit)


class Recording:  # the real cursor, with the sizes of each parameter array noted as they are bound

    def __init__(self, cursor):
        self.__dict__["_cursor"], self.__dict__["_sizes"] = cursor, []

    def setinputsizes(self, sizes):
        self.__dict__["_sizes"] = sizes
        return self._cursor.setinputsizes(sizes)

    def executemany(self, sql, batch):
        if self._cursor.fast_executemany:
            arrays.append(len(batch) * sum(2 * width for _, width, _ in self._sizes))
        return self._cursor.executemany(sql, batch)

    def __getattr__(self, name):
        return getattr(self._cursor, name)

    def __setattr__(self, name, value):
        setattr(self._cursor, name, value)


class Connection:
    def __init__(self, conn):
        self._conn = conn

    def cursor(self):
        return Recording(self._conn.cursor())

    def __getattr__(self, name):
        return getattr(self._conn, name)


db.conn = Connection(db.conn)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
names = table.column_names
sql = "INSERT INTO documents (id, body, data) VALUES (%s)" % ", ".join(db.marker(table.column(n)) for n in names)
with db.transaction():
    db.execute_many(sql, [table.column(n) for n in names],
                    [[db.param_value(table.column(n), v) for n, v in zip(names, row)] for row in rows])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count = next(iter(db.query("SELECT count(*), sum(length(body)), sum(length(data)) FROM documents")))
db.close()
print(json.dumps({"grew_kib": after - before, "rows": int(count[0]), "chars": int(count[1]),
                  "bytes": int(count[2]), "widest_array": max(arrays, default=0)}))
"""


def insert_in_child(endpoint: dict[str, object], *, lift_limit: bool) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(endpoint), "1" if lift_limit else "0"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    data: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def test_long_values_among_short_rows_do_not_blow_up_the_parameter_array(postgres: PostgresServer) -> None:
    expected_chars = sum(len(f"short text {i}") for i in range(1000) if i != 500) + 256 * 1024
    expected_bytes = 999 * 16 + 192 * 1024

    kept = insert_in_child(postgres.create_database().endpoint, lift_limit=False)
    blown = insert_in_child(postgres.create_database().endpoint, lift_limit=True)

    for case in (kept, blown):
        assert (case["rows"], case["chars"], case["bytes"]) == (1000, expected_chars, expected_bytes)
    # Every row is loaded either way. The provider's arrays stay small (the short rows' own widths, about 30 KiB
    # a batch) and the process's peak with them; lifting the limit binds the long value's width for all rows.
    assert 0 < kept["widest_array"] < 1 * MiB, kept
    assert kept["grew_kib"] * 1024 < 64 * MiB, f"peak RSS grew {kept['grew_kib'] // 1024} MiB"
    assert blown["widest_array"] > 512 * MiB, blown
