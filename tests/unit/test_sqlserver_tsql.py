"""The T-SQL the sqlserver dialect generates (no SQL Server runs here): quoting, DDL, paging, MI restore."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from migrator.errors import InputError, PermanentError
from migrator.providers.database import Column, DatabaseEndpoint, ForeignKey, Table
from migrator.providers.database.postgresql import PostgresDatabase
from migrator.providers.database.schema import GeneratedColumn, key_digest
from migrator.providers.database.sqlserver import (
    UPDATEABILITY_SQL,
    SqlServerDatabase,
    case_insensitive,
    colliding_keys,
    identity_insert_batch,
    managed_instance_restore_sql,
    next_identity_sql,
    quote_identifier,
    quote_literal,
    read_only_sql,
    reseed_sql,
    sqlserver_column,
    sqlserver_column_ddl,
)
from migrator.providers.database.targets import path_note, target_kind

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
    (Column("a", "smallint"), "SMALLINT"), (Column("a", "integer", nullable=False), "INTEGER NOT NULL"),
    (Column("a", "bigint"), "BIGINT"), (Column("a", "decimal", precision=38, scale=10), "DECIMAL(38, 10)"),
    (Column("a", "decimal"), "DECIMAL(38, 10)"), (Column("a", "float"), "FLOAT"), (Column("a", "real"), "REAL"),
    (Column("a", "text"), "NVARCHAR(max)"), (Column("a", "text", length=20), "NVARCHAR(20)"),
    (Column("a", "text", length=5000), "NVARCHAR(max)"), (Column("a", "binary"), "VARBINARY(max)"),
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
    # sql_variant's base type travels with each value: no portable form keeps it (README, What has run).
    with pytest.raises(InputError, match=r"t\.c has type sql_variant"):
        sqlserver_column("t.c", "c", "sql_variant", True, None, None, None)


def test_create_table_quotes_every_name_and_declares_the_key() -> None:
    table = Table("line items", (Column("order", "bigint", nullable=False), Column("Line", "integer", False)),
                  ("order", "Line"))
    assert dialect().create_table_sql(table) == (  # as SQLAlchemy's mssql compiler lays it out
        "CREATE TABLE [dbo].[line items] (\n\t[order] BIGINT NOT NULL, \n\t[Line] INTEGER NOT NULL, "
        "\n\tPRIMARY KEY ([order], [Line])\n)")
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
        "SELECT TOP (500) [a], [b], [c] FROM [dbo].[t] WHERE ([a] > CAST(? AS INTEGER)) OR "
        "([a] = CAST(? AS INTEGER) AND [b] > ?) ORDER BY [a], [b]")
    assert db.key_params(table, [7, "x"]) == ["7", "7", "x"]
    assert db.page_sql(table, ["a"], after=False, limit=10) == "SELECT TOP (10) [a] FROM [dbo].[t] ORDER BY [a], [b]"


def test_table_without_key_pages_by_offset_over_every_column() -> None:
    table = Table("log", (Column("what", "text"), Column("at", "timestamptz")))
    assert dialect().offset_sql(table, ["what", "at"], offset=2000, limit=1000) == (
        "SELECT [what], CONVERT(nvarchar(40), [at], 127) FROM [dbo].[log] ORDER BY [what], [at] "
        "OFFSET 2000 ROWS FETCH NEXT 1000 ROWS ONLY")


@pytest.mark.parametrize(("on", "grace", "sql"), [
    # Without a termination clause the switch waits for every open transaction, for ever: 30 s by default.
    (True, None, "ALTER DATABASE [ws]]365] SET READ_ONLY WITH ROLLBACK AFTER 30 SECONDS"),
    (False, None, "ALTER DATABASE [ws]]365] SET READ_WRITE WITH ROLLBACK AFTER 30 SECONDS"),
    (True, 5, "ALTER DATABASE [ws]]365] SET READ_ONLY WITH ROLLBACK AFTER 5 SECONDS"),
    (False, 0, "ALTER DATABASE [ws]]365] SET READ_WRITE WITH ROLLBACK IMMEDIATE"),
])
def test_read_only_switch_rolls_back_open_transactions_after_a_grace_and_undoes_symmetrically(
        on: bool, grace: int | None, sql: str) -> None:
    assert read_only_sql("ws]365", on, grace_seconds=grace) == sql


def test_read_only_state_is_read_from_updateability_and_a_negative_grace_is_refused() -> None:
    assert "DATABASEPROPERTYEX(DB_NAME(), 'Updateability')" in UPDATEABILITY_SQL
    with pytest.raises(InputError, match="grace_seconds"):
        read_only_sql("db", True, grace_seconds=-1)


@pytest.mark.parametrize(("collation", "folds"), [
    ("SQL_Latin1_General_CP1_CI_AS", True), ("Latin1_General_100_CI_AS_SC_UTF8", True),
    ("Latin1_General_CS_AS", False), ("Latin1_General_BIN2", False), ("Latin1_General_100_CI_AI_BIN", False),
])
def test_case_insensitive_collations_are_told_from_the_name(collation: str, folds: bool) -> None:
    assert case_insensitive(collation) is folds


def test_keys_that_collide_on_a_case_insensitive_target_are_named_by_table_and_hash_never_value() -> None:
    keys = [["Smith", 1], ["smith", 1], ["SMITH", 1], ["Jones", 1], ["Jones", 2], ["Ærø", 3], ["ærø", 3]]
    found = colliding_keys("people", keys)
    assert len(found) == 2 and all(re.fullmatch(r"people#[0-9a-f]{12}", f) for f in found)
    assert not any(v in "".join(found).lower() for v in ("smith", "ærø", "jones"))
    assert colliding_keys("people", [["Smith", 1], ["Jones", 1], ["smith", 2]]) == []


def test_an_identity_table_loads_with_identity_insert_for_that_table_only_then_is_reseeded_and_proved() -> None:
    table = Table("Order", (Column("Id", "bigint", False), Column("note", "text")), ("Id",))
    db = dialect()
    on, insert, off = identity_insert_batch("dbo", table, ["Id", "note"], db.insert_sql(table, ["Id", "note"]))
    assert (on, off) == ("SET IDENTITY_INSERT [dbo].[Order] ON", "SET IDENTITY_INSERT [dbo].[Order] OFF")
    assert insert.startswith("INSERT INTO [dbo].[Order] ([Id], [note]) VALUES (")
    with pytest.raises(ValueError, match="column list"):
        identity_insert_batch("dbo", table, ["Id"], "INSERT INTO [dbo].[Order] VALUES (?)")
    assert reseed_sql("dbo", "Order", 41) == "DBCC CHECKIDENT (N'[dbo].[Order]', RESEED, 41)"
    assert next_identity_sql("dbo", "Order", "Id") == (
        "SELECT IDENT_CURRENT(N'[dbo].[Order]') + IDENT_INCR(N'[dbo].[Order]'), MAX([Id]) FROM [dbo].[Order]")


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


class Scripted(SqlServerDatabase):
    """The dialect with its connection replaced: records every statement, answers queries from a script."""

    def __init__(self, answers: dict[str, list[tuple[Any, ...]]] | None = None) -> None:  # no connection
        self.schema, self.database, self.label = "dbo", "ws", "sqlserver (scripted)"
        self._in_transaction = False
        self.statements: list[str] = []
        self.answers = answers or {}

    def query(self, sql: str, params: Sequence[Any] = (), *, batch: int = 1000) -> Iterator[Sequence[Any]]:
        self.statements.append(sql)
        return iter(next((rows for start, rows in self.answers.items() if sql.startswith(start)), []))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.statements.append(sql)
        return 1

    def _bulk(self, sql: str, cols: Sequence[Column], rows: Sequence[Sequence[Any]]) -> None:
        self.statements.append(sql)


ORDERS = Table("Order", (Column("Id", "bigint", False, identity=True), Column("note", "text")), ("Id",))


def test_an_identity_table_is_created_with_identity_and_loaded_with_identity_insert_around_the_insert() -> None:
    db = Scripted()
    assert db.create_table_sql(ORDERS) == (
        "CREATE TABLE [dbo].[Order] (\n\t[Id] BIGINT NOT NULL IDENTITY(1,1), \n\t[note] NVARCHAR(max) NULL, "
        "\n\tPRIMARY KEY ([Id])\n)")
    # SQLAlchemy alone would make a lone integer key IDENTITY: only a column the source numbers is one.
    plain_key = Table("Order", (Column("Id", "bigint", False), Column("note", "text")), ("Id",))
    assert "IDENTITY" not in db.create_table_sql(plain_key)
    db.insert_rows(ORDERS, ["Id", "note"], [[7, "x"], [41, "y"]])
    assert db.statements == ["SET IDENTITY_INSERT [dbo].[Order] ON",
                             "INSERT INTO [dbo].[Order] ([Id], [note]) VALUES (CAST(? AS BIGINT), ?)",
                             "SET IDENTITY_INSERT [dbo].[Order] OFF"]
    # A table without one is inserted into as before, after one catalog look-up (cached).
    plain = Table("Log", (Column("at", "integer"),))
    db.statements = []
    db.insert_rows(plain, ["at"], [[1]])
    db.insert_rows(plain, ["at"], [[2]])
    assert [s for s in db.statements if "IDENTITY" in s.upper()] == [
        "SELECT name FROM sys.identity_columns WHERE object_id = OBJECT_ID(N'[dbo].[Log]')"]


def test_an_existing_target_tables_identity_is_found_in_its_catalog_and_used() -> None:
    db = Scripted({"SELECT name FROM sys.identity_columns": [("Id",)]})
    table = Table("Order", (Column("Id", "bigint", False), Column("note", "text")), ("Id",))  # from PostgreSQL
    db.insert_rows(table, ["Id", "note"], [[1, "x"]])
    assert db.statements[1] == "SET IDENTITY_INSERT [dbo].[Order] ON"


def test_after_the_load_the_identity_is_reseeded_to_the_largest_key_and_the_next_value_proved_above_it() -> None:
    db = Scripted({"SELECT MAX(": [(41,)], "SELECT IDENT_CURRENT(": [(42, 41)]})
    db.finish_load(ORDERS)
    assert db.statements == [
        "SELECT MAX([Id]) FROM [dbo].[Order]",
        "DBCC CHECKIDENT (N'[dbo].[Order]', RESEED, 41)",
        "SELECT IDENT_CURRENT(N'[dbo].[Order]') + IDENT_INCR(N'[dbo].[Order]'), MAX([Id]) FROM [dbo].[Order]"]


def test_a_next_identity_not_above_the_largest_key_fails_the_load() -> None:
    db = Scripted({"SELECT MAX(": [(41,)], "SELECT IDENT_CURRENT(": [(40, 41)]})
    with pytest.raises(PermanentError, match="identity column Id would give 40 next"):
        db.finish_load(ORDERS)


def test_an_empty_identity_table_keeps_its_seed_and_a_table_without_identity_is_left_alone() -> None:
    db = Scripted({"SELECT MAX(": [(None,)]})
    db.finish_load(ORDERS)
    assert db.statements == ["SELECT MAX([Id]) FROM [dbo].[Order]"]
    db = Scripted()
    db.finish_load(Table("Log", (Column("at", "integer"),)))
    assert not any(s.startswith(("DBCC", "SELECT MAX")) for s in db.statements)


def test_an_identity_column_outside_the_key_is_not_updated() -> None:
    table = Table("t", (Column("code", "text", False), Column("n", "bigint", False, identity=True),
                        Column("v", "text")), ("code",))
    update = Scripted().update_sql(table)
    assert update is not None and update[1] == ["v", "code"] and "[n]" not in update[0]


@pytest.mark.parametrize(("native", "fraction", "ddl", "select"), [
    ("datetime2", 7, "DATETIME2(7)", "CAST([c] AS nvarchar(34))"),
    ("datetimeoffset", 7, "DATETIMEOFFSET(7)", "CAST([c] AS nvarchar(34))"),
    ("time", 7, "TIME(7)", "CAST([c] AS nvarchar(34))"),
    ("datetime2", 3, "DATETIME2(6)", "[c]"),  # 6 digits hold 3: read as a datetime, as before
    ("datetime", 3, "DATETIME2(6)", "[c]"),
    ("hierarchyid", None, "HIERARCHYID", "CAST([c] AS VARBINARY(MAX))"),
    ("geography", None, "GEOGRAPHY", "CAST([c] AS VARBINARY(MAX))"),
    ("geometry", None, "GEOMETRY", "CAST([c] AS VARBINARY(MAX))"),
    ("xml", None, "XML", "CAST([c] AS NVARCHAR(MAX))"),
])
def test_fine_temporal_and_native_types_keep_their_type_and_are_read_exactly(
        native: str, fraction: int | None, ddl: str, select: str) -> None:
    column = sqlserver_column("t.c", "c", native, True, None, None, None, fraction=fraction)
    assert sqlserver_column_ddl(column) == ddl
    assert Scripted().select_expr(column) == select


def test_native_values_are_bound_as_bytes_and_cast_back_to_their_type() -> None:
    db = Scripted()
    shape = sqlserver_column("t.c", "c", "geography", True, None, None, None)
    assert db.marker(shape) == "CAST(CAST(? AS VARBINARY(MAX)) AS GEOGRAPHY)"
    assert db.param_value(shape, "AAEC/w==") == b"\x00\x01\x02\xff" and db.binds_binary(shape)
    doc = sqlserver_column("t.c", "c", "xml", True, None, None, None)
    assert db.marker(doc) == "CAST(? AS XML)" and db.param_value(doc, "<a/>") == "<a/>"
    fine = sqlserver_column("t.c", "c", "datetime2", True, None, None, None, fraction=7)
    assert db.marker(fine) == "CAST(? AS DATETIME2(7))"
    assert db.param_value(fine, "2024-01-01T00:00:00.1234567") == "2024-01-01T00:00:00.1234567"


def test_types_a_target_cannot_hold_are_refused_by_table_and_column() -> None:
    table = Table("Places", (Column("id", "integer"), Column("shape", "native", native="geography"),
                             Column("seen", "timestamp", precision=7)))
    assert Scripted().cannot_hold(table) == []
    problems = PostgresDatabase.cannot_hold(PostgresDatabase.__new__(PostgresDatabase), table)
    assert problems == ["table Places, column shape: postgresql cannot hold geography values (only a SQL Server "
                        "target can)",
                        "table Places, column seen: timestamp(7) keeps 7 fractional digits, postgresql only 6"]


def test_rowversion_and_computed_columns_are_recreated_not_copied() -> None:
    table = Table("Doc", (Column("id", "integer", False),), ("id",),
                  generated=(GeneratedColumn("rv", "rowversion"),
                             GeneratedColumn("twice", "computed", "([id]*(2))", persisted=True)))
    db = Scripted()
    assert db.create_table_sql(table) == (
        "CREATE TABLE [dbo].[Doc] (\n\t[id] INTEGER NOT NULL, \n\t[rv] ROWVERSION NOT NULL, "
        "\n\t[twice] AS (([id]*(2))) PERSISTED, \n\tPRIMARY KEY ([id])\n)")
    assert db.not_recreated(table) == []
    other = PostgresDatabase.__new__(PostgresDatabase)
    assert other.not_recreated(table) == [
        "table Doc, column rv (rowversion): not copied and not recreated on postgresql",
        "table Doc, column twice (computed): not copied and not recreated on postgresql"]


def test_the_declared_collation_decides_whether_keys_fold() -> None:
    db = Scripted({"SELECT CAST(DATABASEPROPERTYEX": [("Latin1_General_CS_AS",)]})
    assert db.key_folding() is False and db.key_folding("SQL_Latin1_General_CP1_CI_AS") is True
    text_key = Table("people", (Column("login", "text"),), ("login",))
    assert db.key_collisions(text_key, [["A"], ["a"]], "SQL_Latin1_General_CP1_CI_AS") == [
        f"people#{key_digest(['a'])}"]
    assert db.key_collisions(Table("n", (Column("id", "integer"),), ("id",)), [[1]], "x_CI_AS") == []


@pytest.mark.parametrize(("dialect", "server", "kind", "said"), [
    ("sqlserver", "tcp:contoso.database.windows.net,1433", "azure-sql-database", "no native RESTORE"),
    ("sqlserver", "contoso-mi.abc123def456.database.windows.net", "managed-instance", "RESTORE … FROM URL"),
    ("sqlserver", "db1.corp.example", "sqlserver", "SQL Server: portable backup"),
    ("postgresql", "127.0.0.1", "postgresql", "PostgreSQL"),
])
def test_the_plan_names_the_target_and_the_path_for_it(dialect: str, server: str, kind: str, said: str) -> None:
    driver = "ODBC Driver 18 for SQL Server" if dialect == "sqlserver" else "PostgreSQL Unicode"
    endpoint = DatabaseEndpoint.model_validate(
        {"dialect": dialect, "connection": f"Driver={{{driver}}};Server={server};Database=ws"})
    assert target_kind(endpoint) == kind
    assert said in path_note(endpoint)


def test_sqlalchemy_writes_tuple_comparisons_t_sql_lacks_so_the_keyset_stays_expanded() -> None:
    # SQLAlchemy's mssql compiler writes tuple_() > tuple_() as a row-value comparison, which T-SQL does not
    # have; when it learns to expand it, this fails and the dialect can take tuple_() instead of its own form.
    import sqlalchemy as sa
    from sqlalchemy.dialects import mssql

    t = sa.table("t", sa.column("a"), sa.column("b"))
    compiled = str((sa.tuple_(t.c.a, t.c.b) > sa.tuple_(sa.bindparam("x"), sa.bindparam("y")))
                   .compile(dialect=mssql.dialect()))
    assert compiled.startswith("(t.a, t.b) > (")
    table = Table("t", (Column("a", "integer"), Column("b", "text")), ("a", "b"))
    assert ") > (" not in dialect().keyset_sql(table, ">")
