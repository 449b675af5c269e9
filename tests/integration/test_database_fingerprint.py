"""A PostgreSQL server fingerprints a table itself to the very value migrator computes from the rows.

``Database.server_fingerprint`` sums MD5 hashes of each row's encoded line inside the engine, so only one row
crosses the network; it must agree, bit for bit, with :class:`Fingerprint` over the portable rows (what backups
store and every other dialect computes), for every type that has a server-written line.
"""

from __future__ import annotations

from dataclasses import replace

from migrator.providers.database import Fingerprint, Table, encode_row, open_database
from migrator.steps.database import fingerprint
from tests.integration.dbdata import AUDIT, LINES, ORDERS, audit_rows, line_rows, order_rows
from tests.support.postgres import PostgresServer

#: The orders of the data set without their float and time columns: PostgreSQL writes the line of every other
#: type itself.
WITHOUT = ("Ratio", "At")
NO_FLOAT = Table("Order", tuple(c for c in ORDERS.columns if c.name not in WITHOUT), ORDERS.primary_key)
KEPT = [i for i, name in enumerate(ORDERS.column_names) if name not in WITHOUT]


def _no_float_rows() -> list[list[object]]:
    return [[row[i] for i in KEPT] for row in order_rows()]


def _expected(rows: list[list[object]]) -> Fingerprint:
    result = Fingerprint()
    result.add_lines([encode_row(row) for row in rows])
    return result


def test_the_server_fingerprint_equals_the_fingerprint_of_the_portable_rows(postgres: PostgresServer) -> None:
    db = open_database(postgres.create_database().endpoint, None)
    try:
        for table, rows in ((NO_FLOAT, _no_float_rows()), (LINES, line_rows()), (AUDIT, audit_rows())):
            with db.transaction():
                db.execute(db.create_table_sql(table))
                db.insert_rows(table, table.column_names, rows)
            computed = db.server_fingerprint(table, table.column_names)
            assert computed is not None, f"{table.name}: the server should compute it"
            assert computed.as_dict() == _expected(rows).as_dict(), table.name
            assert fingerprint(db, table).as_dict() == _expected(rows).as_dict(), table.name
        # one changed value changes it
        with db.transaction():
            db.execute(f"UPDATE {db.table_ref('line items')} SET {db.quote('Note')} = 'changed' "
                       f"WHERE {db.quote('order')} = 3 AND {db.quote('Line')} = 1")
        changed = db.server_fingerprint(LINES, LINES.column_names)
        assert changed is not None
        assert changed.rows == len(line_rows())
        assert changed.checksum != _expected(line_rows()).checksum
        # an empty table: zero rows, zero checksum
        empty = replace(LINES, name="empty lines", foreign_keys=())
        with db.transaction():
            db.execute(db.create_table_sql(empty))
        assert db.server_fingerprint(empty, empty.column_names) == Fingerprint()
    finally:
        db.close()


def test_a_table_with_a_float_is_fingerprinted_from_its_rows(postgres: PostgresServer) -> None:
    db = open_database(postgres.create_database().endpoint, None)
    try:
        with db.transaction():
            db.execute(db.create_table_sql(ORDERS))
            db.insert_rows(ORDERS, ORDERS.column_names, order_rows())
        assert db.server_fingerprint(ORDERS, ORDERS.column_names) is None
        assert fingerprint(db, ORDERS).as_dict() == _expected(order_rows()).as_dict()
    finally:
        db.close()
