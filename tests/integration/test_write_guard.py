"""database.write_guard: any write after the cutover — insert, update (even to the same value), delete — makes
the rollback refuse; no write, or --accept-data-loss, lets it through. On every dialect of the contract suite
(PostgreSQL through its row versions, the others through content fingerprints); reads on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from migrator.errors import CompensationRefused
from migrator.steps.database import WriteGuard
from migrator.testing import MemoryContext
from tests.integration.dbdata import DIALECTS, scratch_database, with_dialects
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration

WRITES = {
    "insert": "INSERT INTO tiles VALUES (4, 'new')",
    "update to the same value": "UPDATE tiles SET title = 'two' WHERE id = 2",
    "delete": "DELETE FROM tiles WHERE id = 3",
}


def _guarded(dialect: str, endpoint: dict[str, Any], run: Callable[[str], Any]) -> tuple[WriteGuard, MemoryContext]:
    run("CREATE TABLE tiles (id integer PRIMARY KEY, title varchar(40))")
    run("INSERT INTO tiles VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    run("CREATE TABLE settings (name varchar(40), value varchar(40))")  # no primary key
    guard = WriteGuard("cutover_guard", WriteGuard.Params.model_validate({"database": endpoint}))
    ctx = MemoryContext()
    out = guard.apply(ctx)
    assert out is not None and out["tables"] == 2
    # PostgreSQL's change token reads no row content; the others keep each table's content fingerprint.
    assert all(("token" in kept) is (dialect == "postgresql") for kept in ctx.memo.get("fingerprints").values())
    return guard, ctx


#: Writes that change content are seen on every dialect; an update to the same value only through PostgreSQL's
#: row versions (a content fingerprint cannot see it: README, What has run against what).
CASES = [case for write in sorted(WRITES)
         for case in with_dialects(write, ["postgresql"] if write == "update to the same value" else DIALECTS)]


@pytest.mark.parametrize(("write", "dialect"), CASES)
def test_a_write_after_cutover_makes_the_rollback_refuse(write: str, dialect: str, postgres: PostgresServer,
                                                         tmp_path: Path) -> None:
    endpoint, run = scratch_database(dialect, postgres, tmp_path, drop=("tiles", "settings"))
    guard, ctx = _guarded(dialect, endpoint, run)
    guard.compensate(ctx)  # nothing written yet: passes
    run(WRITES[write])
    with pytest.raises(CompensationRefused, match="tables: tiles"):
        guard.compensate(ctx)
    guard.compensate(MemoryContext(memo=ctx.memo, options={"accept_data_loss": True}))


def test_reads_do_not_count_as_writes(postgres: PostgresServer) -> None:
    db = postgres.create_database()
    guard, ctx = _guarded("postgresql", db.endpoint, db.sql)
    db.sql("SELECT * FROM tiles FOR UPDATE")
    db.sql("VACUUM ANALYZE tiles")
    guard.compensate(ctx)
