"""database.write_guard on PostgreSQL: any write after the cutover — insert, update (even to the same value),
delete — makes the rollback refuse; no write, or --accept-data-loss, lets it through."""

from __future__ import annotations

import pytest

from migrator.errors import CompensationRefused
from migrator.steps.cutover import WriteGuard
from migrator.testing import MemoryContext
from tests.support.postgres import PostgresServer, ScratchDatabase

pytestmark = pytest.mark.integration

WRITES = {
    "insert": "INSERT INTO tiles VALUES (4, 'new')",
    "update to the same value": "UPDATE tiles SET title = 'two' WHERE id = 2",
    "delete": "DELETE FROM tiles WHERE id = 3",
}


def _guarded(db: ScratchDatabase) -> tuple[WriteGuard, MemoryContext]:
    db.sql("CREATE TABLE tiles (id integer PRIMARY KEY, title text)")
    db.sql("INSERT INTO tiles VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    db.sql("CREATE TABLE settings (name text, value text)")  # no primary key
    guard = WriteGuard("cutover_guard", WriteGuard.Params.model_validate({"database": db.endpoint}))
    ctx = MemoryContext()
    out = guard.apply(ctx)
    assert out is not None and out["tables"] == 2
    assert all("token" in kept for kept in ctx.memo.get("fingerprints").values())
    return guard, ctx


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_write_after_cutover_makes_the_rollback_refuse(write: str, postgres: PostgresServer) -> None:
    db = postgres.create_database()
    guard, ctx = _guarded(db)
    guard.compensate(ctx)  # nothing written yet: passes
    db.sql(WRITES[write])
    with pytest.raises(CompensationRefused, match="tables: tiles"):
        guard.compensate(ctx)
    guard.compensate(MemoryContext(memo=ctx.memo, options={"accept_data_loss": True}))


def test_reads_do_not_count_as_writes(postgres: PostgresServer) -> None:
    db = postgres.create_database()
    guard, ctx = _guarded(db)
    db.sql("SELECT * FROM tiles FOR UPDATE")
    db.sql("VACUUM ANALYZE tiles")
    guard.compensate(ctx)
