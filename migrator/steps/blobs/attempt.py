"""One attempt of a transfer step: what its check read and took from the run's kept inventories, passed on to its
apply and verify, and given back (or dropped) at its end.

The runner gives a step one context for all its attempts, so the context names the attempt (:class:`Attempts`, a
run resource); nothing is kept on the step instance. ``check`` begins an attempt, ``plan`` and a passed ``verify``
end it; a failed attempt is let go by the next ``check``.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from migrator.providers.blob import BlobStore, run_resources
from migrator.providers.blob.copy import CopyResult
from migrator.resources import ResourceKey
from migrator.secrets import blob_label
from migrator.step import CheckResult, StepContext
from migrator.steps.blobs.inventory import (
    SURVEY_LIMIT,
    CachedInventory,
    Compact,
    Reuse,
    Survey,
    also_store,
    confirm_reachable,
    open_pair,
    survey,
)
from migrator.steps.blobs.params import TransferParams
from migrator.steps.blobs.reuse import Claim, inventory_cache, peek


@dataclass
class Attempt:
    """What one attempt of a transfer step learnt, passed from check to apply to verify."""

    survey: Survey | None = None
    source: dict[str, Compact] | None = None  # the source inventory apply worked from
    #: What apply wrote (name -> the copy) and deleted in this attempt; None until apply ran.
    written: dict[str, CopyResult] | None = None
    deleted: list[str] = field(default_factory=list)
    dst_listed: int = 0  # blobs in the destination listing this attempt worked from
    #: This attempt's holds on the run's inventory cache (taken in check, settled when verify passed).
    src_claim: Claim | None = None
    dst_claim: Claim | None = None
    keep: bool = False  # the destination's inventory is to be kept for later steps
    #: The destination inventory this attempt worked from, and whether it was listed with metadata.
    destination: dict[str, Compact] | None = None
    dst_metadata: bool = False
    reused: bool = False  # a side came from the cache instead of a listing
    #: What the destination holds once verify passed, to keep for later steps.
    remember: CachedInventory | None = None
    #: A sync with ``also_delete_from``: this attempt's hold on that container's kept inventory, the blobs it
    #: deleted there, and those an earlier run of the step deleted at the destination but left there (check).
    also_claim: Claim | None = None
    also_deleted: list[str] = field(default_factory=list)
    also_left: list[str] | None = None

    def reuse(self) -> Reuse:
        return Reuse(self.src_claim.entry if self.src_claim else None,
                     self.dst_claim.entry if self.dst_claim else None, keep=self.keep)

    def abandon(self, ctx: StepContext) -> None:
        """Lets go of what a failed (or superseded) attempt took from the cache."""
        for claim in (self.src_claim, self.dst_claim, self.also_claim):
            if claim is not None:
                inventory_cache(ctx).abandon(claim)

    def settle(self, ctx: StepContext) -> None:
        """The attempt passed: leaves the destination's inventory (and the borrowed source's) for later steps."""
        cache = inventory_cache(ctx)
        if self.src_claim is not None:
            cache.settle(self.src_claim, None)
        if self.dst_claim is not None:
            cache.settle(self.dst_claim, self.remember if self.keep else None)
        if self.also_claim is not None:
            # What was kept of the other container, less what this attempt deleted there (and proved gone).
            kept_there = self.also_claim.entry
            if kept_there is not None:
                for name in self.also_deleted:
                    kept_there.blobs.pop(name, None)
            cache.settle(self.also_claim, kept_there)


class Attempts:
    """The attempt in progress of each step context: check begins one, plan and a passed verify end it.

    The runner gives a step one context for all its attempts, so the context names the attempt; nothing is kept on
    the step instance. An entry goes with its context.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_context: dict[int, Attempt] = {}

    def begin(self, ctx: StepContext) -> tuple[Attempt, Attempt | None]:
        """A new attempt for ``ctx``, and the one it replaces (unsettled, if it failed)."""
        key, attempt = id(ctx), Attempt()
        with self._lock:
            before = self._by_context.get(key)
            self._by_context[key] = attempt
        if before is None:
            # A context that cannot be weakly referenced keeps its entry until it is replaced.
            with contextlib.suppress(TypeError):
                weakref.finalize(ctx, self._forget, key)
        return attempt, before

    def current(self, ctx: StepContext) -> Attempt:
        """The attempt ``ctx`` is in (an empty one when check did not run: a direct call)."""
        with self._lock:
            return self._by_context.get(id(ctx)) or Attempt()

    def end(self, ctx: StepContext) -> Attempt:
        """Ends the attempt ``ctx`` is in, and returns it."""
        with self._lock:
            return self._by_context.pop(id(ctx), None) or Attempt()

    def _forget(self, key: int) -> None:
        with self._lock:
            self._by_context.pop(key, None)


#: The run's resource holding the transfer steps' :class:`Attempts`.
ATTEMPTS_KEY: ResourceKey[Attempts] = ResourceKey("blobs.attempts")


def attempts(ctx: StepContext) -> Attempts:
    return run_resources(ctx.resources).obtain(ATTEMPTS_KEY, Attempts)


def claim_containers(ctx: StepContext, params: TransferParams, src: BlobStore, dst: BlobStore,
                     attempt: Attempt) -> None:
    """At the start of an attempt (not in a dry-run): takes both containers' kept inventories out of the run's
    cache (the destination's as its writer), so that any failure of the attempt drops them."""
    cache = inventory_cache(ctx)
    dst_id, src_id = dst.inventory_identity(), src.inventory_identity()
    if dst_id is not None:
        attempt.dst_claim = cache.claim(dst_id)
        attempt.keep = params.reuse_listing
        if not params.reuse_listing:
            attempt.dst_claim.entry = None  # taken out (this step writes the container) but not used
    if src_id is not None and src_id != dst_id and params.reuse_listing:
        attempt.src_claim = cache.borrow(src_id)
    also = also_store(ctx, params)
    also_id = also.inventory_identity() if also is not None else None
    if also_id is not None:
        # Written too (deletions): held like the destination, and what is kept of it is updated, not dropped.
        attempt.also_claim = cache.claim(also_id)
        if not params.reuse_listing:
            attempt.also_claim.entry = None
    attempt.reused = attempt.reuse().used(src)


def left_in_also(ctx: StepContext, params: TransferParams, also: BlobStore, attempt: Attempt,
                  skip: set[str]) -> list[str]:
    """Blobs this step deleted at the destination earlier (the source had lost them) that ``also`` still holds:
    a step run before with no ``also_delete_from``, taken up again (``resume --rerun``). Looked up one by one
    (they are few), or in the kept inventory of ``also``; ``skip``: those this attempt deletes anyway."""
    names = sorted(ctx.items.keys("deleted") - skip)
    if not names:
        return []
    kept_there = attempt.also_claim.entry if attempt.also_claim is not None else None
    if kept_there is not None:
        return [name for name in names if name in kept_there.blobs]
    with ThreadPoolExecutor(params.concurrency, thread_name_prefix="blob-verify") as pool:
        found = list(pool.map(also.info, names))
    return [name for name, info in zip(names, found, strict=True) if info is not None]


def check_transfer(ctx: StepContext, params: TransferParams, *, extra: str, attempt: Attempt) -> CheckResult:
    """Done when nothing is left to copy (or delete). Keeps what it read in ``attempt`` for apply and verify.

    In a run it first takes both containers' kept inventories out of the run's cache (:func:`_claim`) and works
    from them; a dry-run only looks at them.
    """
    attempt.survey = attempt.source = None
    src, dst = open_pair(ctx, params, confirm=False)
    if ctx.dry_run:
        reuse = peek(ctx, params, src, dst)
    else:
        claim_containers(ctx, params, src, dst, attempt)
        reuse = attempt.reuse()
    confirm_reachable(src, dst)
    seen = survey(ctx, src, dst, reuse=reuse)
    attempt.dst_metadata = reuse.destination_metadata(src)
    if seen is None:
        return CheckResult(False, f"more than {SURVEY_LIMIT} blob(s) still to copy to {dst.describe()}")
    attempt.survey = seen
    attempt.source = seen.source
    attempt.dst_listed = seen.dst_listed
    attempt.destination = seen.destination
    if seen.pending:
        return CheckResult(False, f"{len(seen.pending)} blob(s), for example "
                                  f"{blob_label(seen.pending[0][0].name)}, still to copy to "
                                  f"{dst.describe()}")
    if seen.extra and extra == "delete":
        return CheckResult(False, f"{len(seen.extra)} blob(s) to delete at {dst.describe()}")
    also = also_store(ctx, params)
    if also is not None:
        attempt.also_left = left_in_also(ctx, params, also, attempt, set(seen.extra))
        if attempt.also_left:
            return CheckResult(False, f"{len(attempt.also_left)} blob(s) the source lost still to delete at "
                                      f"{also.describe()}")
    # Nothing for apply to do: the survey stays for the dry-run's plan (apply, which then does not run, would
    # drop it). In a run this listing is the proof, so the destination's inventory is kept as it is now.
    if not ctx.dry_run:
        attempt.remember = CachedInventory(seen.destination, attempt.dst_metadata)
        attempt.settle(ctx)
    return CheckResult(True, f"all {seen.unchanged} blob(s) already in place at {dst.describe()}",
                       outputs={"count": seen.unchanged, "copied": 0, "bytes_copied": 0, "bytes_sent": 0,
                                "server_side": 0, "unchanged": seen.unchanged, "deleted": 0, "also_deleted": 0,
                                "vanished": 0,
                                "kept_without_source": 0 if extra == "delete" else len(seen.extra)})
