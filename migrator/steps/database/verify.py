"""``database.verify``: every table's row count and content fingerprint against a database or a backup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import model_validator

from migrator.errors import PreconditionFailed, VerificationFailed
from migrator.estimator import Work, estimate, rates
from migrator.providers.blob import BlobEndpoint, open_blob_store
from migrator.providers.database import (
    DatabaseEndpoint,
    Table,
)
from migrator.providers.database.backup import (
    read_manifest,
)
from migrator.step import Estimate, Params, PlanResult, Step, StepContext
from migrator.steps.database.common import (
    connected,
    fingerprint,
    measure_target,
    selected_tables,
    source_profile,
)


class VerifyParams(Params):
    database: DatabaseEndpoint
    #: The reference: another database (compared live), or a backup (its manifest's fingerprints).
    source: DatabaseEndpoint | None = None
    backup: BlobEndpoint | None = None
    tables: list[str] | None = None

    @model_validator(mode="after")
    def _one_reference(self) -> VerifyParams:
        if (self.source is None) == (self.backup is None):
            raise ValueError("give exactly one of `source` (a database) and `backup` (a backup location)")
        return self



class Verify(Step[VerifyParams]):
    """Compares every table of a database with its reference: row count and order-independent content checksum.

    Changes: nothing (reads only). Done when: always runs; its outputs are the fingerprints.
    Verified when: every table's fingerprint equals the reference's; a mismatch fails naming the tables.
    """

    kind = "database.verify"
    Params = VerifyParams
    summary = "row counts and content checksums of every table against a source database or backup"

    def plan(self, ctx: StepContext) -> PlanResult:
        # It changes nothing, yet it is work the run will do (both sides are read whole): never a no-op, which
        # the plan would show as "done" before anything ran.
        reason = f"reads {self.params.database.describe()} only; compares fingerprints"
        reference = self.params.source or self.params.backup
        assert reference is not None
        work = [f"compare every table of {self.params.database.describe()} with {reference.describe()} "
                "(reads only)"]
        target = measure_target(self.params.database, ctx)
        if self.params.source is None:
            return PlanResult(work, reason, Estimate(seconds=0.0))
        profile = source_profile(self.params.source, ctx, self.params.tables)
        c = profile.costs
        # Source: a connection, the catalog, every table read whole. Target: the same, rows at the rate the target
        # hands them over (the source's read rate until measured: before the restore it holds nothing to read).
        counted = Work(samples=[*profile.samples(), *target.samples()],
                       note=f"reads both sides whole: {profile.basis()}; {target.basis()}")
        counted.add("db.source.connect", 1).add("db.source.catalog", 1).add("db.source.count", len(c.tables))
        counted.add("db.source.read", c.total_rows)
        counted.add("db.target.connect", 1).add("db.target.catalog", 3).add("db.target.lookup", len(c.tables))
        counted.add("db.target.fetch", c.total_rows)
        return PlanResult(work, reason, estimate(counted, rates(ctx), items=len(c.tables)))

    def apply(self, ctx: StepContext) -> Mapping[str, Any]:
        expected: dict[str, dict[str, Any]] = {}
        references: list[Table] = []
        if self.params.backup is not None:
            manifest = read_manifest(open_blob_store(self.params.backup, ctx))
            if manifest is None:
                raise PreconditionFailed(f"no backup manifest in {self.params.backup.describe()}",
                                         step_id=self.step_id)
            references = selected_tables([t.table for t in manifest.tables], self.params.tables, "the backup")
            for t in manifest.tables:
                expected[t.table.name] = t.fingerprint.as_dict()
        else:
            assert self.params.source is not None
            with connected(self.params.source, ctx) as src:
                references = selected_tables(src.tables(), self.params.tables, src.describe())
                for table in references:
                    ctx.raise_if_cancelled()
                    expected[table.name] = fingerprint(src, table).as_dict()
        actual: dict[str, dict[str, Any]] = {}
        with connected(self.params.database, ctx) as db:
            present = {t.name: t for t in db.tables()}
            for table in references:
                ctx.raise_if_cancelled()
                target = present.get(table.name)
                if target is None:
                    actual[table.name] = {"rows": None, "checksum": None}
                    continue
                missing = [n for n in table.column_names if n not in target.column_names]
                if missing:
                    actual[table.name] = {"rows": None, "checksum": None, "missing_columns": missing}
                    continue
                actual[table.name] = fingerprint(db, table, target).as_dict()
        mismatches = sorted(n for n in actual if actual[n] != expected[n])
        ctx.memo.set("mismatches", mismatches)
        return {"tables": {n: {"expected": expected[n], "actual": actual[n]} for n in actual},
                "mismatches": mismatches}

    def verify(self, ctx: StepContext) -> None:
        mismatches = ctx.memo.get("mismatches")
        if mismatches is None:
            raise VerificationFailed("no fingerprints were computed", step_id=self.step_id)
        if mismatches:
            raise VerificationFailed(f"{self.params.database.describe()}: content differs from the reference in "
                                     f"table {', '.join(mismatches)}", step_id=self.step_id)
