"""Database endpoints as playbooks name them, and :func:`open_database` to reach one through its dialect.

```yaml
source:
  database:
    dialect: postgresql            # or sqlserver, sqlite
    connection: "Driver={PostgreSQL Unicode};Server=db1;Port=5432;Database=ws365;Uid=migrator;Pwd=${env:DB_PWD}"
  # sqlite: connection is the path of the file
```

The connection is a :class:`~migrator.secrets.Secret`: the ``${env:...}`` references are resolved only when
the database is opened, and the revealed values are registered with the run's redactor.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from migrator.errors import InputError
from migrator.providers.database.base import (
    MARKER_TABLE,
    Column,
    Database,
    Drift,
    Fingerprint,
    ForeignKey,
    Table,
    drift,
    encode_row,
    fk_order,
    portable_row,
    to_portable,
)
from migrator.providers.database.odbc import parse_odbc
from migrator.secrets import Secret

__all__ = [
    "MARKER_TABLE",
    "Column",
    "Database",
    "DatabaseEndpoint",
    "Drift",
    "Fingerprint",
    "ForeignKey",
    "Table",
    "drift",
    "encode_row",
    "fk_order",
    "open_database",
    "parse_odbc",
    "portable_row",
    "to_portable",
]

_DEFAULT_SCHEMA = {"postgresql": "public", "sqlserver": "dbo", "sqlite": None}


class DatabaseEndpoint(BaseModel):
    """One database: its dialect and an ODBC connection string (for sqlite, the file's path)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dialect: Literal["postgresql", "sqlserver", "sqlite"]
    connection: Secret
    #: The schema holding the application's tables (postgresql: public, sqlserver: dbo; not for sqlite).
    schema_name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> DatabaseEndpoint:
        template = self.connection.template
        if self.dialect == "sqlite":
            if self.schema_name:
                raise ValueError("a sqlite endpoint has no schema_name")
            if not template.strip():
                raise ValueError("a sqlite endpoint needs the path of the database file as `connection`")
            return self
        try:
            pairs = parse_odbc(template)
        except InputError as exc:
            raise ValueError(exc.message) from None
        if "driver" not in pairs and "dsn" not in pairs:
            raise ValueError("the connection string names no Driver= (or DSN=)")
        return self

    @property
    def schema(self) -> str | None:  # type: ignore[override]  # BaseModel.schema is pydantic v1's, unused
        return self.schema_name or _DEFAULT_SCHEMA[self.dialect]

    def describe(self) -> str:
        """Dialect, server and database: never the user or password."""
        if self.dialect == "sqlite":
            return f"sqlite database {self.connection.template}"
        pairs = parse_odbc(self.connection.template)
        server = pairs.get("server") or pairs.get("servername") or pairs.get("host") or pairs.get("dsn") or "?"
        if "port" in pairs:
            server += f":{pairs['port']}"
        database = pairs.get("database") or pairs.get("initial catalog") or "(default)"
        return f"{self.dialect} database {database} on {server}"


def open_database(endpoint: DatabaseEndpoint | dict[str, Any], ctx: Any, *, must_exist: bool = True) -> Database:
    """A new connection to ``endpoint`` (the caller closes it). ``must_exist`` concerns sqlite files only."""
    if isinstance(endpoint, dict):
        endpoint = DatabaseEndpoint.model_validate(endpoint)
    text = ctx.reveal(endpoint.connection) if ctx is not None else endpoint.connection.reveal()
    assert text is not None
    label = endpoint.describe()
    if endpoint.dialect == "sqlite":
        from migrator.providers.database.sqlite import SqliteDatabase

        return SqliteDatabase(text, must_exist=must_exist)
    parse_odbc(text)  # a value substituted from the environment may have broken the syntax
    if endpoint.dialect == "postgresql":
        from migrator.providers.database.postgresql import PostgresDatabase

        return PostgresDatabase(text, label=label, schema=endpoint.schema or "public")
    from migrator.providers.database.sqlserver import SqlServerDatabase

    return SqlServerDatabase(text, label=label, schema=endpoint.schema or "dbo")
