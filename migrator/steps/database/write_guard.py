"""``database.write_guard``, the cutover guard: once the new instance is live, a rollback must not silently
throw away its writes.

``database.write_guard`` stands right before the DNS transfer: it fingerprints the new instance's database while
no user can reach it yet, so no write can slip in before the baseline (a runner killed between the switch and
the baseline would otherwise take it after users wrote). Before a rollback undoes anything, the runner asks
every applied step whether it may (:meth:`~migrator.step.Step.guard_rollback`): the guard fingerprints again
and refuses while anything changed, unless the engineer says ``--accept-data-loss`` — so DNS is never switched
back over writes that would be lost.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from migrator.errors import CompensationRefused
from migrator.estimator import Work, estimate, rates
from migrator.providers.database import DatabaseEndpoint
from migrator.step import CheckResult, Params, PlanResult, Step, StepContext
from migrator.steps.database.common import connected, fingerprint, measure_target


class WriteGuardParams(Params):
    #: The new instance's database, as it is live after the cutover.
    database: DatabaseEndpoint
    #: Only these tables (default: all).
    tables: list[str] | None = None


def _fingerprints(params: WriteGuardParams, ctx: StepContext) -> dict[str, Any]:
    """Per table, what changes when the table takes a write: the engine's change token where it has one (no
    row content read: PostgreSQL's row versions), else the content fingerprint."""
    with connected(params.database, ctx) as db:
        tables = [t for t in db.tables() if params.tables is None or t.name in params.tables]
        prints: dict[str, Any] = {}
        for table in sorted(tables, key=lambda t: t.name):
            token = db.change_token(table.name)
            prints[table.name] = {"token": token} if token is not None else fingerprint(db, table).as_dict()
        return prints


def _digest(prints: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(prints, sort_keys=True).encode()).hexdigest()


class WriteGuard(Step[WriteGuardParams]):
    """Fingerprints the new instance's database before cutover, so a later rollback can tell if it took writes.

    Changes: nothing (reads only); keeps, per table, a change token (PostgreSQL: row count and the sum and
    maximum of the row versions' transaction ids — no row content read) or else a content fingerprint, in the
    step's memo. Done when: the fingerprints of this run are kept. Undone by: a check, not a change — rollback
    refuses, before it undoes any step, while the database differs from the kept fingerprints (the new
    instance took writes that a rollback would lose), unless the command has ``--accept-data-loss``. Stand it
    before the DNS transfer: its baseline must be taken while users cannot reach the new instance.
    """

    kind = "database.write_guard"
    Params = WriteGuardParams
    summary = "after cutover: refuse a rollback that would lose writes the new instance took, unless told"

    def check(self, ctx: StepContext) -> CheckResult:
        kept = ctx.memo.get("fingerprints")
        if kept is None:
            return CheckResult(False, "no fingerprints kept yet")
        return CheckResult(True, "fingerprints kept at cutover", {"fingerprint": _digest(kept)})

    def plan(self, ctx: StepContext) -> PlanResult:
        # A connection, the catalog, one aggregate per table (a change token, which reads no row content, where
        # the engine has one); before the restore the target holds nothing to measure but the connection and a
        # catalog read, so the tables' reads are counted as two more catalog reads.
        target = measure_target(self.params.database, ctx)
        return PlanResult([f"fingerprint {self.params.database.describe()} at cutover"], "",
                          estimate(Work(samples=target.samples(), note=f"one read of every table; {target.basis()}")
                                   .add("db.target.connect", 1).add("db.target.catalog", 3), rates(ctx)))

    def apply(self, ctx: StepContext) -> Mapping[str, Any] | None:
        prints = _fingerprints(self.params, ctx)
        ctx.memo.set("fingerprints", prints)
        return {"fingerprint": _digest(prints), "tables": len(prints)}

    def guard_rollback(self, ctx: StepContext) -> None:
        self.compensate(ctx)

    def compensate(self, ctx: StepContext) -> None:
        kept = ctx.memo.get("fingerprints")
        if kept is None:
            return
        now = _fingerprints(self.params, ctx)
        changed = sorted(name for name in set(kept) | set(now) if kept.get(name) != now.get(name))
        if not changed:
            return
        if ctx.options.get("accept_data_loss"):
            ctx.event("data_loss.accepted", f"rolling back although the new instance took writes in "
                                            f"{', '.join(changed)} since cutover (--accept-data-loss)")
            return
        raise CompensationRefused(
            f"the new instance {self.params.database.describe()} took writes since cutover (tables: "
            f"{', '.join(changed)}); rolling back would lose them",
            hint=f"to roll back anyway: migrator rollback {ctx.run_id} --accept-data-loss")
