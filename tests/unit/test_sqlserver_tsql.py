"""The T-SQL the sqlserver dialect generates (no SQL Server runs here): quoting, DDL, paging, MI restore."""

from __future__ import annotations

import pytest

from migrator.errors import InputError
from migrator.providers.database import Column, ForeignKey, Table
from migrator.providers.database.sqlserver import (
    SqlServerDatabase,
    managed_instance_restore_sql,
    quote_identifier,
    quote_literal,
    read_only_sql,
    sqlserver_column,
    sqlserver_column_ddl,
)

SAS = "sv=2022-11-02&ss=b&srt=co&sp=rl&se=2030-01-01T00:00:00Z&sig=abc%2Bdef%3D"
URL = "https://contoso.blob.core.windows.net/backups"


def dialect() -> SqlServerDatabase:
    db = SqlServerDatabase.__new__(SqlServerDatabase)  # SQL text only: no connection
    db.schema = "dbo"
    return db


@pytest.mark.parametrize(("name", "quoted"), [
    ("Order", "[Order]"), ("a]b", "[a]]b]"), ("x]]; DROP TABLE t;--", "[x]]]]; DROP TABLE t;--]"),
    ("naïve 😀", "[naïve 😀]"),
])
def test_identifiers_are_bracket_quoted_with_closing_brackets_doubled(name: str, quoted: str) -> None:
    assert quote_identifier(name) == quoted


@pytest.mark.parametrize("name", ["", "x" * 129, "a\x00b"])
def test_identifiers_sql_server_cannot_hold_are_refused(name: str) -> None:
    with pytest.raises(InputError):
        quote_identifier(name)


def test_literals_are_unicode_with_quotes_doubled() -> None:
    assert quote_literal("O'Brien'; --") == "N'O''Brien''; --'"


@pytest.mark.parametrize(("column", "ddl"), [
    (Column("a", "smallint"), "SMALLINT"), (Column("a", "integer", nullable=False), "INT NOT NULL"),
    (Column("a", "bigint"), "BIGINT"), (Column("a", "decimal", precision=38, scale=10), "DECIMAL(38,10)"),
    (Column("a", "decimal"), "DECIMAL(38,10)"), (Column("a", "float"), "FLOAT"), (Column("a", "real"), "REAL"),
    (Column("a", "text"), "NVARCHAR(MAX)"), (Column("a", "text", length=20), "NVARCHAR(20)"),
    (Column("a", "text", length=5000), "NVARCHAR(MAX)"), (Column("a", "binary"), "VARBINARY(MAX)"),
    (Column("a", "date"), "DATE"), (Column("a", "time"), "TIME(6)"), (Column("a", "timestamp"), "DATETIME2(6)"),
    (Column("a", "timestamptz"), "DATETIMEOFFSET(6)"), (Column("a", "boolean"), "BIT"),
    (Column("a", "uuid"), "UNIQUEIDENTIFIER"),
])
def test_every_logical_type_maps_to_a_native_column(column: Column, ddl: str) -> None:
    assert sqlserver_column_ddl(column) == ddl


@pytest.mark.parametrize(("native", "length", "kind", "bounded"), [
    ("nvarchar", -1, "text", None), ("varchar", 200, "text", 200), ("datetimeoffset", None, "timestamptz", None),
    ("bit", None, "boolean", None), ("uniqueidentifier", None, "uuid", None), ("money", None, "decimal", None),
    ("datetime2", None, "timestamp", None), ("image", None, "binary", None),
])
def test_catalog_types_map_to_logical_types(native: str, length: int | None, kind: str,
                                            bounded: int | None) -> None:
    column = sqlserver_column("t.c", "c", native, True, 19 if native == "money" else None,
                              4 if native == "money" else None, length)
    assert (column.type, column.length) == (kind, bounded)


def test_unsupported_catalog_type_names_the_column() -> None:
    with pytest.raises(InputError, match=r"t\.c has type geography"):
        sqlserver_column("t.c", "c", "geography", True, None, None, None)


def test_create_table_quotes_every_name_and_declares_the_key() -> None:
    table = Table("line items", (Column("order", "bigint", nullable=False), Column("Line", "integer", False)),
                  ("order", "Line"))
    assert dialect().create_table_sql(table) == (
        "CREATE TABLE [dbo].[line items] ([order] BIGINT NOT NULL, [Line] INT NOT NULL, "
        "PRIMARY KEY ([order], [Line]))")
    fk = ForeignKey("fk x", ("order",), "Order", ("Id",))
    assert dialect().foreign_key_sql(table, fk) == (
        "ALTER TABLE [dbo].[line items] ADD CONSTRAINT [fk x] FOREIGN KEY ([order]) "
        "REFERENCES [dbo].[Order] ([Id])")
    # A restore adds the key after loading the rows.
    assert dialect().primary_key_sql(table) == "ALTER TABLE [dbo].[line items] ADD PRIMARY KEY ([order], [Line])"


def test_keyset_page_spells_out_the_composite_key_comparison() -> None:
    table = Table("t", (Column("a", "integer"), Column("b", "text"), Column("c", "date")), ("a", "b"))
    db = dialect()
    assert db.page_sql(table, ["a", "b", "c"], after=True, limit=500) == (
        "SELECT TOP (500) [a], [b], [c] FROM [dbo].[t] WHERE ([a] > CAST(? AS INT)) OR "
        "([a] = CAST(? AS INT) AND [b] > ?) ORDER BY [a], [b]")
    assert db.key_params(table, [7, "x"]) == ["7", "7", "x"]
    assert db.page_sql(table, ["a"], after=False, limit=10) == "SELECT TOP (10) [a] FROM [dbo].[t] ORDER BY [a], [b]"


def test_table_without_key_pages_by_offset_over_every_column() -> None:
    table = Table("log", (Column("what", "text"), Column("at", "timestamptz")))
    assert dialect().offset_sql(table, ["what", "at"], offset=2000, limit=1000) == (
        "SELECT [what], CONVERT(nvarchar(40), [at], 127) FROM [dbo].[log] ORDER BY [what], [at] "
        "OFFSET 2000 ROWS FETCH NEXT 1000 ROWS ONLY")


@pytest.mark.parametrize(("on", "sql"), [
    (True, "ALTER DATABASE [ws]]365] SET READ_ONLY WITH ROLLBACK IMMEDIATE"),
    (False, "ALTER DATABASE [ws]]365] SET READ_WRITE WITH ROLLBACK IMMEDIATE"),
])
def test_read_only_switch(on: bool, sql: str) -> None:
    assert read_only_sql("ws]365", on) == sql


def test_managed_instance_restore_creates_the_credential_then_restores_every_stripe() -> None:
    batch = managed_instance_restore_sql("tenant's db", URL + "/", "?" + SAS, ["ws365_1.bak", "ws365_2.bak"])
    drop, create, restore = batch.statements
    assert drop == (f"IF EXISTS (SELECT 1 FROM sys.credentials WHERE name = N'{URL}') DROP CREDENTIAL [{URL}];")
    assert create == (f"CREATE CREDENTIAL [{URL}] WITH IDENTITY = N'SHARED ACCESS SIGNATURE', SECRET = N'{SAS}';")
    assert restore == (f"RESTORE DATABASE [tenant's db] FROM URL = N'{URL}/ws365_1.bak', "
                       f"URL = N'{URL}/ws365_2.bak';")
    assert SAS not in " ".join(batch.redacted) and "SECRET = N'***'" in batch.redacted[1]


@pytest.mark.parametrize(("url", "sas", "files", "message"), [
    ("http://contoso.blob.core.windows.net/backups", SAS, ["a.bak"], "must be https"),
    (URL + "?sv=1", SAS, ["a.bak"], "must be https"),
    (URL + "/nested/folder", SAS, ["a.bak"], "must be https"),
    (URL, "not a sas", ["a.bak"], "shared access signature"),
    (URL, SAS, [], "no backup files"),
    (URL, SAS, ["../other/a.bak"], "not a plain blob name"),
    (URL, SAS, ["a.bak?x=1"], "not a plain blob name"),
])
def test_managed_instance_restore_refuses_bad_input(url: str, sas: str, files: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        managed_instance_restore_sql("db", url, sas, files)


def test_literal_quoting_keeps_a_quote_in_a_file_name_inside_the_literal() -> None:
    restore = managed_instance_restore_sql("db", URL, SAS, ["it's.bak"]).statements[2]
    assert restore == f"RESTORE DATABASE [db] FROM URL = N'{URL}/it''s.bak';"
