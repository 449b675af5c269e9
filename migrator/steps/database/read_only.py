"""``database.read_only``: the source database's read-only switch for the migration window."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from migrator.errors import VerificationFailed
from migrator.estimator import Work, estimate, rates
from migrator.providers.database import DatabaseEndpoint
from migrator.step import CheckResult, Params, PlanResult, Step, StepContext
from migrator.steps.database.common import connected


class ReadOnlyParams(Params):
    database: DatabaseEndpoint
    #: Seconds open transactions get before the switch rolls them back, where the engine's switch waits for them
    #: (SQL Server: ``WITH ROLLBACK AFTER n SECONDS``; 0 rolls them back at once). Default 30.
    grace_seconds: int | None = Field(default=None, ge=0, le=3600)


class ReadOnly(Step[ReadOnlyParams]):
    """Switches the source database to read-only for the migration window.

    Changes: SQL Server ``ALTER DATABASE … SET READ_ONLY WITH ROLLBACK AFTER n SECONDS`` (``grace_seconds``); PostgreSQL
    ``default_transaction_read_only = on`` for the database, then ends its other sessions; SQLite aborting
    ``BEFORE INSERT/UPDATE/DELETE`` triggers on every table (it has no database-level switch).
    Done when: the switch is on and a write probe from a new session is rejected.
    Undone: switched off again, unless it was already on before this run.
    """

    kind = "database.read_only"
    Params = ReadOnlyParams
    summary = "switch a database to read-only (write probe proves it); rollback switches it back"

    def check(self, ctx: StepContext) -> CheckResult:
        with connected(self.params.database, ctx) as db:
            if not db.read_only():
                return CheckResult(False, f"{db.describe()} is writable")
            refusal = db.write_probe()
            if refusal is None:
                return CheckResult(False, f"{db.describe()} is marked read-only but a write probe was accepted")
            return CheckResult(True, f"{db.describe()} is read-only (write probe refused)")

    def plan(self, ctx: StepContext) -> PlanResult:
        state = self.check(ctx)
        if state.done:
            return PlanResult.nothing(state.reason)
        with connected(self.params.database, ctx) as db:
            cut = db.sessions_cut()
        cuts = f" ({cut} other session{'s' if cut != 1 else ''} open now: their transactions are rolled back)" \
            if cut is not None else ""
        return PlanResult([f"switch {self.params.database.describe()} to read-only{cuts}"], state.reason,
                          estimate(Work(note="one ALTER and ending open sessions").add("db.read_only", 1),
                                   rates(ctx)))

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        with connected(self.params.database, ctx) as db:
            if ctx.memo.get("was_read_only") is None:
                ctx.memo.set("was_read_only", db.read_only())
            db.set_read_only(True, grace_seconds=self.params.grace_seconds)
            ctx.event("database.read_only", f"{db.describe()} switched to read-only")
            return {"database": db.describe(), "read_only": True}

    def verify(self, ctx: StepContext) -> None:
        with connected(self.params.database, ctx) as db:
            if db.write_probe() is None:
                raise VerificationFailed(f"{db.describe()}: a write was accepted after switching to read-only",
                                         step_id=self.step_id)

    def compensate(self, ctx: StepContext) -> None:
        if ctx.memo.get("was_read_only"):
            return
        with connected(self.params.database, ctx) as db:
            db.set_read_only(False, grace_seconds=self.params.grace_seconds)
            ctx.event("database.read_write", f"{db.describe()} switched back to read-write")
