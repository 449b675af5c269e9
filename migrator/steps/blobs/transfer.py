"""The shared transfer of the three copying kinds: check, plan, apply (copy what differs), compensate.

Within one attempt each container is listed once. ``check`` lists both sides at the same time and keeps what it
read; ``plan``/``apply`` work from that; ``verify`` reads back only what ``apply`` wrote or deleted (see
:mod:`~migrator.steps.blobs.verify`). A new attempt (a retry, a resume) reads afresh. What one attempt learnt is an
:class:`Attempt`, passed from check to apply to verify explicitly; the kinds find the one of their context in the
run's :class:`Attempts`.

Only blobs that differ are copied, ``concurrency`` at a time, by the copy engine
(:class:`~migrator.providers.blob.copy.BlobCopier`). Each finished blob is recorded in ``ctx.items``; a resumed
step skips recorded blobs whose source is unchanged, and the inventory diff skips everything else that is already
in place, so no completed blob is sent twice.

Deletions: a source blob gone by the time it is read (deleted or renamed after the listing) is a deletion, not an
error: it is recorded ("vanished") and the step goes on. ``blobs.sync`` removes what the source lost from its
destination and, with ``also_delete_from``, from the container filled from that destination (the live
container): it knows exactly which blobs the source lost (its destination, the backup, holds only what the
migration copied there from the source), so nothing the migration never had is deleted there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from migrator.errors import Cancelled, MigratorError, TransientError, is_retryable
from migrator.estimator import rates
from migrator.providers.blob import BlobInfo, BlobStore, open_blob_store
from migrator.providers.blob.copy import BlobCopier, CopyResult
from migrator.secrets import blob_label
from migrator.step import ItemRecord, PlanResult, StepContext
from migrator.steps.blobs.attempt import Attempt, left_in_also
from migrator.steps.blobs.estimates import ListingSides, note_kept, planned_holdings, reused_in_run, transfer_estimate
from migrator.steps.blobs.inventory import (
    Compact,
    Diff,
    Survey,
    also_store,
    b64,
    check_names_fit,
    compact,
    diff_listings,
    open_pair,
    same_content,
    survey,
)
from migrator.steps.blobs.params import MiB, TransferParams
from migrator.steps.blobs.reuse import inventory_cache, peek

# -- progress -------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Blobs and bytes done, rate and ETA, reported through ``ctx.progress`` at most once a second."""

    ctx: StepContext
    label: str
    total_blobs: int | None = None
    total_bytes: int | None = None
    blobs: int = 0
    bytes: int = 0
    bytes_sent: int = 0
    server_side: int = 0
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *, blobs: int = 0, bytes: int = 0, sent: int = 0, server_side: int = 0) -> None:
        with self._lock:
            self.blobs += blobs
            self.bytes += bytes
            self.bytes_sent += sent
            self.server_side += server_side
            now = time.monotonic()
            if now - self._last < 1.0:
                return
            self._last = now
        self.report()

    def message(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate_b, rate_n = self.bytes / elapsed, self.blobs / elapsed
        text = f"{self.label}: {self.blobs}"
        text += f"/{self.total_blobs} blobs" if self.total_blobs is not None else " blobs"
        text += f", {self.bytes / MiB:.1f}"
        text += f"/{self.total_bytes / MiB:.1f} MiB" if self.total_bytes is not None else " MiB"
        text += f", {rate_n:.0f} blobs/s"
        if self.bytes_sent:
            # a transfer rate of the bytes this process sent: a server-side copy sends none (the storage service
            # copies it), and its size over the time of a request is no rate at all
            text += f", {self.bytes_sent / elapsed / MiB:.1f} MiB/s"
        if self.total_blobs is not None and self.total_bytes is not None and (rate_b > 0 or rate_n > 0):
            left_n = (self.total_blobs - self.blobs) / rate_n if rate_n else 0.0
            left_b = (self.total_bytes - self.bytes) / rate_b if rate_b else 0.0
            text += f", ETA {max(left_n, left_b):.0f} s"
        return text

    def report(self) -> None:
        self.ctx.progress(self.message())


def _finished_earlier(src: BlobStore, record: ItemRecord | None, info: BlobInfo, have: Compact | None) -> bool:
    """Whether an earlier attempt of this step copied ``info`` and the source has not changed since, although
    the inventory diff alone cannot tell (a source without MD5 whose copy is from the same second).

    A source with version tokens never needs this: a copy whose recorded version is current is unchanged for
    the diff already, and one without (or with another) may be of other content of the same size.
    """
    if record is None or have is None or src.reports_versions:
        return False
    if not (record.bytes == info.size == have.size and b64(have.md5) == record.checksum):
        return False
    return info.md5 is None or b64(info.md5) == record.checksum


def transfer(ctx: StepContext, params: TransferParams, *, label: str,
             extra: Literal["delete", "keep"] = "keep", attempt: Attempt | None = None) -> dict[str, Any]:
    """Copies what differs from source to destination; returns the step outputs.

    With a :class:`Survey` from this attempt's check (in ``attempt``) it works from that; otherwise it lists
    both sides itself (or takes what the attempt holds of the run's kept inventories), streaming the source.
    Either way ``attempt`` ends up holding the source inventory, the destination's, and what was written and
    deleted, for verify.
    """
    run = _Transfer(ctx, params, label, extra, attempt if attempt is not None else Attempt())
    try:
        run.copy_what_differs()
        run.delete_what_the_source_lost()
    finally:
        run.close()
    return run.outputs()


class _Transfer:
    """One attempt of a transfer: the blobs it reads, the copies and deletions it submits to its worker pool, and
    what they did. The pool's workers record each finished blob; the first error stops further submissions."""

    def __init__(self, ctx: StepContext, params: TransferParams, label: str, extra: Literal["delete", "keep"],
                 attempt: Attempt) -> None:
        self.ctx, self.params, self.extra, self.attempt = ctx, params, extra, attempt
        self.seen = attempt.survey
        attempt.survey = None
        self.src, self.dst = open_pair(ctx, params, confirm=self.seen is None)
        check_names_fit(ctx, self.src, self.dst, iter(self.seen.source) if self.seen is not None else None)
        self.done_before = {r.key: r for r in ctx.items.iter("done")}
        self.diff = Diff()
        self.progress = Progress(ctx, label)
        self.copier = BlobCopier(params, self.src, self.dst, raise_if_cancelled=ctx.raise_if_cancelled,
                                 sleep=ctx.clock.sleep)
        self.slots = threading.BoundedSemaphore(params.concurrency * 2)
        self.errors: list[BaseException] = []
        self.skipped_by_checkpoint = 0
        self.pool = ThreadPoolExecutor(params.concurrency, thread_name_prefix="blob-copy")
        self.source: dict[str, Compact] = {}
        self.written: dict[str, CopyResult] = {}
        self.vanished: list[str] = []
        attempt.written, attempt.deleted, attempt.also_deleted = self.written, [], []
        self.from_cache = attempt.reuse().source_inventory() is not None
        self.also = also_store(ctx, params)
        self.deleting = False

    # -- read and diff ------------------------------------------------------------------------------------------

    def listed(self) -> Iterator[tuple[BlobInfo, Compact | None]]:
        """Source blobs not already in place, each with what the destination has of it."""
        if self.seen is not None:
            yield from self._surveyed(self.seen)
            return
        attempt = self.attempt
        reuse = attempt.reuse()
        listings = diff_listings(self.src, self.dst, reuse)
        inventory = attempt.destination = listings.destination()
        attempt.dst_listed = len(inventory)
        attempt.dst_metadata = reuse.destination_metadata(self.src)
        for info in listings.source:
            have = inventory.get(info.name)
            self.source[info.name] = compact(info)
            if have is not None and same_content(info, have):
                self.diff.unchanged += 1
                continue
            yield info, have

    def _surveyed(self, seen: Survey) -> Iterator[tuple[BlobInfo, Compact | None]]:
        """What this attempt's check read: taken over as it is."""
        self.diff.unchanged = seen.unchanged
        self.attempt.dst_listed = seen.dst_listed
        self.attempt.destination = seen.destination
        self.source.update(seen.source)
        yield from seen.pending

    # -- act ----------------------------------------------------------------------------------------------------

    def copy_what_differs(self) -> None:
        """Submits a copy of each listed blob an earlier attempt did not already finish; then knows the totals."""
        for info, have in self.listed():
            self.ctx.raise_if_cancelled()
            if self.errors:
                break
            if _finished_earlier(self.src, self.done_before.get(info.name), info, have):
                self.skipped_by_checkpoint += 1
                continue
            self.diff.to_copy += 1
            self.diff.to_copy_bytes += info.size
            self.slots.acquire()
            self.pool.submit(self._copy, info, have)
        self.progress.total_blobs = self.diff.to_copy
        self.progress.total_bytes = self.diff.to_copy_bytes
        self.ctx.items.set_total(items=self.diff.to_copy, bytes=self.diff.to_copy_bytes)

    def delete_what_the_source_lost(self) -> None:
        """With ``extra == "delete"``, submits the deletion of each destination blob without a source; then, with
        ``also_delete_from``, of what the source lost that the live container still holds."""
        attempt = self.attempt
        self.diff.extra = self.seen.extra if self.seen is not None \
            else sorted((attempt.destination or {}).keys() - self.source.keys())
        self.deleting = bool(self.diff.extra) and self.extra == "delete" and not self.errors
        if self.deleting:
            self._submit_removals(self.diff.extra, everywhere=True)
        if self.also is not None and not self.errors:
            if attempt.also_left is None:
                attempt.also_left = left_in_also(self.ctx, self.params, self.also, attempt,
                                                 {*self.diff.extra, *attempt.also_deleted})
            self._submit_removals(attempt.also_left, everywhere=False)

    def _submit_removals(self, names: list[str], *, everywhere: bool) -> None:
        for name in names:
            self.ctx.raise_if_cancelled()
            if self.errors:
                break
            self.slots.acquire()
            self.pool.submit(self._remove, name, everywhere)

    def _copy(self, info: BlobInfo, have: Compact | None) -> None:
        try:
            if self.errors:
                return
            try:
                result = self.copier.copy(info)
            except Exception as exc:
                if self.from_cache or not _gone_from(self.src, info.name, exc):
                    raise
                self._gone(info.name, have)
                return
            self.written[info.name] = result
            self.ctx.items.record(info.name, "done", bytes=info.size, checksum=b64(result.md5),
                                  detail={"created": have is None, "server_side": result.server_side,
                                          "resumed_blocks": result.resumed_blocks})
            self.progress.add(blobs=1, bytes=info.size, sent=result.sent, server_side=int(result.server_side))
        except BaseException as exc:
            self.errors.append(_stale_source(self.ctx, self.src, info, exc) if self.from_cache else exc)
        finally:
            self.slots.release()

    def _gone(self, name: str, have: Compact | None) -> None:
        """A source blob listed a moment ago and gone when read (deleted or renamed meanwhile): a deletion, not an
        error. A step that removes what the source lost removes its copy; any other records it and goes on (the
        next delta sync removes the copy, if there is one)."""
        self.vanished.append(name)
        if self.extra == "delete" and have is not None:
            self._delete_everywhere(name)
            return
        earlier = self.done_before.get(name)
        created = earlier is not None and isinstance(earlier.detail, Mapping) and bool(earlier.detail.get("created"))
        self.ctx.items.record(name, "vanished", detail={"created": True} if created else None)

    def _delete_everywhere(self, name: str) -> None:
        """Deletes a blob the source lost: first where it was copied on from the destination (``also``), so that
        a stop between the two leaves the destination's copy for the next attempt's diff to find again."""
        if self.also is not None:
            self.also.delete(name)
            self.attempt.also_deleted.append(name)
        self.dst.delete(name)
        self.attempt.deleted.append(name)
        self.ctx.items.record(name, "deleted")

    def _remove(self, name: str, everywhere: bool = True) -> None:
        try:
            if self.errors:
                return
            if everywhere:
                self._delete_everywhere(name)
            elif self.also is not None:
                self.also.delete(name)
                self.attempt.also_deleted.append(name)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.slots.release()

    # -- finish -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Waits for the submitted work, and writes the last item records."""
        self.pool.shutdown(wait=True)
        self.copier.close()
        self.ctx.items.flush()

    def outputs(self) -> dict[str, Any]:
        """After :meth:`close`: the first error, if any; else the attempt's source inventory, the events of what
        was not copied, and the step outputs."""
        ctx, diff, progress, vanished = self.ctx, self.diff, self.progress, self.vanished
        if self.errors:
            raise _first_error(self.errors)
        ctx.raise_if_cancelled()
        for name in vanished:
            self.source.pop(name, None)
        self.attempt.source = self.source
        if vanished:
            ctx.event("blobs.vanished", f"{len(vanished)} source blob(s) were gone when read (deleted or renamed "
                                        "since they were listed): taken as deleted", count=len(vanished))
        if diff.extra and not self.deleting:
            ctx.event("blobs.extra", f"{len(diff.extra)} blob(s) in {self.dst.describe()} have no source; kept",
                      count=len(diff.extra))
        progress.report()
        return {
            "count": diff.unchanged + diff.to_copy + self.skipped_by_checkpoint - len(vanished),
            "copied": progress.blobs,
            "bytes_copied": progress.bytes,
            "bytes_sent": progress.bytes_sent,
            "server_side": progress.server_side,
            "unchanged": diff.unchanged + self.skipped_by_checkpoint,
            "deleted": len(self.attempt.deleted),
            "also_deleted": len(self.attempt.also_deleted),
            "vanished": len(vanished),
            "kept_without_source": len(diff.extra) if self.extra == "keep" else 0,
        }


def _gone_from(src: BlobStore, name: str, exc: Exception) -> bool:
    """Whether a copy failed because its source blob is gone since it was listed: the error is not worth a retry
    and the source no longer has the blob."""
    if is_retryable(exc) or isinstance(exc, Cancelled):
        return False
    try:
        return src.info(name) is None
    except Exception:
        return False


class StaleInventory(TransientError):
    """A copy source is not as the inventory kept from an earlier step had it: something outside this run changed
    the container. Retried by the step, whose next attempt lists again."""


def _stale_source(ctx: StepContext, src: BlobStore, info: BlobInfo, exc: BaseException) -> BaseException:
    """``exc`` of a copy whose source blob came from a kept inventory: a :class:`StaleInventory` when the blob is
    gone or differs now (the attempt fails and its retry lists the source), else ``exc`` itself."""
    if not isinstance(exc, Exception) or isinstance(exc, Cancelled):
        return exc
    try:
        now = src.info(info.name)
    except Exception:
        return exc
    if now is not None and now.size == info.size and now.md5 == info.md5:
        return exc
    stale = StaleInventory(f"blob {blob_label(info.name)} is "
                           f"{'gone from' if now is None else 'not the same in'} {src.describe()} since an earlier "
                           f"step of this run listed it (changed outside the run)",
                           hint="the step is tried again and lists the container afresh")
    stale.__cause__ = exc
    return stale


def _first_error(errors: list[BaseException]) -> BaseException:
    # A permanent error explains more than the transient ones it may have caused in sibling workers.
    for exc in errors:
        if isinstance(exc, MigratorError) and not exc.retryable:
            return exc
    return errors[0]


def plan_transfer(ctx: StepContext, params: TransferParams, *, extra: str, what: str,
                  seen: Survey | None = None) -> PlanResult:
    """What a transfer would do: from ``seen`` (what check just read) when given, else from fresh listings (or the
    inventories the run process keeps, for a plan inside a run)."""
    src, dst = open_pair(ctx, params, confirm=seen is None)
    check_names_fit(ctx, src, dst, iter(seen.source) if seen is not None else None)
    if seen is None:
        seen = survey(ctx, src, dst, limit=None, reuse=peek(ctx, params, src, dst))
        assert seen is not None
    diff = Diff(to_copy=seen.to_copy, to_copy_bytes=seen.to_copy_bytes, unchanged=seen.unchanged, extra=seen.extra)
    source = seen.source
    sides = ListingSides(src_kind=params.source.kind, src_count=len(source), src_seconds=seen.src_seconds,
                         dst_kind=params.destination.kind, dst_count=seen.dst_listed, dst_seconds=seen.dst_seconds)
    will_hold = planned_holdings(ctx).get(params.source.cache_key())
    done_now = not diff.to_copy and not (diff.extra and extra == "delete")  # what check finds now
    estimate, diff, projected = transfer_estimate(params, diff, sides, source, will_hold,
                                                  reused=reused_in_run(ctx, params, src, dst), rates=rates(ctx))
    # What the destination holds once this step ran, for the steps after it that read it (a put live from the
    # backup this presync fills), and that the run keeps its inventory for them.
    planned_holdings(ctx)[params.destination.cache_key()] = projected
    note_kept(ctx, params, src, dst)
    changes = []
    if diff.to_copy:
        changes.append(f"copy {diff.to_copy} blob(s), {diff.to_copy_bytes} bytes, from {src.describe()} to "
                       f"{dst.describe()}")
    if diff.extra and extra == "delete":
        also = also_store(ctx, params)
        changes.append(f"delete {len(diff.extra)} blob(s) from {dst.describe()} that are gone at the source"
                       + (f", and from {also.describe()} where it has them" if also is not None else ""))
    details: dict[str, Any] = {"unchanged": diff.unchanged, "to_copy": diff.to_copy, "extra": len(diff.extra)}
    if done_now:
        # The dry-run counts a step its check finds done as free, yet the run checks it again, and an earlier step
        # may still give it work (a presync filling its source): what the run spends on it.
        details["run_seconds"] = estimate.seconds
    if not changes:
        result = PlanResult.nothing(f"{what}: all {diff.unchanged} blob(s) already in place", **details)
        # Nothing to copy, yet the run lists both sides (check).
        result.estimate = estimate
        if diff.extra:
            result.reason += f"; {len(diff.extra)} destination blob(s) without a source are kept"
        return result
    return PlanResult(changes=changes, reason=f"{what}: {diff.unchanged} blob(s) already in place",
                      estimate=estimate, details=details)


def compensate_transfer(ctx: StepContext, params: TransferParams) -> None:
    """Deletes the blobs this run created at the destination; overwritten or deleted ones cannot come back."""
    dst = open_blob_store(params.destination, ctx, concurrency=params.concurrency)
    identity = dst.inventory_identity()
    if identity is not None:
        inventory_cache(ctx).drop(identity)  # what the run kept of it is about to be wrong
    removed = 0
    not_undone = 0
    for record in ctx.items.iter(None):
        # A copy this run created and whose source vanished later is still this run's (kept as "vanished").
        if record.status in ("done", "vanished") and isinstance(record.detail, Mapping) \
                and record.detail.get("created"):
            dst.delete(record.key)
            ctx.items.record(record.key, "compensated")
            removed += 1
        elif record.status in ("done", "deleted"):
            not_undone += 1
    ctx.items.flush()
    ctx.event("blobs.compensated", f"removed {removed} blob(s) this run created in {dst.describe()}",
              removed=removed, not_undone=not_undone)
    if not_undone:
        ctx.log.warning("%d blob(s) were overwritten or deleted in %s and cannot be restored; the source still "
                        "holds them", not_undone, dst.describe())
