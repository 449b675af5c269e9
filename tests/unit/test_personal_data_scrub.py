"""No row value, blob name or free-text setting in a message: the scrubbing at each provider boundary.

Each case plants a marker (``Qz...``) where a driver, the file system or the environment file puts personal data,
and checks that the message keeps what identifies the problem (table, column, key columns, the blob's folder and
label) and not the marker. SQL Server's messages are covered here only: no SQL Server runs in the suite.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pyodbc
import pytest

from migrator.errors import PermanentError
from migrator.providers.blob.folder import FolderBlobStore
from migrator.providers.database import Column, to_portable
from migrator.providers.database.odbc import odbc_error
from migrator.providers.database.sqlite import SqliteDatabase, UndecodableText
from migrator.secrets import REDACTED, blob_label, redacted_environment, without_url_paths

MARKER = "Qzmarker"

# (SQLSTATE, the driver's message as pyodbc gives it, what the scrubbed message must still say)
DRIVER_MESSAGES = [
    ("23505", f'[23505] ERROR: duplicate key value violates unique constraint "people_email_key"\nDETAIL: Key '
              f'(email)=({MARKER}@contoso.example) already exists.;\nError while executing the query (1) '
              f'(SQLExecDirectW)', ["people_email_key", "key columns: email"]),
    ("23505", f'[23505] ERROR: duplicate key value violates unique constraint "people_name"\nDETAIL: Key '
              f'(surname, first_name)=({MARKER}, Jan) already exists.', ["key columns: surname, first_name"]),
    ("23514", f'[23514] ERROR: new row for relation "people" violates check constraint "age"\nDETAIL: Failing '
              f'row contains (3, {MARKER}, -5).', ['relation "people"', '"age"']),
    ("23502", f'[23502] ERROR: null value in column "email" of relation "people" violates not-null constraint\n'
              f'DETAIL: Failing row contains (3, {MARKER}, null).', ['column "email"', 'relation "people"']),
    ("23503", f'[23503] ERROR: insert or update on table "orders" violates foreign key constraint "fk"\nDETAIL: '
              f'Key (person)=({MARKER}) is not present in table "people".', ['table "orders"', "key columns: person"]),
    ("22P02", f'[22P02] ERROR: invalid input syntax for type integer: "{MARKER}";\nError while executing the query',
              ["invalid input syntax for type integer"]),
    ("22007", f'[22007] ERROR: date/time field value out of range: "{MARKER}"', ["out of range"]),
    ("22P02", f'[22P02] ERROR: invalid input syntax for type json\nDETAIL: Token "{MARKER}" is invalid.\nCONTEXT: '
              f'JSON data, line 1: [[1,"{MARKER}', ["type json"]),
    ("23000", f"[23000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Violation of UNIQUE KEY constraint "
              f"'UQ_people_email'. Cannot insert duplicate key in object 'dbo.people'. The duplicate key value is "
              f"({MARKER}@contoso.example). (2627)", ["UQ_people_email", "dbo.people"]),
    ("22018", f"[22018] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Conversion failed when converting the "
              f"nvarchar value '{MARKER}' to data type int. (245)", ["to data type int"]),
    ("22001", f"[22001] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]String or binary data would be "
              f"truncated in table 'ws.dbo.people', column 'surname'. Truncated value: '{MARKER}'. (2628)",
     ["'ws.dbo.people'", "column 'surname'"]),
]


@pytest.mark.parametrize(("state", "text", "kept"), DRIVER_MESSAGES)
def test_database_errors_keep_identifiers_and_withhold_row_values(state: str, text: str, kept: list[str]) -> None:
    error = odbc_error(pyodbc.Error(state, text), "writing table people on postgresql database ws failed")

    assert MARKER not in error.one_line()
    for needed in kept:
        assert needed in error.message, (needed, error.message)


def _legacy_sqlite(path: Path, create: str, rows: list[tuple[Any, ...]]) -> SqliteDatabase:
    # Bytes cast to TEXT: what a legacy application that wrote Latin-1 leaves in the file.
    with sqlite3.connect(path) as conn:
        conn.execute(create)
        conn.executemany("INSERT INTO t VALUES (?, CAST(? AS TEXT))", rows)
    conn.close()
    return SqliteDatabase(str(path))


LATIN = f"Chief {MARKER} Officer, Z\xfcrich".encode("latin-1")
# (table, rows, what the message names as the row)
UNDECODABLE = [
    ("CREATE TABLE t (id INTEGER PRIMARY KEY, job TEXT)", [(1, "ok"), (7, LATIN), (9, LATIN)], "row id=7"),
    # A text key may itself be personal data: the row is named by its rowid instead.
    ("CREATE TABLE t (email TEXT PRIMARY KEY, job TEXT)", [(f"{MARKER}@x.example", LATIN)], "row rowid=1"),
    # No rowid and a text key: table and column only.
    ("CREATE TABLE t (email TEXT PRIMARY KEY, job TEXT) WITHOUT ROWID", [(f"{MARKER}@x.example", LATIN)],
     "table t, column job"),
]


@pytest.mark.parametrize(("create", "rows", "names"), UNDECODABLE)
def test_sqlite_text_that_is_not_utf8_is_refused_naming_table_column_and_key(
        tmp_path: Path, create: str, rows: list[tuple[Any, ...]], names: str) -> None:
    db = _legacy_sqlite(tmp_path / "legacy.db", create, rows)
    table = db.tables()[0]
    reads = [lambda: list(db.read_all(table, table.column_names)),
             lambda: list(db.read_offset(table, table.column_names, 0, 100))]
    if table.primary_key:
        reads.append(lambda: list(db.read_page(table, table.column_names, None, 100)))
    for read in reads:
        with pytest.raises(UndecodableText) as raised:
            read()
        message = raised.value.one_line()
        assert MARKER not in message and "table t" in message and "column job" in message, message
        assert names in message, message
        assert "UTF-8" in message and raised.value.hint and "README" in raised.value.hint
    db.close()


@pytest.mark.parametrize(("column", "value"), [
    (Column("n", "integer"), f"{MARKER}"), (Column("amount", "decimal", scale=2), f"{MARKER}"),
    (Column("day", "date"), f"{MARKER}"), (Column("at", "timestamp"), f"{MARKER}"),
    (Column("ratio", "float"), f"{MARKER}"), (Column("id", "uuid"), f"{MARKER}"),
])
def test_a_value_without_portable_form_is_named_by_column_and_type_not_by_value(column: Column, value: Any) -> None:
    with pytest.raises(ValueError) as raised:
        to_portable(column, value)
    assert MARKER not in str(raised.value) and f"column {column.name}" in str(raised.value)
    assert raised.value.__suppress_context__


@pytest.mark.parametrize(("name", "label"), [
    (f"hr/{MARKER} Jansen - CEO.pdf", "hr/…#"), (f"hr/contracts/{MARKER}.pdf", "hr/contracts/…#"),
    (f"{MARKER}.pdf", "…#"),
])
def test_blob_label_is_folder_and_a_stable_hash_of_the_name(name: str, label: str) -> None:
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    assert blob_label(name) == label + digest
    assert blob_label(name + "x") != blob_label(name)


def test_folder_store_errors_name_the_blob_by_label_not_by_path(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    name = f"hr/{MARKER} Jansen.pdf"
    (tmp_path / name).mkdir(parents=True)  # a folder where the blob must go
    with pytest.raises(PermanentError) as raised:
        store.write(name, b"cv")
    assert MARKER not in raised.value.one_line() and blob_label(name) in raised.value.message
    with pytest.raises(PermanentError) as raised:
        store.open_read(f"hr/{MARKER} gone.pdf")
    assert MARKER not in raised.value.one_line() and blob_label(f"hr/{MARKER} gone.pdf") in raised.value.message


def test_url_paths_are_cut_from_network_errors() -> None:
    text = (f"HTTPConnectionPool(host='127.0.0.1', port=10000): Max retries exceeded with url: /acct/c/hr/{MARKER}"
            f".pdf?sv=1 (https://acct.blob.core.windows.net/c/hr/{MARKER}.pdf)")
    cut = without_url_paths(text)
    assert MARKER not in cut and "https://acct.blob.core.windows.net/…" in cut and "host='127.0.0.1'" in cut


def test_environment_for_a_bundle_keeps_structure_and_redacts_secrets_and_free_text() -> None:
    environment = {
        "tenant": {"name": "contoso", "reference": "SUP-1", "contacts": ["j.admin"], "timezone": "UTC"},
        "source": {"database": {"dialect": "sqlserver", "connection": f"Driver=x;Server=db;Uid={MARKER};Pwd=lit"},
                   "blobs": {"kind": "folder", "path": f"/srv/{MARKER}"}, "app": f"https://app.example/{MARKER}"},
        "target": {"blobs": {"kind": "azure", "container": "live", "account_key": MARKER,
                             "account_url": "https://acct.blob.core.windows.net"},
                   "firewall": {"start_ip": "203.0.113.10"}},
        "settings": {"notes": f"ask {MARKER}", "owner": MARKER, "admin_auth_header": "Bearer ${env:TOKEN}",
                     "concurrency": 8, "tags": [MARKER], "window": "night", "custom": {"DB_PWD": "${env:X}"}},
        "dayparts": {"night": {"start": "00:00", "end": "06:00"}},
    }
    shown = redacted_environment(environment)

    assert MARKER not in repr(shown)
    assert shown["tenant"] == environment["tenant"] and shown["dayparts"] == environment["dayparts"]
    assert shown["source"]["database"] == {"dialect": "sqlserver", "connection": REDACTED}
    assert shown["source"]["app"] == "https://app.example/…"
    assert shown["target"]["blobs"] == {"kind": "azure", "container": "live", "account_key": REDACTED,
                                        "account_url": "https://acct.blob.core.windows.net"}
    assert shown["target"]["firewall"]["start_ip"] == "203.0.113.10"
    assert shown["settings"] == {"notes": REDACTED, "owner": REDACTED, "admin_auth_header": REDACTED,
                                 "concurrency": 8, "tags": [REDACTED], "window": "night",
                                 "custom": {"DB_PWD": REDACTED}}
