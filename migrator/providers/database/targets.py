"""Which way a database reaches its target: what kind of target a restore's endpoint is, and which path fits it.

The table of paths and their limits is in the README ("Which path for which target"); in short: Azure SQL
Database (``<server>.database.windows.net``) has no native ``RESTORE``, so the portable backup, restore and
window delta are the path (a BACPAC import is a one-shot copy without delta); a Managed Instance
(``<name>.<zone>.database.windows.net``) also takes ``RESTORE … FROM URL`` of ``.bak`` files
(:func:`~.sqlserver.managed_instance_restore_sql`), likewise without delta; every other target takes the
portable path.
"""

from __future__ import annotations

import re

from migrator.providers.database import DatabaseEndpoint, parse_odbc

#: Azure SQL hosts: ``server.database.windows.net`` (Database) and ``name.zone.database.windows.net`` (MI).
_AZURE = re.compile(r"^(?:tcp:)?(?P<host>[A-Za-z0-9.-]+?)\.database\.windows\.net(?:,\d+)?$", re.I)


def target_kind(endpoint: DatabaseEndpoint) -> str:
    """``azure-sql-database``, ``managed-instance``, ``sqlserver``, ``postgresql`` or ``sqlite``, from the
    endpoint's dialect and server name (never connecting)."""
    if endpoint.dialect != "sqlserver":
        return endpoint.dialect
    pairs = parse_odbc(endpoint.connection.template)
    server = pairs.get("server") or pairs.get("address") or ""
    match = _AZURE.match(server.strip())
    if match is None:
        return "sqlserver"
    return "managed-instance" if "." in match["host"] else "azure-sql-database"


_PATHS = {
    "azure-sql-database": "Azure SQL Database: portable backup and restore now, the delta in the window "
                          "(no native RESTORE there; a BACPAC import would move the whole database inside the "
                          "window)",
    "managed-instance": "Azure SQL Managed Instance: portable backup and restore with the delta in the window; "
                        "a native RESTORE … FROM URL of a .bak is the alternative for a one-shot copy (no delta)",
    "sqlserver": "SQL Server: portable backup and restore now, the delta in the window",
    "postgresql": "PostgreSQL: portable backup and restore now, the delta in the window",
    "sqlite": "SQLite: portable backup and restore now, the delta in the window",
}


def path_note(endpoint: DatabaseEndpoint) -> str:
    """One line for a plan: the target at hand and why this path."""
    return "path: " + _PATHS[target_kind(endpoint)]
