"""The four blob step kinds: read the facts (both inventories), diff, act; the rest is in the modules beside."""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal, TypeVar

from migrator.errors import VerificationFailed
from migrator.estimator import rates
from migrator.providers.blob import BlobStore
from migrator.step import CheckResult, PlanResult, Step, StepContext
from migrator.steps.blobs.attempt import attempts, check_transfer
from migrator.steps.blobs.estimates import verify_estimate, verify_reuses
from migrator.steps.blobs.inventory import Compact, destination_inventory, open_pair
from migrator.steps.blobs.params import PresyncParams, PutLiveParams, SyncParams, TransferParams, VerifyParams
from migrator.steps.blobs.reuse import kept_destination
from migrator.steps.blobs.transfer import compensate_transfer, plan_transfer, transfer
from migrator.steps.blobs.verify import compare_inventories, verify_attempt

TP = TypeVar("TP", bound=TransferParams)


class _TransferStep(Step[TP]):
    """What the three copying kinds share: check, plan and apply over :func:`transfer`, one attempt at a time (the
    context's :class:`~migrator.steps.blobs.attempt.Attempt`, passed explicitly)."""

    label: ClassVar[str]

    def _extra(self) -> Literal["delete", "keep"]:
        return "keep"

    def check(self, ctx: StepContext) -> CheckResult:
        attempt, before = attempts(ctx).begin(ctx)
        if before is not None:
            # Whatever the attempt before took from the run's cache and did not settle (it failed) is let go, so
            # this one lists what it cannot trust.
            before.abandon(ctx)
        return check_transfer(ctx, self.params, extra=self._extra(), attempt=attempt)

    def plan(self, ctx: StepContext) -> PlanResult:
        seen = attempts(ctx).end(ctx).survey
        return plan_transfer(ctx, self.params, extra=self._extra(), what=self.label, seen=seen)

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        return transfer(ctx, self.params, label=self.label, extra=self._extra(), attempt=attempts(ctx).current(ctx))

    def _differ(self) -> str:
        """How a failed verify begins, after the step id."""
        raise NotImplementedError

    def verify(self, ctx: StepContext) -> None:
        attempt = attempts(ctx).current(ctx)
        problems = verify_attempt(ctx, self.params, attempt, extra=self._extra())
        if problems:
            # Worth a retry (which lists both sides) when the attempt worked from a kept inventory, since an outside
            # change to it would look just like this; its claims stay unsettled: the next check lets go of them.
            raise VerificationFailed(f"{self.step_id}: {self._differ()}: " + "; ".join(problems)
                                     + ("; the step lists both sides again on retry" if attempt.reused else ""),
                                     step_id=self.step_id, retryable=attempt.reused)
        # Passed: the attempt leaves what it knows of its containers for the steps after it.
        attempts(ctx).end(ctx).settle(ctx)

    def compensate(self, ctx: StepContext) -> None:
        compensate_transfer(ctx, self.params)


class Presync(_TransferStep[PresyncParams]):
    """Copies every source blob to the cloud backup container while the tenant is still live.

    Changes: writes blobs into the destination container (never deletes).
    Done when: every source blob is at the destination with the same size and MD5 (or, for a source without
    MD5, a copy that recorded the source's current version, or else written after the source last changed);
    per-blob checkpoints make a resume skip finished blobs and uncommitted blocks make a large blob resume where
    it stopped. Verify reads back what this attempt copied, or lists the destination once when that is many.
    A source blob gone between the listing and the read (the tenant is live: deleted or renamed meanwhile) is
    recorded as vanished and left to the delta sync, which removes what the source lost.
    Undone by: deleting the blobs this run created at the destination.
    """

    kind = "blobs.presync"
    Params = PresyncParams
    summary = "copy every blob to the cloud backup container while the tenant is live"
    label = "presync"

    def _differ(self) -> str:
        # The tenant is live, so blobs may have appeared or gone since check listed the source: verify proves
        # what this attempt copied (and what check found in place), against that listing, not more.
        return f"copied blob(s) are missing or differ at {self.params.destination.describe()}"


class Sync(_TransferStep[SyncParams]):
    """Copies blobs that are new or changed since the last sync, and handles blobs deleted at the source.

    Changes: writes new and changed blobs into the destination; deletes destination blobs whose source is
    gone (or keeps and reports them, ``on_source_deleted: keep``), and with ``also_delete_from`` deletes each of
    those from that container too (first there, then at the destination, then the checkpoint: a stop anywhere
    leaves the destination's copy for the next diff, or the checkpoint for the next check). A source blob gone
    between the listing and the read (deleted or renamed meanwhile) counts as deleted.
    Done when: the destination inventory equals the source's (names, sizes, MD5), and no blob this step deleted
    at the destination is left in ``also_delete_from``.
    Undone by: deleting the blobs this run created; overwritten and deleted blobs stay as they are (the
    source still has them, or lost them).
    """

    kind = "blobs.sync"
    Params = SyncParams
    summary = "copy blobs added or changed since the presync; remove those deleted at the source"
    label = "delta sync"

    def _extra(self) -> Literal["delete", "keep"]:
        return self.params.on_source_deleted

    def _differ(self) -> str:
        return "source and destination differ"


class PutLive(_TransferStep[PutLiveParams]):
    """Puts the backup live: server-side copies from the backup container into the new instance's container.

    Changes: writes blobs into the live container (``start_copy_from_url``, polling the copy status; streamed
    where the backup is not reachable by URL); deletes blobs the backup lacks only with ``delete_extra``.
    Done when: every backup blob is in the live container with the same size and MD5.
    Undone by: deleting the blobs this run created in the live container.
    """

    kind = "blobs.put_live"
    Params = PutLiveParams
    summary = "server-side copy of the backup container into the new instance's live container"
    label = "put live"

    def _extra(self) -> Literal["delete", "keep"]:
        return "delete" if self.params.delete_extra else "keep"

    def _differ(self) -> str:
        return "backup and live container differ"


class Verify(Step[VerifyParams]):
    """Compares source and destination inventories (names, sizes, MD5, and content type and metadata).

    Changes: nothing; it only reads: both listings, side by side (never an inventory an earlier step kept: this is
    the end-to-end proof), and the content of a source blob without a stored MD5 unless its copy recorded the
    version it was read from and the source still has it (``rehash``).
    Done when: the inventories match; otherwise it fails naming the differences.
    Undone by: nothing to undo.
    """

    kind = "blobs.verify"
    Params = VerifyParams
    summary = "compare source and destination blob inventories by name, size and MD5"

    def check(self, ctx: StepContext) -> CheckResult:
        return CheckResult(False, "verification always runs")

    def plan(self, ctx: StepContext) -> PlanResult:
        src, dst = open_pair(ctx, self.params)
        # Changes nothing, yet takes time: both listings, and hashing where the MD5 is not known otherwise.
        # Each side timed on its own here (the run lists them side by side).
        started = time.perf_counter()
        listed = list(src.list(metadata=self.params.compare_properties))
        src_seconds = time.perf_counter() - started
        started = time.perf_counter()
        have = destination_inventory(dst, metadata=src.reports_versions)
        dst_seconds = time.perf_counter() - started
        # Never a no-op, which the plan would show as "done" before anything ran: it is work the run will do.
        compare = f"compare {self.params.source.describe()} with {self.params.destination.describe()} (reads only)"
        result = PlanResult(changes=[compare], reason=f"read-only: compares {self.params.source.describe()} with "
                                                      f"{self.params.destination.describe()}")
        result.estimate = verify_estimate(ctx, self.params, src, listed, src_seconds, have, dst_seconds,
                                          rates(ctx), kept=verify_reuses(ctx, self.params, src, dst))
        result.details = {"run_seconds": result.estimate.seconds}
        return result

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        kept: list[bool] = []

        def destination(src: BlobStore, dst: BlobStore) -> dict[str, Compact] | None:
            found = kept_destination(ctx, self.params, src, dst)
            kept.append(found is not None)
            return found

        problems = compare_inventories(ctx, self.params, md5=self.params.compare_md5,
                                       properties=self.params.compare_properties, rehash=self.params.rehash,
                                       destination=destination)
        if problems:
            raise VerificationFailed(f"{self.step_id}: inventories differ: " + "; ".join(problems),
                                     step_id=self.step_id)
        # How the destination was proven: listed now, or by the inventory the steps before kept (reuse_listing).
        return {"identical": True, "destination": "kept" if any(kept) else "listed"}

    def verify(self, ctx: StepContext) -> None:
        return None
